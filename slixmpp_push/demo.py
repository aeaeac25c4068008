"""``slixmpp-push demo``: the whole push path on this machine, no phone needed.

Starts a private Prosody (mod_cloud_notify) on loopback, runs the app server
through the same code as ``slixmpp-push serve`` with the console provider,
registers a device for alice the way Siskin does (``register-device``),
enables push at her server, takes her offline, has bob send her a message,
and shows the push the app server dispatches. Then Alertmanager fires: the
bot pages alice (a critical push and a chat message), she answers "ack",
and the escalation to bob stops.

It needs the ``notifier`` extra (aiohttp, for the pager's webhook) and
Debian's ``prosody`` and ``prosody-modules``; without them it says so at once,
before starting anything. Ctrl-C, SIGTERM and SIGHUP stop it at any point:
the clients, the app server and Prosody are stopped and the temporary folder
is removed.

EXIT STATUS: 0 the demo ran (with ``--keep-running``: and was then stopped by
one of those signals, the way to end it); 1 a step failed, named on stderr;
2 the extra or Prosody is missing; 128 + the signal's number when a signal
interrupted the demo before it had finished (130 for Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from slixmpp import JID, ClientXMPP

from .config import AppConfig, Config, DeliveryPolicy, XmppConfig
from .devserver import ComponentSpec, DevServerError, ProsodyServer
from .errors import MissingDependency
from .notifier.config import NotifierSettings
from .notifier.ingest import ReceiverConfig
from .notifier.models import Policy, Step
from .providers.base import PushRequest
from .providers.console import ConsoleProvider
from .xep_0357.stanza import PUBLISH_OPTIONS_FORM_TYPE

APP_ID = "tigase:messenger:apns:1"  # the provider id Siskin registers with
DEVICE_TOKEN = "dec0" + secrets.token_hex(30)  # 64 hex digits, as Apple issues
#: Ctrl-C, kill and a closed terminal: each stops the demo and cleans up.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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


def require_notifier_extra() -> None:
    """Fail at once, before any server starts, when the demo cannot page.

    The demo's page arrives through the pager's HTTP ingest, which runs on
    aiohttp (the ``notifier`` extra). Without it, the app server would fail
    only after Prosody had started.
    """
    if importlib.util.find_spec("aiohttp") is None:
        raise MissingDependency("aiohttp", "notifier", "the demo")


class _StopSignals:
    """Ctrl-C, SIGTERM and SIGHUP (a closed terminal) as one future: the first one wins."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.caught: asyncio.Future[int] = self._loop.create_future()
        self.install()

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            self._loop.add_signal_handler(sig, self._catch, sig)

    def _catch(self, sig: int) -> None:
        if not self.caught.done():
            self.caught.set_result(sig)

    def remove(self) -> None:
        for sig in STOP_SIGNALS:
            self._loop.remove_signal_handler(sig)


class _Demo:
    """The demo's parts, so that whatever ends it (done, failed, a signal) cleans up all."""

    def __init__(self, signals: _StopSignals) -> None:
        self.signals = signals
        self.folder = Path(tempfile.mkdtemp(prefix="slixmpp-push-demo-"))
        self.component = ComponentSpec("push.localhost", secrets.token_hex(16))
        self.prosody = ProsodyServer(components=[self.component],
                                     workdir=self.folder / "prosody")
        self.clients: list[ClientXMPP] = []
        self.app_server: asyncio.Task[None] | None = None
        #: the app server's task, once it has ended without being asked to
        self.app_server_ended: asyncio.Future[asyncio.Task[None]] = (
            asyncio.get_running_loop().create_future())
        self.step = "1/9"
        #: every step done: a signal now is the way to stop, not an interruption
        self.finished = False

    def say(self, step: str, text: str) -> None:
        self.step = step
        say(step, text)

    async def run(self, keep_running: bool) -> None:
        from .server import serve

        prosody, component, folder = self.prosody, self.component, self.folder
        self.say("1/9", f"starting a private Prosody with mod_cloud_notify on 127.0.0.1 "
                        f"(in {folder})")
        await prosody.start()
        self.say("1/9", f"Prosody ready in {prosody.start_seconds or 0:.2f} s (PID "
                        f"{prosody.pid}): c2s port {prosody.c2s_port}, component port "
                        f"{prosody.component_port}")
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
        self.say("2/9", f"starting the app server {component.jid} (console provider, "
                        f"store {folder / 'store.json'})")
        console = _ShowingConsole(app, sent)
        self.app_server = asyncio.ensure_future(
            serve(config, ready=ready, providers={APP_ID: console}, handle_signals=False))
        self.app_server.add_done_callback(self._app_server_done)
        await asyncio.wait_for(ready.wait(), 15)

        alice = await self._connect("alice@localhost", "alice-pw")
        node = await _register_device(alice, component.jid)
        self.say("3/9", f"alice registers her phone the way Siskin does (register-device) "
                        f"→ node {node}")
        await _enable_push(alice, component.jid, node)
        self.say("4/9", "alice enables push at her server (XEP-0357 <enable/>) and goes "
                        "offline")
        await alice.disconnect(wait=2)
        self.clients.remove(alice)
        await asyncio.sleep(0.3)

        bob = await self._connect("bob@localhost", "bob-pw")
        self.say("5/9", "bob sends alice a message while her phone sleeps")
        began = time.perf_counter()
        bob.send_message(mto=JID("alice@localhost"), mbody="Are you on call tonight?",
                         mtype="chat")
        self.say("6/9", "the app server dispatches the push (console provider, as Apple "
                        "would get it):")
        at, _ = await _next_push(sent, "alert")
        self.say("6/9", f"message sent → push in {(at - began) * 1000:.1f} ms: a visible "
                        "alert that Siskin's extension fills in; no message text left the "
                        "machine")
        assert config.ingest is not None
        alice = await self._connect("alice@localhost", "alice-pw")
        inbox: asyncio.Queue[str] = asyncio.Queue()

        def collect(message: Any) -> None:
            if message["body"]:
                inbox.put_nowait(str(message["body"]))

        alice.add_event_handler("message", collect)
        alice.send_presence()
        self.say("7/9", "Alertmanager fires DiskFull (critical) at the bot's webhook; the "
                        "bot pages alice, first on call:")
        answer = await _post_alert(config.ingest.port, hook_token)
        await _next_push(sent, "alert")
        page_text = await _next_message(inbox, "PAGE")
        self.say("8/9", "alice's chat shows the page:\n      "
                        + page_text.replace("\n", "\n      "))
        alice.send_message(mto=JID(component.jid), mbody="ack", mtype="chat")
        reply = await _next_message(inbox, "Acknowledged")
        self.say("9/9", f"alice answers \"ack\"; the bot: {reply}")
        print(f"\nDemo complete: page {answer['page']} acknowledged, so bob (next on call) "
              "is not woken.", flush=True)
        self.finished = True
        if keep_running:
            print("Servers keep running; Ctrl-C (or SIGTERM, SIGHUP) stops them and "
                  "removes the temporary folder.", flush=True)
            await asyncio.Event().wait()

    async def _connect(self, jid: str, password: str) -> ClientXMPP:
        client = await _client(self.prosody, jid, password)
        self.clients.append(client)
        return client

    def _app_server_done(self, task: asyncio.Task[None]) -> None:
        if not self.app_server_ended.done():
            self.app_server_ended.set_result(task)

    def verdict(self, steps: asyncio.Future[None]) -> int:
        """The exit status once something ended the demo; failures said on stderr."""
        if self.signals.caught.done():
            return 0 if self.finished else 128 + self.signals.caught.result()
        if self.app_server_ended.done():
            # The app server's own failure, whatever a step saw of it meanwhile.
            task = self.app_server_ended.result()
            error = None if task.cancelled() else task.exception()
            _fail(f"the app server failed: {_describe(error)}" if error is not None
                  else "the app server stopped before the demo ended")
            return 1
        error = steps.exception()
        if error is None:
            return 0
        if isinstance(error, TimeoutError):
            _fail(f"step {self.step} timed out; the last lines of Prosody's log:\n"
                  + self.prosody.describe_logs())
        else:
            _fail(f"step {self.step} failed: {_describe(error)}")
        return 1

    async def close(self) -> None:
        """Disconnect the clients, stop the app server and Prosody, remove the folder."""
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.disconnect(wait=1)
        if self.app_server is not None:
            self.app_server.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.app_server
        await self.prosody.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def _fail(text: str) -> None:
    print(f"slixmpp-push demo: {text}", file=sys.stderr, flush=True)


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


async def run_demo(keep_running: bool = False) -> int:
    """Run the demo; return its exit status (see EXIT STATUS above).

    Raises :class:`~slixmpp_push.errors.MissingDependency` at once without
    the ``notifier`` extra.
    """
    require_notifier_extra()
    try:
        ProsodyServer.require()
    except DevServerError as exc:
        _fail(str(exc))
        return 2
    signals = _StopSignals()
    demo = _Demo(signals)
    steps = asyncio.ensure_future(demo.run(keep_running))
    try:
        ends: set[asyncio.Future[Any]] = {steps, signals.caught, demo.app_server_ended}
        await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        status = demo.verdict(steps)
    finally:
        steps.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await steps
        await demo.close()
        signals.remove()
    if signals.caught.done():
        name = signal.Signals(signals.caught.result()).name
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            print(f"Stopped ({name}): Prosody stopped, {demo.folder} removed.", flush=True)
    return status
