"""``slixmpp-push demo``: the whole push path on this machine, no phone needed.

Starts a private Prosody (mod_cloud_notify) on loopback, runs the app server
through the same code as ``slixmpp-push serve`` with the console provider,
registers a device for alice the way Siskin does (``register-device``),
enables push at her server, takes her offline, has bob send her a message,
and shows the push the app server dispatches.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from slixmpp import JID, ClientXMPP

from .config import AppConfig, Config, DeliveryPolicy, XmppConfig
from .devserver import ComponentSpec, DevServerError, ProsodyServer
from .providers.base import PushRequest
from .providers.console import ConsoleProvider
from .xep_0357.stanza import PUBLISH_OPTIONS_FORM_TYPE

APP_ID = "tigase:messenger:apns:1"  # the provider id Siskin registers with
DEVICE_TOKEN = "d3m0" + secrets.token_hex(30)


def say(step: str, text: str) -> None:
    print(f"[{step}] {text}", flush=True)


class _ShowingConsole(ConsoleProvider):
    """The console provider, also telling the demo when a push went out."""

    def __init__(self, app: AppConfig, sent: asyncio.Queue[tuple[float, PushRequest]]) -> None:
        super().__init__(app, stream=io.StringIO())
        self._sent = sent

    async def send(self, request: PushRequest) -> Any:
        result = await super().send(request)
        assert isinstance(self.stream, io.StringIO)
        line = self.stream.getvalue().strip().splitlines()[-1]
        print(f"      {line}", flush=True)
        self._sent.put_nowait((time.perf_counter(), request))
        return result


async def _client(server: ProsodyServer, jid: str, password: str) -> ClientXMPP:
    client = ClientXMPP(f"{jid}/demo", password, plugin_config={
        "feature_mechanisms": {"unencrypted_plain": True, "unencrypted_scram": True}})
    client.enable_direct_tls = False
    client.enable_starttls = False
    client.enable_plaintext = True
    for plugin in ("xep_0030", "xep_0004", "xep_0050"):
        client.register_plugin(plugin)
    started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def settle(ok: bool) -> None:
        if not started.done():
            started.set_result(ok)

    client.add_event_handler("session_start", lambda _: settle(True))
    client.add_event_handler("failed_auth", lambda _: settle(False))
    client.connect(*server.c2s_address)
    if not await asyncio.wait_for(started, 10):
        raise RuntimeError(f"{jid}: authentication failed")
    return client


async def _register_device(alice: ClientXMPP, appserver_jid: str) -> str:
    form = alice["xep_0004"].make_form(ftype="submit")
    form.add_field(var="provider", value=APP_ID)
    form.add_field(var="device-token", value=DEVICE_TOKEN)
    iq = alice.make_iq_set(ito=appserver_jid)
    iq["command"]["node"] = "register-device"
    iq["command"]["action"] = "execute"
    iq["command"].append(form)
    reply = await iq.send(timeout=10)
    return str(reply["command"]["form"].get_values()["node"])


async def _enable_push(alice: ClientXMPP, appserver_jid: str, node: str) -> None:
    iq = alice.make_iq_set()
    enable = iq["push_enable"]
    enable["jid"] = appserver_jid
    enable["node"] = node
    form = enable["form"]
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", ftype="hidden", value=PUBLISH_OPTIONS_FORM_TYPE)
    await iq.send(timeout=10)


async def run_demo(keep_running: bool = False) -> int:
    from .server import serve

    try:
        ProsodyServer.require()
    except DevServerError as exc:
        print(f"slixmpp-push demo: {exc}", file=sys.stderr)
        return 1
    folder = Path(tempfile.mkdtemp(prefix="slixmpp-push-demo-"))
    component = ComponentSpec("push.localhost", secrets.token_hex(16))
    prosody = ProsodyServer(components=[component], workdir=folder / "prosody")
    say("1/6", "starting a private Prosody with mod_cloud_notify on 127.0.0.1")
    await prosody.start()
    tasks: list[asyncio.Task[Any]] = []
    clients: list[ClientXMPP] = []
    try:
        say("1/6", f"Prosody ready in {prosody.start_seconds or 0:.2f} s: "
                   f"c2s port {prosody.c2s_port}, component port {prosody.component_port}")
        await prosody.register("alice", "alice-pw")
        await prosody.register("bob", "bob-pw")

        sent: asyncio.Queue[tuple[float, PushRequest]] = asyncio.Queue()
        app = AppConfig(id=APP_ID, type="console", topic="org.tigase.messenger.mobile")
        config = Config(
            xmpp=XmppConfig(mode="component", jid=component.jid, host=prosody.host,
                            port=prosody.component_port, secret=component.secret),
            apps=[app], store=str(folder / "store.json"), allowed_domains=None,
            remote_disable=True, delivery=DeliveryPolicy(), log_level="WARNING")
        ready = asyncio.Event()
        say("2/6", f"starting the app server {component.jid} (console provider, "
                   f"store {folder / 'store.json'})")
        console = _ShowingConsole(app, sent)
        tasks.append(asyncio.ensure_future(serve(config, ready=ready,
                                                 providers={APP_ID: console})))
        await asyncio.wait_for(ready.wait(), 15)

        alice = await _client(prosody, "alice@localhost", "alice-pw")
        clients.append(alice)
        node = await _register_device(alice, component.jid)
        say("3/6", f"alice registers her phone the way Siskin does (register-device) "
                   f"→ node {node}")
        await _enable_push(alice, component.jid, node)
        say("4/6", "alice enables push at her server (XEP-0357 <enable/>) and goes offline")
        await alice.disconnect(wait=2)
        clients.remove(alice)
        await asyncio.sleep(0.3)

        bob = await _client(prosody, "bob@localhost", "bob-pw")
        clients.append(bob)
        say("5/6", "bob sends alice a message while her phone sleeps")
        began = time.perf_counter()
        bob.send_message(mto=JID("alice@localhost"), mbody="Are you on call tonight?", mtype="chat")
        say("6/6", "the app server dispatches the push (console provider, as Apple would get it):")
        at, request = await asyncio.wait_for(sent.get(), 15)
        print(f"\nDemo complete: message sent → push dispatched in {(at - began) * 1000:.1f} ms "
              f"(topic {getattr(request, 'topic', '')}, "
              f"push type {getattr(request, 'push_type', '')}; no message text left the "
              "machine).", flush=True)
        if keep_running:
            print("Servers keep running; Ctrl-C to stop.", flush=True)
            await asyncio.Event().wait()
        return 0
    except TimeoutError:
        print("slixmpp-push demo: timed out; Prosody's log:\n" + prosody.describe_logs(),
              file=sys.stderr)
        return 1
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.disconnect(wait=1)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await prosody.stop()
