"""A stream that stops carrying stanzas is found out, reported and replaced.

``serve`` runs against the fake XEP-0114 peer (:mod:`fakes.xmpp_server`), which
injects, into a live session, each way a stream can go deaf without closing:

- the server restarts the stream (a second ``<stream:stream>`` header, after
  which every stanza parses as a child of a bogus element);
- the server hangs (it reads, routes and answers nothing);
- the connection is half-open (nothing read, nothing written, no FIN).

Before the fix each of these left the component deaf with ``/health`` 200
"connected" for as long as it lasted (over 70 s measured). Now a keepalive ping
(XEP-0199) goes unanswered, ``/health`` turns 503 naming the cause, and a new
session answers again. Then the happy path against real Prosody and ejabberd:
pings every 0.2 s for a few seconds are all answered, and nothing reconnects.

Pings are made fast here (``ping_interval``, ``ping_timeout``); the figures for
the defaults (15 s, 10 s) are in the issue's note.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fakes.xmpp_server import ComponentSession, FakeComponentServer
from servers import make_account

from slixmpp_push.config import AppConfig, Config, DeliveryPolicy, XmppConfig, parse_config
from slixmpp_push.connection import StreamKeeper
from slixmpp_push.devserver import DevServer, ProsodyServer
from slixmpp_push.metrics import Metrics
from slixmpp_push.server import build_xmpp, serve

JID = "push.localhost"
SECRET = "s3cret-component"
DISCO = (f"<iq type='get' from='localhost' to='{JID}'>"
         "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def health(port: int) -> tuple[int, dict[str, Any]]:
    status, body = await http_get(port, "/health")
    return status, json.loads(body)


async def until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll ``check`` (sync or async) until it returns something true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


def metric(text: str, name: str) -> float | None:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, port: int, *, host: str = "127.0.0.1", jid: str = JID,
                  secret: str = SECRET, ping_interval: float = 0.3,
                  ping_timeout: float = 1.0) -> AsyncIterator[int]:
    """``serve`` with /health on a free port (yielded), stopped at the end."""
    (tmp_path / "secret").write_text(secret)
    metrics_port = free_port()
    config = parse_config({
        "xmpp": {"jid": jid, "host": host, "port": port, "secret_file": "secret",
                 "ping_interval": ping_interval, "ping_timeout": ping_timeout},
        "appserver": {"store": "store.json"},
        "apps": {"console": {"type": "console"}},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
    }, tmp_path)
    task = asyncio.ensure_future(serve(config))
    try:
        await until(lambda: task.done() or _answers(metrics_port), "/health answers")
        if task.done():
            task.result()  # a start-up failure: raise it here
        yield metrics_port
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _answers(port: int) -> bool:
    try:
        await http_get(port, "/health/live")
    except OSError:
        return False
    return True


def restart_stream(session: ComponentSession) -> None:
    session.restart_stream()


def stop_answering(session: ComponentSession) -> None:
    session.stop_answering()


def freeze(session: ComponentSession) -> None:
    session.freeze()


@pytest.mark.parametrize("fault", [restart_stream, stop_answering, freeze],
                         ids=["second-stream-header", "server-stops-answering", "half-open"])
async def test_a_deaf_stream_is_reported_and_replaced(
        tmp_path: Path, fault: Callable[[ComponentSession], None],
        caplog: pytest.LogCaptureFixture) -> None:
    async with FakeComponentServer(JID, SECRET) as server, \
            serving(tmp_path, server.port) as metrics_port:
        first = await server.wait_session()
        reply = await first.request(DISCO)
        assert reply.get("type") == "result"
        assert (await health(metrics_port))[0] == 200

        fault(first)
        if fault is restart_stream:  # the fault itself: what the server sends is lost
            with pytest.raises(TimeoutError):
                await first.request(DISCO, timeout=1.0)

        async def reported() -> dict[str, Any] | None:
            status, details = await health(metrics_port)
            return details if status == 503 else None

        details = await until(reported, "/health not ready")
        assert details["ready"] is False and details["xmpp"]["connected"] is False
        assert "no answer to a ping (XEP-0199) within 1 s: the stream is stuck" in \
            details["xmpp"]["problem"], details

        second = await server.wait_session(after=first.index, timeout=20)
        reply = await second.request(DISCO)
        assert reply.get("type") == "result"
        _, details = await until(lambda: _ready(metrics_port), "/health ready again")
        assert details["xmpp"] == {"connected": True, "problem": ""}
        _, text = await http_get(metrics_port, "/metrics")
        stuck = metric(text, 'slixmpp_push_xmpp_reconnects_total{cause="stuck"}')
        assert stuck is not None and stuck >= 1
        assert "the stream is stuck; dropping the connection" in caplog.text


async def _ready(port: int) -> tuple[int, dict[str, Any]] | None:
    status, details = await health(port)
    return (status, details) if status == 200 else None


@pytest.fixture(params=["prosody_server", "ejabberd_server"])
def real_server(request: pytest.FixtureRequest) -> DevServer:
    server: DevServer = request.getfixturevalue(request.param)
    return server


async def test_pings_through_a_real_server_keep_a_healthy_stream(
        real_server: DevServer, tmp_path: Path) -> None:
    """Many pings through the server, all answered: no false alarm, no reconnect."""
    server = real_server
    spec = server.component
    async with serving(tmp_path, server.component_port, jid=spec.jid, secret=spec.secret,
                       ping_interval=0.2, ping_timeout=2.0) as metrics_port:
        await until(lambda: _ready(metrics_port), "a session")
        pinged: list[float] = []
        for _ in range(15):  # about 15 ping intervals
            await asyncio.sleep(0.2)
            status, details = await health(metrics_port)
            assert status == 200, details
            _, text = await http_get(metrics_port, "/metrics")
            seconds = metric(text, "slixmpp_push_xmpp_ping_seconds")
            assert seconds is not None
            pinged.append(seconds)
        assert any(pinged), "no ping was answered"
        assert "slixmpp_push_xmpp_reconnects_total{" not in text, text


async def test_a_client_account_pings_its_servers_domain(prosody_server: ProsodyServer,
                                                         tmp_path: Path) -> None:
    """In client mode the keepalive goes to the account's server (component mode pings
    itself); the dev server has no TLS, so the plain stream is allowed here."""
    bot = await make_account(prosody_server, "pingbot")
    settings = XmppConfig(mode="client", jid=f"{bot.jid}/appserver", host=prosody_server.host,
                          port=prosody_server.c2s_port, secret=bot.password,
                          ping_interval=0.2, ping_timeout=2.0)
    config = Config(xmpp=settings, apps=[AppConfig(id="console", type="console")],
                    store=str(tmp_path / "store.json"), allowed_domains=None,
                    remote_disable=True, delivery=DeliveryPolicy(), log_level="INFO")
    metrics = Metrics()
    client: Any = build_xmpp(config, metrics=metrics)
    client.enable_starttls = client.enable_direct_tls = False
    client.enable_plaintext = True
    client.plugin["feature_mechanisms"].unencrypted_scram = True
    keeper = StreamKeeper(client, settings, metrics)
    stopping = asyncio.Event()
    running = asyncio.ensure_future(keeper.run(stopping))
    try:
        await until(keeper.session.is_set, "a session")
        await asyncio.sleep(3)  # about 15 pings
        assert keeper.session.is_set() and metrics.xmpp_connected
        exposed = metrics.exposition().decode()
        pinged = metric(exposed, "slixmpp_push_xmpp_ping_seconds")
        assert pinged is not None and pinged > 0, "no ping was answered"
        assert "slixmpp_push_xmpp_reconnects_total{" not in exposed
    finally:
        stopping.set()
        keeper.close()
        await client.disconnect(wait=1.0)
        await running
