"""Requests and replies framed by our APNs connection (slixmpp_push/providers/apns_h2.py).

:class:`ApnsH2Connection` writes most requests as two frames of its own and reads
their replies' frames itself, beside h2. Its peer here is h2's own server-side
connection, in memory, or frames built with hyperframe where h2 would not send
them (padding on HEADERS, CONTINUATION, malformed frames); the end of this file
runs the whole APNs client against the fake APNs over TLS.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fakes.fake_apns import FakeApns
from fakes.tls import TestCA
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)

from slixmpp_push.config import AppConfig
from slixmpp_push.errors import Outcome
from slixmpp_push.providers.apns import ApnsClientProtocol, ApnsProvider
from slixmpp_push.providers.apns_h2 import ApnsH2Connection, Headers
from slixmpp_push.providers.base import ApnsRequest

REQUEST: Headers = [(b":method", b"POST"), (b":scheme", b"https"),
                    (b":path", b"/3/device/" + b"ab" * 32), (b"host", b"api.push.apple.com"),
                    (b"apns-topic", b"org.example.chat"), (b"apns-push-type", b"background")]
BODY = b'{"aps":{"content-available":1}}'
OK = [(b":status", b"200")]


class Client:
    """Our connection, with the replies and resets it reported."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, dict[bytes, bytes], bytes]] = []
        self.resets: list[tuple[int, int]] = []
        self.conn = ApnsH2Connection(self._reply, self._reset)
        self.conn.initiate_connection()

    def _reply(self, stream_id: int, headers: Headers, body: bytes) -> None:
        self.replies.append((stream_id, dict(headers), body))

    def _reset(self, stream_id: int, error_code: int) -> None:
        self.resets.append((stream_id, error_code))

    def receive(self, data: bytes, chunk: int | None = None) -> list[Any]:
        """Feed ``data``, in pieces of ``chunk`` bytes if given; the events returned."""
        if chunk is None:
            return self.conn.receive_data(data)
        events: list[Any] = []
        for start in range(0, len(data), chunk):
            events += self.conn.receive_data(data[start:start + chunk])
        return events


def connected(**settings: int) -> tuple[Client, H2Connection]:
    """Our client and an h2 server, SETTINGS exchanged (the server's ``settings``)."""
    client = Client()
    server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    if settings:
        server.update_settings({SettingCodes[name]: value for name, value in settings.items()})
    server.receive_data(client.conn.data_to_send())
    assert client.receive(server.data_to_send()) != []  # RemoteSettingsChanged ...
    server.receive_data(client.conn.data_to_send())  # our SETTINGS ack
    return client, server


def request(client: Client, server: H2Connection, stream_id: int, body: bytes = BODY,
            headers: Headers = REQUEST) -> list[Any]:
    """A lean request, as the server's events."""
    assert client.conn.send_request(stream_id, headers, body)
    return server.receive_data(client.conn.data_to_send())


def raw(*frames: Frame) -> bytes:
    return b"".join(frame.serialize() for frame in frames)


def frames_of(data: bytes) -> list[Frame]:
    """The frames in ``data``, parsed by hyperframe."""
    frames, position = [], 0
    while position < len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[position:position + 9]))
        frame.parse_body(memoryview(data[position + 9:position + 9 + length]))
        frames.append(frame)
        position += 9 + length
    return frames


def headers_frame(stream_id: int, block: bytes, *flags: str, **fields: Any) -> HeadersFrame:
    frame = HeadersFrame(stream_id, block, flags=flags)
    for name, value in fields.items():
        setattr(frame, name, value)
    return frame


# -- the usual exchange ---------------------------------------------------------------------


def test_a_lean_request_is_what_h2_would_send_and_its_answer_comes_back() -> None:
    client, server = connected()

    events = request(client, server, 1)

    assert [type(e) for e in events] == [RequestReceived, DataReceived, StreamEnded]
    assert events[0].headers == REQUEST and events[1].data == BODY
    assert client.conn.streams == {}  # no h2 stream object for it
    server.send_headers(1, [*OK, (b"apns-id", b"c0ffee")], end_stream=True)
    assert client.receive(server.data_to_send()) == []  # a reply is no event
    assert client.replies == [(1, {b":status": b"200", b"apns-id": b"c0ffee"}, b"")]

    # The stream is closed for h2 too: a second answer on it is the peer's error.
    server_again = headers_frame(1, server.encoder.encode(OK), "END_HEADERS", "END_STREAM")
    with pytest.raises(ProtocolError):
        client.receive(raw(server_again))


def test_a_request_that_cannot_go_lean_writes_nothing_and_says_so() -> None:
    client, _server = connected(INITIAL_WINDOW_SIZE=64)
    conn = client.conn

    assert not conn.send_request(1, REQUEST, b"x" * 65)  # the peer's stream window
    assert conn.data_to_send() == b""
    assert conn.send_request(1, REQUEST, b"x" * 64)
    assert not conn.send_request(1, REQUEST, BODY)  # not a new stream id
    conn.outbound_flow_control_window = 10
    assert not conn.send_request(3, REQUEST, BODY)  # the connection's window
    conn.outbound_flow_control_window = 65535
    assert not conn.send_request(3, REQUEST, b"x" * (conn.max_outbound_frame_size + 1))
    conn.close_connection()
    conn.data_to_send()
    assert not conn.send_request(3, REQUEST, BODY)  # closed
    assert conn.data_to_send() == b""


def test_a_header_block_larger_than_a_frame_goes_on_in_continuations() -> None:
    client, server = connected()
    headers = [*REQUEST, (b"authorization", b"bearer " + b"k" * 40000)]

    assert client.conn.send_request(1, headers, BODY)
    data = client.conn.data_to_send()
    kinds = [type(frame).__name__ for frame in frames_of(data)]
    assert kinds == ["HeadersFrame", "ContinuationFrame", "ContinuationFrame", "DataFrame"]
    events = server.receive_data(data)
    assert events[0].headers == headers and events[1].data == BODY


# -- replies in every shape ----------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1, 7, 1000])
def test_an_error_reply_padded_prioritized_continued_and_split(chunk: int | None) -> None:
    client, server = connected()
    request(client, server, 1)
    request(client, server, 3)
    block = server.encoder.encode([(b":status", b"410"), (b"apns-id", b"a1"),
                                   (b"content-type", b"application/json")])
    body = b'{"reason":"Unregistered","timestamp":1700000000000}'
    frames = raw(
        headers_frame(1, block[:5], "PADDED", "PRIORITY", pad_length=7, depends_on=0,
                      stream_weight=16),
        ContinuationFrame(1, block[5:9]),
        ContinuationFrame(1, block[9:], flags=["END_HEADERS"]),
        DataFrame(1, body[:10], flags=["PADDED"], pad_length=3),
        DataFrame(1, body[10:], flags=["PADDED", "END_STREAM"], pad_length=0),
        headers_frame(3, server.encoder.encode(OK), "END_HEADERS", "END_STREAM"))

    assert client.receive(frames, chunk) == []

    assert client.replies == [
        (1, {b":status": b"410", b"apns-id": b"a1", b"content-type": b"application/json"}, body),
        (3, {b":status": b"200"}, b"")]
    assert client.conn._lean == {}


def test_an_informational_answer_is_followed_by_the_real_one() -> None:
    client, server = connected()
    request(client, server, 1)
    server.send_headers(1, [(b":status", b"100")])
    server.send_headers(1, OK, end_stream=True)
    client.receive(server.data_to_send())
    assert client.replies == [(1, {b":status": b"200"}, b"")]


def test_trailers_end_a_reply() -> None:
    client, server = connected()
    request(client, server, 1)
    server.send_headers(1, [(b":status", b"400")])
    server.send_data(1, b'{"reason":"BadTopic"}')
    server.send_headers(1, [(b"x-trailer", b"1")], end_stream=True)
    client.receive(server.data_to_send())
    assert client.replies == [(1, {b":status": b"400"}, b'{"reason":"BadTopic"}')]


def test_error_bodies_return_their_credit() -> None:
    """Without credit, the server's 64 KiB window would take some 650 of these bodies."""
    client, server = connected()
    body = b'{"reason":"Unregistered","timestamp":1700000000000}' + b" " * 50
    for stream_id in range(1, 4001, 2):
        request(client, server, stream_id)
        server.send_headers(stream_id, [(b":status", b"410")])
        server.send_data(stream_id, body, end_stream=True)
        client.receive(server.data_to_send())
        server.receive_data(client.conn.data_to_send())  # our WINDOW_UPDATEs
    assert len(client.replies) == 2000
    assert {r[2] for r in client.replies} == {body}
    assert server.outbound_flow_control_window > 65535 // 2


def test_a_stream_reset_by_the_server_is_reported() -> None:
    client, server = connected()
    request(client, server, 1)
    request(client, server, 3)
    server.reset_stream(1, ErrorCodes.REFUSED_STREAM)
    server.send_headers(3, OK, end_stream=True)
    client.receive(server.data_to_send())
    assert client.resets == [(1, ErrorCodes.REFUSED_STREAM)]
    assert client.replies == [(3, {b":status": b"200"}, b"")]


@pytest.mark.parametrize("frame", [
    DataFrame(1, b'{"reason":"early"}', flags=["END_STREAM"]),  # no headers yet
    WindowUpdateFrame(1, window_increment=0),
])
def test_a_malformed_reply_resets_its_stream_only(frame: Frame) -> None:
    client, server = connected()
    request(client, server, 1)
    request(client, server, 3)
    client.receive(raw(frame))
    assert client.resets == [(1, ErrorCodes.PROTOCOL_ERROR)]
    events = server.receive_data(client.conn.data_to_send())
    assert [(type(e), e.stream_id, e.error_code) for e in events] == [
        (StreamReset, 1, ErrorCodes.PROTOCOL_ERROR)]
    server.send_headers(3, OK, end_stream=True)
    client.receive(server.data_to_send())
    assert client.replies == [(3, {b":status": b"200"}, b"")]


def test_a_cancelled_stream_still_decodes_its_late_reply() -> None:
    """The header table is shared with the peer: a reply we no longer want must
    still be decoded, or the next one that refers to it reads wrong."""
    client, server = connected()
    request(client, server, 1)
    request(client, server, 3)
    server.send_headers(1, [*OK, (b"x-note", b"indexed by the server")], end_stream=True)
    late = server.data_to_send()

    assert client.conn.cancel(1)
    assert not client.conn.cancel(1)
    client.receive(late)
    server.send_headers(3, [*OK, (b"x-note", b"indexed by the server")], end_stream=True)
    client.receive(server.data_to_send())

    assert client.replies == [(3, {b":status": b"200", b"x-note": b"indexed by the server"},
                               b"")]
    sent = frames_of(client.conn.data_to_send())
    assert next(f for f in sent if isinstance(f, RstStreamFrame)).error_code == ErrorCodes.CANCEL


def test_a_cancelled_header_block_is_still_read_to_its_end() -> None:
    client, server = connected()
    request(client, server, 1)
    request(client, server, 3)
    block = server.encoder.encode([*OK, (b"x-note", b"first")])
    client.receive(raw(headers_frame(1, block[:3], "END_STREAM")))
    assert client.conn.cancel(1)
    client.receive(raw(ContinuationFrame(1, block[3:], flags=["END_HEADERS"])))
    client.receive(raw(headers_frame(3, server.encoder.encode([*OK, (b"x-note", b"first")]),
                                     "END_HEADERS", "END_STREAM")))
    assert client.replies == [(3, {b":status": b"200", b"x-note": b"first"}, b"")]


def test_goaway_lets_the_replies_in_flight_come() -> None:
    client, server = connected()
    request(client, server, 1)
    request(client, server, 3)
    server.send_headers(1, OK, end_stream=True)
    server.close_connection(last_stream_id=3)

    events = client.receive(server.data_to_send())

    assert [type(e) for e in events] == [ConnectionTerminated]
    late = headers_frame(3, server.encoder.encode(OK), "END_HEADERS", "END_STREAM")
    client.receive(raw(late))
    assert [r[0] for r in client.replies] == [1, 3]
    assert not client.conn.send_request(5, REQUEST, BODY)


def test_lean_and_h2_streams_on_one_connection() -> None:
    client, server = connected()
    conn = client.conn
    request(client, server, 1)
    conn.send_headers(3, REQUEST)  # as the protocol does when a body must wait
    conn.send_data(3, BODY, end_stream=True)
    server.receive_data(conn.data_to_send())
    request(client, server, 5)
    assert list(conn.streams) == [3]

    server.send_headers(5, OK, end_stream=True)
    server.send_headers(3, [(b":status", b"429")])
    server.send_data(3, b'{"reason":"TooManyRequests"}', end_stream=True)
    server.send_headers(1, OK, end_stream=True)
    assert client.receive(server.data_to_send()) == []

    assert client.replies == [(5, {b":status": b"200"}, b""),
                              (3, {b":status": b"429"}, b'{"reason":"TooManyRequests"}'),
                              (1, {b":status": b"200"}, b"")]


# -- the peer's protocol errors fail the connection, as h2 does -----------------------------


def _bad_padding() -> bytes:
    frame = raw(DataFrame(1, b"abc", flags=["PADDED"], pad_length=0))
    return frame[:9] + b"\x09" + frame[10:]  # pad length 9 > what follows


@pytest.mark.parametrize(("frames", "error"), [
    (lambda s: raw(headers_frame(1, s.encoder.encode(OK)), DataFrame(1, b"{}")),
     ErrorCodes.PROTOCOL_ERROR),  # a header block interrupted
    (lambda s: raw(ContinuationFrame(1, b"\x88", flags=["END_HEADERS"])),
     ErrorCodes.PROTOCOL_ERROR),  # CONTINUATION without HEADERS
    (lambda s: _bad_padding(), ErrorCodes.PROTOCOL_ERROR),
    (lambda s: raw(DataFrame(1, b"x" * 20_000)), ErrorCodes.FRAME_SIZE_ERROR),
    (lambda s: raw(RstStreamFrame(1))[:-1].replace(b"\x00\x00\x04", b"\x00\x00\x03", 1),
     ErrorCodes.FRAME_SIZE_ERROR),
    (lambda s: raw(headers_frame(1, b"\xff\xff\xff\xff\xff", "END_HEADERS")),
     ErrorCodes.COMPRESSION_ERROR),
])
def test_a_protocol_error_on_a_lean_stream_ends_the_connection(
        frames: Callable[[H2Connection], bytes], error: ErrorCodes) -> None:
    client, server = connected()
    request(client, server, 1)
    with pytest.raises(ProtocolError):
        client.receive(frames(server))
    [goaway] = [e for e in server.receive_data(client.conn.data_to_send())
                if isinstance(e, ConnectionTerminated)]
    assert goaway.error_code == error


# -- many replies in random shapes and order, against what was sent --------------------------


@pytest.mark.parametrize("seed", range(4))
def test_random_replies_in_random_pieces(seed: int) -> None:
    rng = random.Random(seed)
    client, server = connected()
    conn = client.conn
    expected: dict[int, tuple[dict[bytes, bytes], bytes]] = {}
    next_id = 1
    for _round in range(20):
        streams = []
        for _ in range(rng.randint(1, 30)):
            stream_id, next_id = next_id, next_id + 2
            body = b'{"n":%d}' % stream_id
            if rng.random() < 0.2:  # through h2
                conn.send_headers(stream_id, REQUEST)
                conn.send_data(stream_id, body, end_stream=True)
            else:
                assert conn.send_request(stream_id, REQUEST, body)
            streams.append(stream_id)
        server.receive_data(conn.data_to_send())
        rng.shuffle(streams)
        for stream_id in streams:
            status = rng.choice([b"200", b"200", b"400", b"410", b"429", b"500"])
            headers = [(b":status", status), (b"apns-id", b"%08x" % rng.getrandbits(32))]
            if status == b"200":
                server.send_headers(stream_id, headers, end_stream=True)
                expected[stream_id] = (dict(headers), b"")
                continue
            body = b'{"reason":"%d"}' % rng.getrandbits(64) + b" " * rng.randint(0, 300)
            server.send_headers(stream_id, headers)
            cut = rng.randint(0, len(body))
            for part, end in ((body[:cut], False), (body[cut:], True)):
                server.send_data(stream_id, part, end_stream=end,
                                 pad_length=rng.choice([None, 0, 5, 200]))
            expected[stream_id] = (dict(headers), body)
        data = server.data_to_send()
        position = 0
        while position < len(data):
            step = rng.randint(1, 400)
            client.receive(data[position:position + step])
            position += step
        server.receive_data(conn.data_to_send())
    assert {stream_id: (headers, body) for stream_id, headers, body in client.replies} == expected
    assert len(client.replies) == len(expected) and client.resets == []
    assert conn._lean == {} and conn._replies == {}


# -- the APNs client over TLS, against the fake ----------------------------------------------


TOPIC = "org.example.chat"


@pytest.fixture
async def provider(fake_apns: FakeApns, test_ca: TestCA,
                   apns_key: Path) -> AsyncIterator[ApnsProvider]:
    fake_apns.max_concurrent_streams = 4
    app = AppConfig(id="ios", type="apns", topic=TOPIC, key_file=str(apns_key),
                    key_id="TESTKEY123", team_id="TEAM123456", endpoint=fake_apns.endpoint,
                    ca_file=str(test_ca.ca_file), timeout=10.0, max_connections=1)
    started = ApnsProvider(app)
    await started.start()
    yield started
    await started.close()


def push(i: int) -> ApnsRequest:
    return ApnsRequest(token=f"{i + 1:064x}", topic=TOPIC, push_type="background", priority=5,
                       expiration=int(time.time()) + 3600,
                       payload={"aps": {"content-available": 1}})


def the_connection(provider: ApnsProvider) -> ApnsClientProtocol:
    assert provider.pool is not None
    [connection] = provider.pool.connections
    assert isinstance(connection, ApnsClientProtocol)
    return connection


async def test_requests_go_lean_and_leave_nothing_behind(provider: ApnsProvider) -> None:
    results = await asyncio.gather(*(provider.send(push(i)) for i in range(40)))
    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    connection = the_connection(provider)
    assert connection.conn.highest_outbound_stream_id == 79
    assert connection.conn.streams == {} and connection.conn._lean == {}
    assert connection.requests == {} and connection.request_streams == {}
    assert connection.answered == 40


async def test_a_reset_stream_is_retried_and_frees_its_channel(
        fake_apns: FakeApns, provider: ApnsProvider) -> None:
    """The fake allows 4 streams at a time: a reset stream that kept its channel
    would leave the fifth request waiting until the timeout."""
    for i in range(8):
        fake_apns.stream_resets[push(i).token] = ErrorCodes.REFUSED_STREAM
    refused = await asyncio.gather(*(provider.send(push(i)) for i in range(8)))
    assert [(r.outcome, r.reason) for r in refused] == [
        (Outcome.RETRY, "stream reset (REFUSED_STREAM)")] * 8
    results = await asyncio.gather(*(provider.send(push(i)) for i in range(8, 16)))
    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert len(fake_apns.connections) == 1


async def test_error_bodies_in_padded_pieces_are_read_whole(
        fake_apns: FakeApns, provider: ApnsProvider) -> None:
    fake_apns.split_padded_bodies = 17
    fake_apns.respond(push(1).token, 400, "BadExpirationDate")
    fake_apns.respond(push(2).token, 429, "TooManyRequests", retry_after=30)
    fake_apns.respond(push(3).token, 410, "Unregistered")
    bad, busy, dead, fine = await asyncio.gather(*(provider.send(push(i)) for i in (1, 2, 3, 4)))
    assert (bad.outcome, bad.status, bad.reason) == (Outcome.REJECTED, 400, "BadExpirationDate")
    assert (busy.outcome, busy.reason, busy.retry_after) == (
        Outcome.RETRY, "TooManyRequests", 30)
    assert (dead.outcome, dead.reason) == (Outcome.DEAD_TOKEN, "Unregistered")
    assert fine.outcome is Outcome.DELIVERED
