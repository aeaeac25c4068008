"""``slixmpp-push demo``: the whole push path on this machine, no phone needed.

Starts a private Prosody (mod_cloud_notify) on loopback, runs the app server
through the same code as ``slixmpp-push serve`` with the console provider,
registers a device for alice the way Siskin does (``register-device``),
enables push at her server, takes her offline, has bob send her a message,
and shows the push the app server dispatches. Then Alertmanager fires: the
bot pages alice (a critical push and a chat message), she answers "ack",
and the escalation to bob stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import secrets
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from slixmpp import JID, ClientXMPP

from .config import AppConfig, Config, DeliveryPolicy, XmppConfig
from .devserver import ComponentSpec, DevServerError, ProsodyServer
from .notifier.config import NotifierSettings
from .notifier.ingest import ReceiverConfig
from .notifier.models import Policy, Step
from .providers.base import PushRequest
from .providers.console import ConsoleProvider
from .xep_0357.stanza import PUBLISH_OPTIONS_FORM_TYPE

APP_ID = "tigase:messenger:apns:1"  # the provider id Siskin registers with
DEVICE_TOKEN = "dec0" + secrets.token_hex(30)  # 64 hex digits, as Apple issues


def say(step: str, text: str) -> None:
    print(f"[{step}] {text}", flush=True)


Sent = asyncio.Queue[tuple[float, str, PushRequest]]


class _ShowingConsole(ConsoleProvider):
    """The console provider, handing each rendered push to the demo to show."""

    def __init__(self, app: AppConfig, sent: Sent) -> None:
        super().__init__(app, stream=io.StringIO())
        self._sent = sent

    async def send(self, request: PushRequest) -> Any:
        result = await super().send(request)
        assert isinstance(self.stream, io.StringIO)
        line = self.stream.getvalue().strip().splitlines()[-1]
        self._sent.put_nowait((time.perf_counter(), line, request))
        return result


async def _next_push(sent: Sent, push_type: str) -> tuple[float, PushRequest]:
    """The next push of ``push_type``, shown (others are the server's own chatter)."""
    while True:
        at, line, request = await asyncio.wait_for(sent.get(), 15)
        if getattr(request, "push_type", "") == push_type:
            print(f"      {line}", flush=True)
            return at, request


async def _next_message(inbox: asyncio.Queue[str], prefix: str) -> str:
    while True:
        text = await asyncio.wait_for(inbox.get(), 10)
        if text.startswith(prefix):
            return text


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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _post_alert(port: int, token: str) -> dict[str, Any]:
    alert = {"version": "4", "groupKey": '{}:{alertname="DiskFull"}', "status": "firing",
             "receiver": "pager", "groupLabels": {"alertname": "DiskFull"},
             "commonLabels": {"alertname": "DiskFull", "severity": "critical"},
             "commonAnnotations": {"summary": "db1 disk 97% full"},
             "alerts": [{"status": "firing", "fingerprint": "d15c",
                         "labels": {"alertname": "DiskFull", "instance": "db1"},
                         "annotations": {"summary": "db1 disk 97% full"}}]}
    body = json.dumps(alert).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /alertmanager HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Type: application/json\r\nAuthorization: Bearer "
                 + token.encode() + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                 % len(body) + body)
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    result: dict[str, Any] = json.loads(response.partition(b"\r\n\r\n")[2])
    return result


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
    say("1/9", "starting a private Prosody with mod_cloud_notify on 127.0.0.1")
    await prosody.start()
    tasks: list[asyncio.Task[Any]] = []
    clients: list[ClientXMPP] = []
    try:
        say("1/9", f"Prosody ready in {prosody.start_seconds or 0:.2f} s: "
                   f"c2s port {prosody.c2s_port}, component port {prosody.component_port}")
        await prosody.register("alice", "alice-pw")
        await prosody.register("bob", "bob-pw")

        sent: Sent = asyncio.Queue()
        app = AppConfig(id=APP_ID, type="console", topic="org.tigase.messenger.mobile")
        hook_token = secrets.token_urlsafe(16)
        policy = Policy("oncall", (Step(("alice@localhost",), 30.0),
                                   Step(("bob@localhost",), 30.0)))
        config = Config(
            xmpp=XmppConfig(mode="component", jid=component.jid, host=prosody.host,
                            port=prosody.component_port, secret=component.secret),
            apps=[app], store=str(folder / "store.json"), allowed_domains=None,
            remote_disable=True, delivery=DeliveryPolicy(), log_level="WARNING",
            notifier=NotifierSettings(policies={"oncall": policy}, default_policy="oncall",
                                      groups={}, remotes={}),
            ingest=ReceiverConfig(port=_free_port(), token=hook_token))
        ready = asyncio.Event()
        say("2/9", f"starting the app server {component.jid} (console provider, "
                   f"store {folder / 'store.json'})")
        console = _ShowingConsole(app, sent)
        tasks.append(asyncio.ensure_future(serve(config, ready=ready,
                                                 providers={APP_ID: console})))
        await asyncio.wait_for(ready.wait(), 15)

        alice = await _client(prosody, "alice@localhost", "alice-pw")
        clients.append(alice)
        node = await _register_device(alice, component.jid)
        say("3/9", f"alice registers her phone the way Siskin does (register-device) "
                   f"→ node {node}")
        await _enable_push(alice, component.jid, node)
        say("4/9", "alice enables push at her server (XEP-0357 <enable/>) and goes offline")
        await alice.disconnect(wait=2)
        clients.remove(alice)
        await asyncio.sleep(0.3)

        bob = await _client(prosody, "bob@localhost", "bob-pw")
        clients.append(bob)
        say("5/9", "bob sends alice a message while her phone sleeps")
        began = time.perf_counter()
        bob.send_message(mto=JID("alice@localhost"), mbody="Are you on call tonight?", mtype="chat")
        say("6/9", "the app server dispatches the push (console provider, as Apple would get it):")
        at, _ = await _next_push(sent, "alert")
        say("6/9", f"message sent → push in {(at - began) * 1000:.1f} ms: a visible alert "
                   "that Siskin's extension fills in; no message text left the machine")
        assert config.ingest is not None
        alice = await _client(prosody, "alice@localhost", "alice-pw")
        clients.append(alice)
        inbox: asyncio.Queue[str] = asyncio.Queue()

        def collect(message: Any) -> None:
            if message["body"]:
                inbox.put_nowait(str(message["body"]))

        alice.add_event_handler("message", collect)
        alice.send_presence()
        say("7/9", "Alertmanager fires DiskFull (critical) at the bot's webhook; the bot "
                   "pages alice, first on call:")
        answer = await _post_alert(config.ingest.port, hook_token)
        await _next_push(sent, "alert")
        page_text = await _next_message(inbox, "PAGE")
        say("8/9", "alice's chat shows the page:\n      " + page_text.replace("\n", "\n      "))
        alice.send_message(mto=JID(component.jid), mbody="ack", mtype="chat")
        reply = await _next_message(inbox, "Acknowledged")
        say("9/9", f"alice answers \"ack\"; the bot: {reply}")
        print(f"\nDemo complete: page {answer['page']} acknowledged, so bob (next on call) "
              "is not woken.", flush=True)
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
        shutil.rmtree(folder, ignore_errors=True)
