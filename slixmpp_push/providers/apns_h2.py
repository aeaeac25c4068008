"""HTTP/2 under the APNs client: h2, with each request and its reply framed here.

aioapns drives an h2 ``H2Connection``; :class:`ApnsH2Connection` is the one our
protocol (:class:`~slixmpp_push.providers.apns.ApnsClientProtocol`) gives it. h2
keeps the connection: the preface and SETTINGS, PING, GOAWAY, connection-level
flow control, the HPACK tables. What it no longer does is the work done per
request, which at 1,000 publishes a second was a fifth of the app server's CPU
(issue 11): a stream object and its state machine per request, a frame object
per frame sent or received, and an event for each.

- :meth:`ApnsH2Connection.send_request` writes a request as a HEADERS frame and a
  DATA frame ending the stream, when the body fits the peer's windows and frame
  size: an APNs payload is at most 5 KiB, so always, unless the peer is slow to
  return credit. Such a *lean* stream has no h2 stream object; h2 learns only
  its id, to keep the next ones in order. The rest goes through h2 as before.
- :meth:`ApnsH2Connection.receive_data` reads the frames of the lean streams
  itself (HEADERS, CONTINUATION, DATA, RST_STREAM, WINDOW_UPDATE, PRIORITY) and
  passes every other frame to h2, in the order they came.
- Every reply, on a lean stream or on one h2 opened, ends in one of two calls:
  ``on_reply(stream_id, headers, body)`` when the server ends the stream, or
  ``on_reset(stream_id, error_code)`` when it resets it. DATA is credited back
  at once, on both kinds of streams: stock aioapns never returns credit, and
  after some 1,300 error bodies APNs could send no more.

Header blocks are coded by :mod:`slixmpp_push.providers.apns_hpack`, which
replaces hpack's pure-Python coding (Huffman coding above all) for less CPU.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from h2.config import H2Configuration
from h2.connection import ConnectionInputs, ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset
from h2.exceptions import (
    DenialOfServiceError,
    FrameDataMissingError,
    FrameTooLargeError,
    ProtocolError,
)
from h2.stream import StreamClosedBy
from hpack.exceptions import HPACKError, OversizedHeaderListError

from .apns_hpack import HPACK_FITS, HeaderDecoder, HeaderEncoder, Headers

if TYPE_CHECKING:
    from h2.events import Event
    from typing_extensions import Buffer

__all__ = ["ApnsH2Connection", "Headers"]

# Frame types and flags (RFC 9113, 6).
DATA, HEADERS, PRIORITY, RST_STREAM, WINDOW_UPDATE, CONTINUATION = 0x0, 0x1, 0x2, 0x3, 0x8, 0x9
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
#: The frame types a stream's own frames can have (PUSH_PROMISE aside: h2 refuses it).
STREAM_FRAMES = frozenset((DATA, HEADERS, PRIORITY, RST_STREAM, WINDOW_UPDATE, CONTINUATION))
#: A frame header: the 24-bit length as 8 + 16 bits, type, flags, stream id.
_FRAME = struct.Struct(">BHBBL")
_STREAM_ID = 0x7FFFFFFF


def frame_header(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return _FRAME.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)


def _window_update(stream_id: int, increment: int) -> bytes:
    return frame_header(4, WINDOW_UPDATE, 0, stream_id) + increment.to_bytes(4, "big")


def _rst_stream(stream_id: int, error_code: int) -> bytes:
    return frame_header(4, RST_STREAM, 0, stream_id) + error_code.to_bytes(4, "big")


class _Reply:
    """A reply whose headers came and whose stream has not ended yet (an error body)."""

    __slots__ = ("body", "headers")

    def __init__(self, headers: Headers) -> None:
        self.headers = headers
        self.body = bytearray()


class ApnsH2Connection(H2Connection):
    """An h2 client connection that sends requests and reads replies itself
    (see the module's documentation).

    Also skipped, as costs per request that buy nothing here:

    - h2's normalisation and validation of the header blocks it sends for us:
      the protocol builds them as bytes, in lower case;
    - h2's validation of each reply's headers: a reply without a usable
      ``:status`` is retried, and a header block hpack cannot decode fails the
      connection, whose requests are retried;
    - h2's count of the open streams, a walk over all of them on every stream it
      opens (see :attr:`open_outbound_streams`).
    """

    def __init__(self, on_reply: Callable[[int, Headers, bytes], None],
                 on_reset: Callable[[int, int], None]) -> None:
        super().__init__(H2Configuration(client_side=True, header_encoding=None,
                                         normalize_outbound_headers=False,
                                         validate_outbound_headers=False,
                                         validate_inbound_headers=False))
        if HPACK_FITS:
            self.encoder = HeaderEncoder()
            self.decoder = HeaderDecoder(self.decoder.max_header_list_size)
        self.on_reply = on_reply
        self.on_reset = on_reset
        #: The lean streams awaiting their reply: id -> None until its headers
        #: came, then the reply so far.
        self._lean: dict[int, _Reply | None] = {}
        #: The replies so far of the streams h2 opened.
        self._replies: dict[int, _Reply] = {}
        #: Received bytes not yet a whole frame.
        self._inbound = b""
        #: A lean stream's header block awaiting its CONTINUATION frames:
        #: (stream id, whether it ends the stream, the block so far).
        self._header_block: tuple[int, bool, bytearray] | None = None

    # sending

    def send_request(self, stream_id: int, headers: Iterable[Any], body: bytes) -> bool:
        """Open ``stream_id`` with ``headers`` and send ``body`` on it, ending it,
        as a lean stream; False, with nothing done, when that cannot be: the
        body does not fit the peer's windows or frame size, the connection is
        not open, or the id is not new. h2's ``send_headers`` and ``send_data``
        then do it, or raise what is wrong."""
        size = len(body)
        if (size > self.outbound_flow_control_window
                or size > self.remote_settings.initial_window_size
                or size > self.max_outbound_frame_size
                or stream_id <= self.highest_outbound_stream_id):
            return False
        state = self.state_machine.state
        if state is not ConnectionState.CLIENT_OPEN:
            if state is not ConnectionState.IDLE:
                return False
            # The first request: h2 opens the connection on the first HEADERS sent.
            self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        block = self.encoder.encode(headers)
        limit, out = self.max_outbound_frame_size, self._data_to_send
        kind, start, total = HEADERS, 0, len(block)
        while True:  # one HEADERS frame, or CONTINUATIONs after it for a large block
            stop = start + limit
            last = stop >= total
            out += frame_header(min(limit, total - start), kind, END_HEADERS if last else 0,
                                stream_id)
            out += block[start:stop]
            if last:
                break
            kind, start = CONTINUATION, stop
        out += frame_header(size, DATA, END_STREAM, stream_id)
        out += body
        self.highest_outbound_stream_id = stream_id
        self.outbound_flow_control_window -= size
        self._lean[stream_id] = None
        return True

    def cancel(self, stream_id: int) -> bool:
        """Reset a stream we no longer want the reply of; whether it was still
        open (its channel is then free)."""
        if stream_id in self._lean:
            del self._lean[stream_id]
            self._closed_streams[stream_id] = StreamClosedBy.SEND_RST_STREAM
            if self.state_machine.state is not ConnectionState.CLOSED:
                self._data_to_send += _rst_stream(stream_id, ErrorCodes.CANCEL)
            return True
        self._replies.pop(stream_id, None)
        stream = self.streams.get(stream_id)
        if stream is None or stream.closed:
            return False
        try:
            self.reset_stream(stream_id, ErrorCodes.CANCEL)
        except ProtocolError:  # the connection itself is closing
            return False
        return True

    _recount_at = 0  # len(self.streams) at which to count the open ones again

    @property
    def open_outbound_streams(self) -> int:
        """The streams h2 opened that are still open, or, when that cannot matter,
        an upper bound of them.

        h2 walks every stream it holds, to count the open ones and drop the closed
        ones, each time it opens a stream: at 100 requests in flight, 100 steps per
        request. Its only use is the check against the peer's
        ``MAX_CONCURRENT_STREAMS`` (aioapns's channel pool keeps below it anyway),
        and an upper bound below the limit passes that check as the exact count
        would. So the walk is done only when the streams held could reach the
        limit, or have doubled since the last walk: the closed ones are still
        dropped, for a constant cost per request.
        """
        held = len(self.streams)
        if held < self._recount_at and held < self.remote_settings.max_concurrent_streams:
            return held
        count = super().open_outbound_streams
        self._recount_at = 2 * len(self.streams) + 64
        return count

    # receiving

    def receive_data(self, data: Buffer) -> list[Event]:
        """Read ``data``: the replies go to ``on_reply`` and ``on_reset``; the
        connection's own events (settings, GOAWAY ...) are returned, as h2's."""
        buffer = self._inbound + data if self._inbound else bytes(data)
        lean = self._lean
        events: list[Event] = []
        size, position, passed = len(buffer), 0, 0  # passed: frames up to it handled
        try:
            while size - position >= 9:
                high, low, kind, flags, stream_id = _FRAME.unpack_from(buffer, position)
                length = high << 16 | low
                if length > self.max_inbound_frame_size:
                    raise FrameTooLargeError(
                        f"Received overlong frame: length {length}, "
                        f"max {self.max_inbound_frame_size}")
                end = position + 9 + length
                if end > size:
                    break
                stream_id &= _STREAM_ID
                if self._header_block is not None or (kind in STREAM_FRAMES and stream_id in lean):
                    if passed < position:  # h2's frames first, in order
                        events += self._receive_by_h2(buffer[passed:position])
                    self._receive_lean(kind, flags, stream_id, buffer[position + 9:end])
                    passed = end
                position = end
            if passed < position:
                events += self._receive_by_h2(buffer[passed:position])
        except ProtocolError as exc:
            if self.state_machine.state is not ConnectionState.CLOSED:  # h2 may have
                self._terminate_connection(exc.error_code)
            raise
        finally:
            self._inbound = buffer[position:]
        return events

    def _receive_by_h2(self, frames: bytes) -> list[Event]:
        """h2's handling of whole frames: the replies of its streams go to the
        same two calls as the lean ones; its other events are returned."""
        events: list[Event] = []
        for event in super().receive_data(frames):
            if isinstance(event, ResponseReceived):
                self._replies[event.stream_id] = _Reply(list(event.headers))
            elif isinstance(event, DataReceived):
                reply = self._replies.get(event.stream_id)
                if reply is not None:
                    reply.body += event.data
                if event.flow_controlled_length:
                    # Connection level always; stream level while the stream is open.
                    self.acknowledge_received_data(event.flow_controlled_length,
                                                   event.stream_id)
            elif isinstance(event, StreamEnded):
                reply = self._replies.pop(event.stream_id, None)
                if reply is not None:
                    self.on_reply(event.stream_id, reply.headers, bytes(reply.body))
            elif isinstance(event, StreamReset):
                self._replies.pop(event.stream_id, None)
                self.on_reset(event.stream_id, event.error_code)
            else:
                events.append(event)
        return events

    def _receive_lean(self, kind: int, flags: int, stream_id: int,
                      payload: bytes) -> None:
        """One frame of a lean stream (or the CONTINUATION a header block awaits)."""
        if self._header_block is not None:
            awaited, ends, block = self._header_block
            if kind != CONTINUATION or stream_id != awaited:
                raise ProtocolError(f"Expected a CONTINUATION of stream {awaited}, "
                                    f"got a frame of type {kind} on stream {stream_id}")
            block += payload
            if flags & END_HEADERS:
                self._header_block = None
                self._receive_headers(stream_id, bytes(block), ends)
        elif kind == HEADERS:
            payload = _unpadded(flags, payload)
            if flags & PRIORITY_FLAG:
                if len(payload) < 5:
                    raise FrameDataMissingError("HEADERS too short for its priority")
                payload = payload[5:]
            if flags & END_HEADERS:
                self._receive_headers(stream_id, payload, bool(flags & END_STREAM))
            else:
                self._header_block = (stream_id, bool(flags & END_STREAM), bytearray(payload))
        elif kind == DATA:
            self._receive_body(flags, stream_id, payload)
        elif kind == RST_STREAM:
            if len(payload) != 4:
                raise FrameDataMissingError(f"RST_STREAM of {len(payload)} bytes")
            del self._lean[stream_id]
            self._closed_streams[stream_id] = StreamClosedBy.RECV_RST_STREAM
            self.on_reset(stream_id, int.from_bytes(payload, "big"))
        elif kind == WINDOW_UPDATE:
            if len(payload) != 4:
                raise FrameDataMissingError(f"WINDOW_UPDATE of {len(payload)} bytes")
            if not int.from_bytes(payload, "big") & _STREAM_ID:
                self._reset(stream_id, ErrorCodes.PROTOCOL_ERROR)  # a stream error
            # else nothing to do: the whole request went out at once.
        elif kind == PRIORITY:
            if len(payload) != 5:
                raise FrameDataMissingError(f"PRIORITY of {len(payload)} bytes")
        else:  # CONTINUATION
            raise ProtocolError(f"CONTINUATION on stream {stream_id} without HEADERS")

    def _receive_headers(self, stream_id: int, block: bytes, ends: bool) -> None:
        try:
            headers = cast(Headers, self.decoder.decode(block, raw=True))
        except OversizedHeaderListError as exc:
            raise DenialOfServiceError(f"Oversized header block: {exc}") from exc
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as exc:
            error = ProtocolError(f"Error decoding header block: {exc}")
            error.error_code = ErrorCodes.COMPRESSION_ERROR
            raise error from exc
        lean = self._lean
        if stream_id not in lean:  # cancelled meanwhile; decoded for the table only
            return
        reply = lean[stream_id]
        if reply is None:
            if ends:
                self._end(stream_id, headers, b"")  # the usual answer: 200, no body
            elif not _informational(headers):
                lean[stream_id] = _Reply(headers)
        elif ends:  # trailers: the reply is complete
            self._end(stream_id, reply.headers, bytes(reply.body))
        else:
            self._reset(stream_id, ErrorCodes.PROTOCOL_ERROR)

    def _receive_body(self, flags: int, stream_id: int, payload: bytes) -> None:
        # The whole frame counts against the windows, padding included; credit it
        # back at once, as for h2's streams.
        window = self._inbound_flow_control_window_manager
        window.window_consumed(len(payload))
        increment = window.process_bytes(len(payload))
        if increment:
            self._data_to_send += _window_update(0, increment)
        body = _unpadded(flags, payload)
        reply = self._lean[stream_id]
        if reply is None:  # DATA before the reply's headers
            self._reset(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        reply.body += body
        if flags & END_STREAM:
            self._end(stream_id, reply.headers, bytes(reply.body))
        elif payload:
            self._data_to_send += _window_update(stream_id, len(payload))

    def _end(self, stream_id: int, headers: Headers, body: bytes) -> None:
        del self._lean[stream_id]
        self._closed_streams[stream_id] = StreamClosedBy.RECV_END_STREAM
        self.on_reply(stream_id, headers, body)

    def _reset(self, stream_id: int, error_code: ErrorCodes) -> None:
        """A stream error on a lean stream: reset it, and report it reset."""
        del self._lean[stream_id]
        self._closed_streams[stream_id] = StreamClosedBy.SEND_RST_STREAM
        self._data_to_send += _rst_stream(stream_id, error_code)
        self.on_reset(stream_id, error_code)


def _unpadded(flags: int, payload: bytes) -> bytes:
    """The payload of a DATA or HEADERS frame without its padding."""
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ProtocolError("Received frame with invalid padding.")
    return payload[1:len(payload) - payload[0]]


def _informational(headers: Headers) -> bool:
    """Whether a header block is a 1xx response, to be followed by the real one."""
    for name, value in headers:
        if name == b":status":
            return value[:1] == b"1"
    return False
