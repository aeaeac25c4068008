"""The APNs send path's economies (issue 11, item 2), against the real aioapns and the fake.

:class:`~slixmpp_push.providers.apns.ApnsClientProtocol` sends requests for less CPU
than stock aioapns: one TLS write for up to WRITE_BATCH requests started close together,
headers encoded without Huffman coding by our own HPACK encoder, the provider token's header value
encoded once per token, no task per request. Each economy is checked here
through what can be observed: the transport's writes, the headers the fake
decodes with the real h2/hpack decoder, the tasks the loop creates. The
internals of aioapns, h2 and hpack these rely on are pinned at the end: an
upgrade that moves them fails there, naming the library and its version.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from aioapns.common import NotificationRequest, PushType
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsProductionClientProtocol,
    APNsTLSClientProtocol,
    H2Protocol,
)
from fakes.fake_apns import FakeApns
from fakes.tls import TestCA
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.exceptions import TooManyStreamsError
from h2.settings import SettingCodes
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hpack.table import HeaderTable

from slixmpp_push.coalesce import BACKSTOP, WRITE_INTERVAL, CoalescedWrites
from slixmpp_push.config import AppConfig
from slixmpp_push.errors import Outcome
from slixmpp_push.providers.apns import (
    WRITE_BATCH,
    ApnsClientProtocol,
    ApnsProvider,
    ProviderToken,
)
from slixmpp_push.providers.apns_h2 import ApnsH2Connection
from slixmpp_push.providers.apns_hpack import HPACK_FITS, HeaderEncoder
from slixmpp_push.providers.base import ApnsRequest

KEY_ID = "TESTKEY123"  # conftest's apns_key
TEAM_ID = "TEAM123456"
TOPIC = "org.example.chat"
BURST = 50
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
async def provider(fake_apns: FakeApns, test_ca: TestCA,
                   apns_key: Path) -> AsyncIterator[ApnsProvider]:
    app = AppConfig(id="ios", type="apns", topic=TOPIC, key_file=str(apns_key), key_id=KEY_ID,
                    team_id=TEAM_ID, endpoint=fake_apns.endpoint, ca_file=str(test_ca.ca_file),
                    timeout=10.0, max_connections=1)
    started = ApnsProvider(app)
    await started.start()
    yield started
    await started.close()


def ignore_reply(stream_id: int, headers: Any, body: bytes) -> None:
    pass


def ignore_reset(stream_id: int, error_code: int) -> None:
    pass


def push(i: int, **fields: Any) -> ApnsRequest:
    settings: dict[str, Any] = {
        "token": f"{i + 1:064x}", "topic": TOPIC, "push_type": "background", "priority": 5,
        "expiration": int(time.time()) + 3600, "payload": {"aps": {"content-available": 1}}}
    settings.update(fields)
    return ApnsRequest(**settings)


async def delivered(provider: ApnsProvider, requests: list[ApnsRequest]) -> list[str]:
    """Send all at once (started in one loop turn); their apns-ids, all delivered."""
    results = await asyncio.gather(*(provider.send(r) for r in requests))
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * len(requests), results
    return [r.message_id or "" for r in results]


def count_writes(provider: ApnsProvider) -> list[int]:
    """The sizes of the writes to the pool's one connection's (TLS) transport, from now
    (not counting empty ones: aioapns writes ``b""`` after reading a reply that needs
    no answer, and the transport sends nothing for them)."""
    assert provider.pool is not None
    [connection] = provider.pool.connections
    transport = connection.transport
    assert transport is not None
    sizes: list[int] = []
    write = transport.write

    def counted(data: Any) -> None:
        if data:
            sizes.append(len(data))
        write(data)

    transport.write = counted  # type: ignore[method-assign]
    return sizes


# -- coalesced TLS writes -------------------------------------------------------------------


async def test_a_burst_started_in_one_loop_turn_goes_out_in_writes_of_a_batch_each(
        fake_apns: FakeApns, provider: ApnsProvider) -> None:
    await delivered(provider, [push(0)])  # connected, SETTINGS exchanged
    writes = count_writes(provider)

    await delivered(provider, [push(i) for i in range(1, BURST + 1)])

    # Not one write for all: the first batches are on their way while the rest are built.
    assert len(writes) == -(-BURST // WRITE_BATCH), writes
    assert len(fake_apns.requests) == BURST + 1
    assert len(fake_apns.connections) == 1


async def test_requests_started_within_the_write_interval_share_a_write(
        fake_apns: FakeApns, provider: ApnsProvider) -> None:
    """Requests a few loop turns apart, within ``CoalescedWrites.interval`` of the last
    write, wait for the interval and go out together (the load case: at 1,000 publishes/s
    each arrives alone)."""
    await delivered(provider, [push(0)])
    assert provider.pool is not None
    [connection] = provider.pool.connections
    # The write asked for after reading its reply is due within BACKSTOP intervals: its
    # timer fires before this sleep's, however slow the machine.
    await asyncio.sleep(WRITE_INTERVAL * BACKSTOP * 10)
    assert not connection._writes.scheduled
    # A wide interval, so that a loaded machine cannot split them.
    connection._writes = CoalescedWrites(connection._write, asyncio.get_running_loop(),
                                         interval=0.2)
    writes = count_writes(provider)
    await provider.send(push(1))  # the first write of this interval goes at once
    assert len(writes) == 1
    sends = []
    for i in range(2, 5):
        sends.append(asyncio.ensure_future(provider.send(push(i))))
        await asyncio.sleep(0.01)  # a later loop turn, well within the interval
    assert len(writes) == 1  # the three wait for the interval
    await asyncio.gather(*sends)
    assert len(writes) == 2, writes
    assert len(fake_apns.requests) == 5


async def test_stock_aioapns_writes_once_per_request(
        fake_apns: FakeApns, provider: ApnsProvider) -> None:
    """The control: the same burst through aioapns's protocol as shipped."""
    assert provider.pool is not None

    class StockProtocol(APNsProductionClientProtocol):
        APNS_SERVER = fake_apns.host
        APNS_PORT = fake_apns.port

    provider.pool.protocol_class = StockProtocol
    await delivered(provider, [push(0)])
    writes = count_writes(provider)

    await delivered(provider, [push(i) for i in range(1, BURST + 1)])

    assert len(writes) == BURST


# -- the headers, as the fake's real HPACK decoder reads them ---------------------------------


async def test_every_header_arrives_intact_over_thousands_of_requests(
        fake_apns: FakeApns, provider: ApnsProvider) -> None:
    """3,000 requests on one connection; 150 topics, more than the 4 KiB dynamic table
    holds, so entries (the provider token's among them) are evicted and indexes move
    all along; push types, priorities, collapse ids and expirations vary."""
    assert provider.token is not None
    now = int(time.time())
    requests = [
        push(i, topic=f"{TOPIC}.t{i % 150}", push_type=("alert", "background", "voip")[i % 3],
             priority=(10, 5)[i % 2], expiration=0 if i % 11 == 0 else now + i,
             collapse_id=None if i % 4 == 0 else f"chat-{i % 7}",
             payload={"aps": {"alert": {"title": f"Nachricht {i} für dich"}}, "n": i})
        for i in range(3_000)]
    ids: list[str] = []
    for batch in range(0, len(requests), 200):
        ids += await delivered(provider, requests[batch:batch + 200])

    received = {record.headers["apns-id"]: record for record in fake_apns.requests}
    assert len(received) == len(requests) == len(set(ids))
    bearer = provider.token.get_header()
    for request, apns_id in zip(requests, ids, strict=True):
        assert UUID.fullmatch(apns_id), apns_id
        expected = {
            ":method": "POST", ":scheme": "https", ":path": f"/3/device/{request.token}",
            "host": fake_apns.host, "apns-id": apns_id, "apns-topic": request.topic,
            "apns-expiration": str(request.expiration), "apns-priority": str(request.priority),
            "apns-push-type": request.push_type, "authorization": bearer}
        if request.collapse_id is not None:
            expected["apns-collapse-id"] = request.collapse_id
        record = received[apns_id]
        assert record.headers == expected
        assert record.body == request.payload
    assert len(fake_apns.connections) == 1
    # h2 still forgets finished streams: at most 200 open, twice that held between sweeps.
    assert provider.pool is not None
    [connection] = provider.pool.connections
    assert isinstance(connection, ApnsClientProtocol)
    assert len(connection.conn.streams) <= 2 * 200 + 64


def test_header_encoder_round_trips_through_hpack_with_table_size_changes() -> None:
    """Our encoder against hpack's decoder, as the peer's SETTINGS shrink and grow the
    table, with HPACK integers of one, two and three bytes and never-indexed headers."""
    encoder, decoder = HeaderEncoder(), Decoder()
    sizes = {300: 200, 600: 0, 700: 4096, 900: 1000}
    for i in range(1_200):
        if i in sizes:
            encoder.header_table_size = sizes[i]
        headers: list[tuple[bytes, bytes]] = [
            (b":method", b"POST"), (b":scheme", b"https"),
            (b":path", b"/3/device/" + b"%x" % i * (i % 40)),
            (b"host", b"api.push.apple.com"),
            (b"apns-id", b"%036d" % i),
            (b"apns-topic", b"org.example.t%d" % (i % 60)),
            (b"x-long", b"v" * (i % 3 * 126 + (i % 5) * 20_000 // 4)),
            (b"x-" + b"n" * (120 + i % 20), b"name of %d bytes" % (122 + i % 20)),
            NeverIndexedHeaderTuple(b"x-secret", b"s%d" % i),
            (b"authorization", b"bearer " + b"%d" % (i // 100) * 50),
        ]
        assert decoder.decode(encoder.encode(headers), raw=True) == headers, i


# -- the provider token's header value ------------------------------------------------------


async def test_the_authorization_value_is_encoded_once_per_token(
        fake_apns: FakeApns, provider: ApnsProvider,
        monkeypatch: pytest.MonkeyPatch) -> None:
    token = provider.token
    assert token is not None
    first = token.authorization()
    assert token.authorization() is first  # the same object, request after request
    await delivered(provider, [push(i) for i in range(3)])

    monkeypatch.setattr(ProviderToken, "MIN_INTERVAL", 0.0)
    token.monotonic = lambda: time.monotonic() + ProviderToken.TTL  # due for renewal
    second = token.authorization()
    assert second != first and token.signed == 2
    assert token.authorization() is second
    await delivered(provider, [push(i) for i in range(3, 6)])

    bearers = [record.headers["authorization"].encode() for record in fake_apns.requests]
    assert bearers == [first] * 3 + [second] * 3


def test_the_token_is_in_the_first_header_block_only_then_an_index() -> None:
    encoder, decoder = HeaderEncoder(), Decoder()

    def block(bearer: bytes, i: int) -> bytes:
        headers = [(b":method", b"POST"), (b":path", b"/3/device/%064x" % i),
                   (b"apns-id", b"%036d" % i), (b"authorization", bearer)]
        data = encoder.encode(headers)
        assert decoder.decode(data, raw=True) == headers
        return data

    first, second = b"bearer " + b"a" * 200, b"bearer " + b"b" * 200
    blocks = [block(first, i) for i in range(5)] + [block(second, i) for i in range(5, 10)]
    assert [first in b for b in blocks] == [True] + [False] * 9
    assert [second in b for b in blocks] == [False] * 5 + [True] + [False] * 4
    # :method (static) and the token (dynamic table) are one byte each, then.
    assert len(blocks[1]) == 1 + (1 + 1 + 74) + (1 + 1 + 7 + 1 + 36) + 1


# -- no task per request ---------------------------------------------------------------------


async def test_no_task_is_created_per_request(provider: ApnsProvider) -> None:
    await delivered(provider, [push(0)])
    loop = asyncio.get_running_loop()
    created: list[Any] = []
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        created.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        for i in range(1, 21):
            assert (await provider.send(push(i))).outcome is Outcome.DELIVERED
        sequential = len(created)
        await delivered(provider, [push(i) for i in range(21, 21 + BURST)])
    finally:
        loop.set_task_factory(previous)
    assert sequential == 0
    assert len(created) == BURST  # gather's own, one per coroutine: none of ours


# -- the internals relied on, pinned ---------------------------------------------------------


async def test_aioapns_internals_the_send_path_relies_on() -> None:
    where = f"aioapns {version('aioapns')}"
    protocol = ApnsClientProtocol(TOPIC, asyncio.get_running_loop(), None, None)
    for name, kind in (("requests", dict), ("request_streams", dict),
                       ("conn", ApnsH2Connection)):
        assert isinstance(getattr(protocol, name, None), kind), (
            f"{where}: protocol.{name} is no longer a {kind.__name__}; review "
            "ApnsClientProtocol._request, which fills it as aioapns's send_notification did")
    channels = protocol.free_channels
    assert inspect.iscoroutinefunction(channels.acquire) and callable(channels.release), (
        f"{where}: free_channels changed; review ApnsClientProtocol._request")
    assert protocol.inactivity_timer is None and protocol.INACTIVITY_TIME > 0, (
        f"{where}: the inactivity timer changed; review refresh_inactivity_timer")
    assert set(NotificationRequest.__slots__) >= {
        "device_token", "message", "notification_id", "time_to_live", "priority",
        "collapse_key", "push_type", "apns_topic"}, f"{where}: NotificationRequest changed"
    assert {p.value for p in PushType} >= {"alert", "background", "voip"}, where

    sent = set(re.findall(r'\("([a-z:-]+)",', inspect.getsource(
        APNsBaseClientProtocol.send_notification)))
    assert sent == {":method", ":scheme", ":path", "host", "apns-id", "apns-topic",
                    "apns-expiration", "apns-priority", "apns-collapse-id", "apns-push-type",
                    "authorization"}, (
        f"{where} sends other headers ({sorted(sent)}): ApnsClientProtocol._request must "
        "build the same")
    for method, call in ((H2Protocol.data_received, "self.flush()"),
                         (H2Protocol.connection_made, "self.flush()"),
                         (APNsBaseClientProtocol.connection_made,
                          "self.refresh_inactivity_timer()"),
                         (APNsTLSClientProtocol.close, "self.inactivity_timer.cancel()")):
        assert call in inspect.getsource(method), (
            f"{where}: {method.__qualname__} no longer calls {call}; review "
            "ApnsClientProtocol.flush and its inactivity timer")


def test_h2_internals_the_send_path_relies_on() -> None:
    where = f"h2 {version('h2')}"
    conn = ApnsH2Connection(ignore_reply, ignore_reset)
    assert isinstance(conn.encoder, HeaderEncoder), (
        f"{where}: H2Connection.encoder was replaced after __init__")
    config = conn.config
    assert not (config.validate_outbound_headers or config.normalize_outbound_headers
                or config.validate_inbound_headers), where
    conn.initiate_connection()
    conn.send_headers(1, [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/"),
                          (b"host", b"h"), (b"apns-topic", b"t")], end_stream=True)
    assert (b"apns-topic", b"t") in conn.encoder.header_table.dynamic_entries, (
        f"{where}: send_headers no longer encodes with H2Connection.encoder")

    # The peer's SETTINGS_HEADER_TABLE_SIZE reaches the encoder (h2 sets the attribute).
    server = H2Connection(H2Configuration(client_side=False))
    server.initiate_connection()
    server.update_settings({SettingCodes.HEADER_TABLE_SIZE: 256})
    conn.receive_data(server.data_to_send())
    assert conn.encoder.header_table_size == 256, (
        f"{where}: the peer's header table size no longer reaches "
        "H2Connection.encoder.header_table_size")


def test_h2_still_refuses_a_stream_over_the_peers_limit() -> None:
    """Our cheaper open_outbound_streams keeps h2's check against the peer's
    MAX_CONCURRENT_STREAMS exact where it matters: at the limit."""
    where = f"h2 {version('h2')}"
    client = ApnsH2Connection(ignore_reply, ignore_reset)
    client.initiate_connection()
    server = H2Connection(H2Configuration(client_side=False))
    server.initiate_connection()
    server.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 3})
    client.receive_data(server.data_to_send())
    request = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/"), (b"host", b"h")]
    for stream_id in (1, 3, 5):
        client.send_headers(stream_id, request, end_stream=True)
    with pytest.raises(TooManyStreamsError):
        client.send_headers(7, request, end_stream=True)
    server.receive_data(client.data_to_send())  # stream 1 answered: one slot free again
    server.send_headers(1, [(b":status", b"200")], end_stream=True)
    client.receive_data(server.data_to_send())
    client.send_headers(9, request, end_stream=True)
    assert client.open_outbound_streams == 3, where
    assert 1 not in client.streams, f"{where}: closed streams are no longer dropped"


def test_hpack_internals_the_encoder_relies_on() -> None:
    where = f"hpack {version('hpack')}"
    encoder = Encoder()
    table = encoder.header_table
    assert isinstance(table, HeaderTable), f"{where}: Encoder.header_table changed"
    for name in ("search", "add", "resized", "maxsize"):
        assert hasattr(table, name), f"{where}: HeaderTable.{name} is gone; review HeaderEncoder"
    assert table.search(b":method", b"POST") == (3, b":method", b"POST"), where
    assert encoder.table_size_changes == [] and callable(encoder._encode_table_size_change), (
        f"{where}: Encoder's table size updates changed; review HeaderEncoder")
    static = HeaderTable.STATIC_TABLE
    assert len(static) == 61 and static[3] == (b":path", b"/") and static[37][0] == b"host", (
        f"{where}: HeaderTable.STATIC_TABLE is not RFC 7541's any more")
    assert HPACK_FITS, (
        f"{where}: _hpack_fits() says no: APNs connections fall back to h2's own (slower) "
        "header encoder")
