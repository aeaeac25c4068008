"""The component stream of an all-active instance (``[appserver] instances = "all-active"``).

- Its stream header asks for ``allowMultiple`` (what Openfire needs to accept several
  connections for one component), read off the wire by a bare TCP listener: this pins
  the slixmpp internal it relies on (ComponentXMPP keeps the header it writes as the
  string ``stream_header``), and fails if an upgrade changes that.
- Real Prosody and ejabberd accept that header. ejabberd takes several connections for
  one component and balances over them; it hands the answer to one instance's ping to
  any of them, so the exact round trip of a one-active keepalive misfires there, and the
  all-active keepalive (any stanza arriving counts) keeps both streams up. Prosody
  refuses the second connection (``conflict``), which is why it runs one-active only.
- The same with ejabberd choosing the connection by a hash of the receiver's or the
  sender's bare JID (``domain_balancing``), as Tigase's load-balancer classes do: the
  probes come from random addresses, so their answers reach every instance.
- The all-active keepalive still finds a deaf stream (the faults of
  ``test_fault_stream.py``, on the fake XEP-0114 peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from xml.etree import ElementTree as ET

import pytest
import slixmpp
from devservers import Ejabberd2412Server
from fakes.xmpp_server import ComponentSession, FakeComponentServer
from servers import own_server
from slixmpp import ComponentXMPP
from test_fault_stream import JID, SECRET, freeze, restart_stream, stop_answering, until

from slixmpp_push.config import XmppConfig
from slixmpp_push.connection import ALLOW_MULTIPLE, StreamKeeper, allow_multiple
from slixmpp_push.devserver import DevServer, ProsodyServer
from slixmpp_push.doctor.xmpp import check_xmpp
from slixmpp_push.metrics import Metrics

NS_STREAM = "{http://etherx.jabber.org/streams}stream"


def component(jid: str = JID, secret: str = SECRET, host: str = "127.0.0.1",
              port: int = 5347) -> ComponentXMPP:
    xmpp = ComponentXMPP(jid, secret, host, port)
    xmpp.register_plugin("xep_0199")  # the keepalive's pings, and answers to others'
    return xmpp


class Keeper:
    """A component run by a StreamKeeper, as ``serve`` runs it."""

    def __init__(self, settings: XmppConfig, *, all_active: bool) -> None:
        self.xmpp = component(settings.jid, settings.secret, settings.host, settings.port)
        self.metrics = Metrics()
        self.keeper = StreamKeeper(self.xmpp, settings, self.metrics, all_active=all_active)
        self.stopping = asyncio.Event()
        self.task = asyncio.ensure_future(self.keeper.run(self.stopping))

    def reconnects(self, cause: str | None = None) -> float:
        """New connections made (of one ``cause``: stuck, ended, login_failed)."""
        return sum(sample.value for family in self.metrics.registry.collect()
                   if family.name == "slixmpp_push_xmpp_reconnects"
                   for sample in family.samples if sample.name.endswith("_total")
                   and cause in (None, sample.labels["cause"]))

    async def stop(self) -> None:
        self.stopping.set()
        self.keeper.close()
        self.xmpp.abort()
        await asyncio.gather(self.task, return_exceptions=True)


@contextlib.asynccontextmanager
async def keepers(settings: XmppConfig, count: int, *,
                  all_active: bool = True) -> AsyncIterator[list[Keeper]]:
    running = [Keeper(settings, all_active=all_active) for _ in range(count)]
    try:
        yield running
    finally:
        await asyncio.gather(*(k.stop() for k in running))


def settings_for(server: DevServer, *, ping_interval: float = 0.2,
                 ping_timeout: float = 1.0) -> XmppConfig:
    spec = server.component
    return XmppConfig(mode="component", jid=spec.jid, host=server.host,
                      port=server.component_port, secret=spec.secret,
                      ping_interval=ping_interval, ping_timeout=ping_timeout)


async def header_sent(xmpp: ComponentXMPP) -> dict[str, str]:
    """The attributes of the stream header ``xmpp`` writes when it connects."""
    try:
        return await header_written(lambda port: xmpp.connect("127.0.0.1", port))
    finally:
        xmpp.abort()


async def header_written(connect: Callable[[int], object]) -> dict[str, str]:
    """The attributes of the stream header that ``connect(port)`` makes a client write to
    a listener on that loopback port (which then hangs up)."""
    got: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = ET.XMLPullParser(events=("start",))
        try:
            while not got.done():
                data = await reader.read(4096)
                if not data:
                    got.set_exception(AssertionError("closed before a stream header"))
                    break
                parser.feed(data)
                for _, element in parser.read_events():
                    assert isinstance(element, ET.Element) and element.tag == NS_STREAM
                    got.set_result(dict(element.attrib))
                    break
        finally:
            writer.close()

    listener = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        connect(listener.sockets[0].getsockname()[1])
        return await asyncio.wait_for(got, 10)
    finally:
        listener.close()
        await listener.wait_closed()


@pytest.mark.parametrize("all_active", [True, False], ids=["all-active", "one-active"])
async def test_the_doctors_component_check_asks_for_allow_multiple_when_all_active(
        all_active: bool) -> None:
    checks: list[asyncio.Task[object]] = []

    def connect(port: int) -> None:
        settings = XmppConfig(mode="component", jid=JID, host="127.0.0.1", port=port,
                              secret=SECRET)
        checks.append(asyncio.ensure_future(check_xmpp(settings, 5.0, all_active=all_active)))

    header = await header_written(connect)
    await asyncio.gather(*checks)  # the listener hung up: the check ends, failed
    assert header["to"] == JID
    assert (header.get(ALLOW_MULTIPLE) == "true") is all_active
    assert all_active or ALLOW_MULTIPLE not in header


@pytest.mark.parametrize("all_active", [True, False], ids=["all-active", "one-active"])
async def test_only_an_all_active_stream_header_asks_for_allow_multiple(
        all_active: bool) -> None:
    xmpp = component()
    settings = XmppConfig(mode="component", jid=JID, host="127.0.0.1", port=1, secret=SECRET)
    metrics = Metrics()
    keeper = StreamKeeper(xmpp, settings, metrics, all_active=all_active)
    try:
        header = await header_sent(xmpp)
    finally:
        keeper.close()
    assert header["to"] == JID  # the rest of the header is slixmpp's, untouched
    assert b"slixmpp_push_all_active %.1f" % all_active in metrics.exposition()
    if all_active:
        assert header[ALLOW_MULTIPLE] == "true"
    else:
        assert ALLOW_MULTIPLE not in header


def test_allow_multiple_is_added_once_and_refuses_a_header_it_does_not_know() -> None:
    xmpp = component()
    allow_multiple(xmpp)
    allow_multiple(xmpp)
    assert xmpp.stream_header.count(ALLOW_MULTIPLE) == 1
    assert xmpp.stream_header.endswith(' allowMultiple="true">')

    xmpp.stream_header = "<stream>"  # as if slixmpp wrote its headers another way
    with pytest.raises(RuntimeError) as refused:
        allow_multiple(xmpp)
    assert f"slixmpp {slixmpp.__version__}" in str(refused.value)
    assert "'<stream>'" in str(refused.value)


async def test_real_servers_accept_the_header_and_ejabberd_balances_two_instances(
        xmpp_server: DevServer) -> None:
    """ejabberd: two all-active instances connected at once, each passing 10 keepalive
    checks without a reconnection. Prosody: the header is accepted, the second connection
    refused (conflict), and it says so."""
    settings = settings_for(xmpp_server)
    async with keepers(settings, 1) as (first,):
        await until(first.keeper.session.is_set, "a session with allowMultiple")
        async with keepers(settings, 1) as (second,):
            if isinstance(xmpp_server, ProsodyServer):
                await until(lambda: "conflict" in second.metrics.xmpp_problem,
                            "the second connection refused: conflict")
                assert not second.keeper.session.is_set()
            else:
                await until(second.keeper.session.is_set, "a second session")
                await until(lambda: min(first.keeper.keepalives,
                                        second.keeper.keepalives) >= 10,
                            "10 keepalive checks on each stream")
                assert second.reconnects() == 0
                assert second.keeper.session.is_set()
        assert first.reconnects() == 0 and first.keeper.session.is_set()


async def test_both_instances_keep_their_streams_when_the_server_balances_by_a_hash(
        hashing_ejabberd: DevServer) -> None:
    settings = settings_for(hashing_ejabberd)
    async with keepers(settings, 2) as pair:
        await until(lambda: all(k.keeper.session.is_set() for k in pair), "two sessions")
        await until(lambda: min(k.keeper.keepalives for k in pair) >= 10,
                    "10 keepalive checks on each stream")
        assert [k.reconnects() for k in pair] == [0, 0]


@pytest.fixture(scope="module", params=["bare_destination", "bare_source"])
def hashing_ejabberd(request: pytest.FixtureRequest) -> Iterator[DevServer]:
    """ejabberd 24.12 picking a connection of push.localhost by a hash of the stanza's
    receiver's (Tigase: ReceiverBareJidLB) or sender's (SenderBareJidLB) bare JID. (24.12
    needs component_number with a type: without it the component's login crashes.)"""
    balancing = {"push.localhost": {"type": request.param, "component_number": 2}}
    yield from own_server(Ejabberd2412Server(extra_config={"domain_balancing": balancing}))


@pytest.fixture(params=["ejabberd_server", "ejabberd2412_server"])
def ejabberd(request: pytest.FixtureRequest) -> DevServer:
    server: DevServer = request.getfixturevalue(request.param)
    return server


async def test_ejabberd_hands_a_ping_answer_to_either_instance(ejabberd: DevServer) -> None:
    """Why all-active needs its own keepalive: with the one-active one (a ping's own
    answer, within ping_timeout), two connections for one component soon call their
    stream stuck, as ejabberd gives the answer to whichever connection it picks."""
    async with keepers(settings_for(ejabberd), 2, all_active=False) as pair:
        await until(lambda: all(k.keeper.session.is_set() for k in pair), "two sessions")
        await until(lambda: any(k.reconnects() for k in pair),
                    "a ping answer given to the other instance")
        assert sum(k.reconnects("stuck") for k in pair) == sum(k.reconnects() for k in pair)


@pytest.mark.parametrize("fault", [restart_stream, stop_answering, freeze],
                         ids=["second-stream-header", "server-stops-answering", "half-open"])
async def test_the_all_active_keepalive_finds_a_deaf_stream(
        fault: Callable[[ComponentSession], None], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="slixmpp_push.connection")
    async with FakeComponentServer(JID, SECRET) as server:
        settings = XmppConfig(mode="component", jid=JID, host="127.0.0.1", port=server.port,
                              secret=SECRET, ping_interval=0.2, ping_timeout=1.0)
        async with keepers(settings, 1) as (running,):
            first = await server.wait_session()
            await until(lambda: running.keeper.keepalives >= 2, "keepalives on a live stream")
            assert running.reconnects() == 0
            fault(first)
            second = await server.wait_session(after=first.index, timeout=20)
            assert second.alive
            assert running.reconnects("stuck") >= 1
    assert ("no stanza arrived within 1 s of pinging (XEP-0199): the stream is stuck; "
            "dropping the connection") in caplog.text
