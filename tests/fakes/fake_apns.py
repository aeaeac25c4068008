"""A protocol-faithful fake of Apple's push service (APNs), for tests and benchmarks.

asyncio + TLS + plain ``h2``, HTTP/2 spoken directly on the TLS connection
(aioapns connects without ALPN, so the fake must not require it). What it does
like the real service, because the client depends on it:

- ``POST /3/device/<token>``; the ``apns-id`` request header is echoed, or a
  UUID generated when the client sent none (aioapns matches replies by it).
- Success is a HEADERS frame (``:status 200``, ``apns-id``) with END_STREAM
  and no DATA frame; an empty DATA frame would confuse aioapns.
- Errors carry a JSON body ``{"reason": "..."}``; 410 adds ``"timestamp"``
  (milliseconds since the epoch, when the token stopped being valid).
- Flow control is honoured: a reply body is sent only when the peer's
  connection and stream windows can take it whole; otherwise it waits for a
  WINDOW_UPDATE. A client that never returns credit (stock aioapns) therefore
  stalls here exactly as it does against Apple. Bodies are never split across
  frames (a server may choose to wait; Apple's bodies are tiny).
- It advertises MAX_CONCURRENT_STREAMS 1000 in its first SETTINGS frame.
- Every reply carries a ``date`` header (as Apple's do), from the fake's clock:
  real time plus :attr:`FakeApns.clock_offset`, which tests set to play a server
  whose clock differs from ours.
- A device token of only zeros is no token Apple issued: 400 BadDeviceToken
  (what ``slixmpp-push doctor`` expects for its probe).
- Provider authentication, when :meth:`FakeApns.add_provider_key` registered
  keys (otherwise any bearer token, or none, is accepted): the ES256 JWT in
  ``authorization: bearer …`` must name a registered ``kid``, be signed by that
  key, have the key's team as ``iss``, and an ``iat`` no older than one hour
  (403 ExpiredProviderToken) and not in the future beyond
  :attr:`FakeApns.JWT_LEEWAY` (403 InvalidProviderToken); a request with neither
  a token nor a verified client certificate is 403 MissingProviderToken.
  :attr:`FakeApns.topics` (when set) lists the bundle ids that may be pushed to:
  others are 400 TopicDisallowed. These checks come before the device token's,
  as at Apple.

- Provider token updates, when :attr:`FakeApns.min_token_interval` is set
  (Apple: 20 minutes; off by default, as Apple's exact rule is unpublished): a
  new valid token of a key that arrives sooner than that after the key's
  previous new token is refused 429 TooManyProviderTokenUpdates (and not
  adopted: the previous token keeps working).

Scripting: :attr:`FakeApns.responses` maps a token to ``(status, reason)``
(:meth:`FakeApns.respond` adds a Retry-After); :meth:`FakeApns.set_outage`
answers every request with one error (optionally with Retry-After);
:attr:`FakeApns.hang` accepts requests and never answers.

Faults from outside, as an operator meets them: :attr:`FakeApns.untrusted`
presents, on each new handshake, a certificate of a CA the client does not
trust; :attr:`FakeApns.reset_ratio` resets that fraction of the requests'
connections (TCP RST, the request unanswered) once the request has arrived;
stopping the fake leaves a refused port.

Standalone (benchmarks, subprocess tests)::

    python -m tests.fakes.fake_apns --port 0 --ca-dir /tmp/ca [--dead-prefix dead]

prints ``PORT <n>`` once listening; the CA to trust is ``<ca-dir>/ca.pem``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import signal
import socket
import struct
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import jwt
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings

from .control import serve_commands
from .tls import TestCA

__all__ = ["ApnsRecord", "FakeApns", "FakeApnsConnection"]

DEVICE_PATH_PREFIX = "/3/device/"


@dataclass(slots=True)
class ApnsRecord:
    """One request the fake received (complete: headers and body)."""

    path: str
    token: str
    headers: dict[str, str]  # every header, pseudo-headers included
    body: Any  # the parsed JSON payload (None if the body was not JSON)
    raw_body: bytes
    received: float  # time.monotonic() when the request was complete
    connection: int  # index into FakeApns.connections
    client_cert: dict[str, Any] | None  # the verified TLS client certificate, if any


@dataclass(slots=True)
class _Stream:
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)


class FakeApnsConnection(asyncio.Protocol):
    """One client connection: an h2 server state machine plus reply scheduling."""

    def __init__(self, server: FakeApns) -> None:
        self.server = server
        self.index = len(server.connections)
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: server.max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        self.transport: asyncio.Transport | None = None
        self.client_cert: dict[str, Any] | None = None
        self._streams: dict[int, _Stream] = {}
        self._pending: deque[tuple[int, bytes]] = deque()  # reply bodies awaiting window
        # Statistics the flow-control tests read.
        self.replies_sent = 0
        self.bodies_deferred = 0  # bodies that had to wait for a WINDOW_UPDATE
        self.resets_received = 0
        self.min_outbound_window = self.conn.outbound_flow_control_window
        self._deferred_stream = 0
        self.closed = False

    @property
    def outbound_window(self) -> int:
        """Bytes of DATA the client currently lets this server send (connection level)."""
        return self.conn.outbound_flow_control_window

    @property
    def pending_replies(self) -> int:
        """Error bodies waiting for the client to return flow-control credit."""
        return len(self._pending)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        cert = transport.get_extra_info("peercert")
        self.client_cert = cert or None
        self.conn.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self._flush()
            self._close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                assert event.stream_id is not None and event.headers is not None
                headers = {str(k): str(v) for k, v in event.headers}
                self._streams[event.stream_id] = _Stream(headers)
            elif isinstance(event, DataReceived):
                assert event.stream_id is not None and event.data is not None
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.body += event.data
                # A real server hands the credit back: so does the fake.
                if event.flow_controlled_length:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            elif isinstance(event, StreamEnded):
                assert event.stream_id is not None
                self._request_complete(event.stream_id)
            elif isinstance(event, WindowUpdated):
                self._drain()
            elif isinstance(event, StreamReset):
                self.resets_received += 1
                if event.stream_id is not None:
                    self._streams.pop(event.stream_id, None)
            elif isinstance(event, ConnectionTerminated):
                self._flush()
                self._close()
                return
        self._flush()

    # requests and replies

    def _request_complete(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        server = self.server
        path = stream.headers.get(":path", "")
        token = path[len(DEVICE_PATH_PREFIX) :] if path.startswith(DEVICE_PATH_PREFIX) else ""
        raw = bytes(stream.body)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        apns_id = stream.headers.get("apns-id") or str(uuid.uuid4())
        server._record(
            ApnsRecord(
                path=path,
                token=token,
                headers=stream.headers,
                body=body,
                raw_body=raw,
                received=time.monotonic(),
                connection=self.index,
                client_cert=self.client_cert,
            )
        )
        if server.hang:
            return  # accepted, never answered
        if server._reset_now():
            self._reset()
            return
        if token in server.stream_resets:
            self.conn.reset_stream(stream_id, server.stream_resets[token])
            return
        refused = server._authenticate(stream.headers, self.client_cert)
        if refused is not None:
            status, reason, retry_after = *refused, None
        else:
            status, reason, retry_after = server._decide(stream.headers, token, raw)
        headers = [(":status", str(status)), ("apns-id", apns_id), ("date", server.http_date())]
        if status == 200:
            self.conn.send_headers(stream_id, headers, end_stream=True)
            self.replies_sent += 1
            return
        if retry_after is not None:
            headers.append(("retry-after", str(retry_after)))
        headers.append(("content-type", "application/json"))
        reply: dict[str, Any] = {"reason": reason}
        if status == 410:
            reply["timestamp"] = int(time.time() * 1000)
        self.conn.send_headers(stream_id, headers)
        self._pending.append((stream_id, json.dumps(reply, separators=(",", ":")).encode()))
        self._drain()

    def _drain(self) -> None:
        """Send queued reply bodies, in order, while the peer's windows allow."""
        while self._pending:
            stream_id, body = self._pending[0]
            try:
                window = self.conn.local_flow_control_window(stream_id)
            except StreamClosedError:
                self._pending.popleft()  # the client reset it meanwhile
                continue
            padding = self.server.split_padded_bodies
            cost = len(body) + (0 if padding is None else 2 * (padding + 1))
            if cost > min(window, self.conn.max_outbound_frame_size):
                if stream_id != self._deferred_stream:
                    self.bodies_deferred += 1
                    self._deferred_stream = stream_id
                break
            self._pending.popleft()
            if padding is None:
                self.conn.send_data(stream_id, body, end_stream=True)
            else:
                half = len(body) // 2
                self.conn.send_data(stream_id, body[:half], pad_length=padding)
                self.conn.send_data(stream_id, body[half:], end_stream=True, pad_length=padding)
            self.replies_sent += 1
            self.min_outbound_window = min(
                self.min_outbound_window, self.conn.outbound_flow_control_window
            )

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            data = self.conn.data_to_send()
            if data:
                self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _reset(self) -> None:
        """Drop the connection with a TCP RST, as a middlebox or a crash does."""
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()
        self.server.resets += 1


class FakeApns:
    """The fake service: ``async with FakeApns(ca) as fake: ... fake.endpoint``.

    ``verify_client``: request (optionally) a TLS client certificate and verify
    it against ``ca``; it is recorded in :attr:`ApnsRecord.client_cert`.
    """

    #: Seconds an ``iat`` may lie in the future (Apple's own tolerance is not
    #: documented; it refuses tokens "from the future").
    JWT_LEEWAY = 60
    #: Apple refuses provider tokens older than this (seconds).
    JWT_MAX_AGE = 3600

    def __init__(
        self,
        ca: TestCA,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        verify_client: bool = True,
        max_concurrent_streams: int = 1000,
    ) -> None:
        self.ca = ca
        self.host = host
        self.port = port
        self.verify_client = verify_client
        self.max_concurrent_streams = max_concurrent_streams
        # Scripting
        self.responses: dict[str, tuple[int, str]] = {}
        self.dead_token_prefix: str | None = None  # tokens with it get 410 Unregistered
        self.outage: tuple[int, str] | None = None
        self.outage_retry_after: int | None = None
        self.hang = False
        self.retry_afters: dict[str, int] = {}  # token -> Retry-After of its scripted reply
        #: token -> HTTP/2 error code: its requests' streams are reset, not answered.
        self.stream_resets: dict[str, int] = {}
        #: Error bodies in two DATA frames, each padded with this many bytes (None: one
        #: unpadded frame, as h2 sends them by default).
        self.split_padded_bodies: int | None = None
        #: Present an untrusted certificate on new handshakes (a fault that can end).
        self.untrusted = False
        #: Fraction of requests whose connection is reset instead of answered.
        self.reset_ratio = 0.0
        self._reset_credit = 0.0
        #: Seconds a key must wait between new provider tokens (None: any rate).
        self.min_token_interval: float | None = None
        self._key_tokens: dict[str, tuple[str, float]] = {}  # kid -> (token, adopted at)
        self.clock_offset = 0.0  # seconds the fake's clock is ahead of the real one
        #: key id -> (team id, EC public key); None: provider tokens are not checked.
        self.provider_keys: dict[str, tuple[str, Any]] | None = None
        #: Bundle ids that may be pushed to (``apns-topic``); None: any.
        self.topics: set[str] | None = None
        # Observations
        self.requests: list[ApnsRecord] = []
        self.connections: list[FakeApnsConnection] = []
        self.resets = 0  # connections reset by reset_ratio
        self.handshakes_untrusted = 0  # handshakes offered the untrusted certificate
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._server: asyncio.base_events.Server | None = None

    @property
    def endpoint(self) -> str:
        """``host:port``, the value for ``AppConfig.endpoint``."""
        return f"{self.host}:{self.port}"

    def set_outage(
        self,
        status: int = 503,
        reason: str = "ServiceUnavailable",
        retry_after: int | None = None,
    ) -> None:
        """Answer every request with this error until :meth:`end_outage`."""
        self.outage = (status, reason)
        self.outage_retry_after = retry_after

    def respond(self, token: str, status: int, reason: str, retry_after: int | None = None,
                ) -> None:
        """Answer requests for ``token`` with this error (and Retry-After header)."""
        self.responses[token] = (status, reason)
        if retry_after is None:
            self.retry_afters.pop(token, None)
        else:
            self.retry_afters[token] = retry_after

    def add_provider_key(self, key_id: str, team_id: str, public_key: Any) -> None:
        """Accept provider tokens signed by this key (from then on, only registered keys)."""
        if self.provider_keys is None:
            self.provider_keys = {}
        self.provider_keys[key_id] = (team_id, public_key)

    def now(self) -> float:
        """The fake's clock: real time plus :attr:`clock_offset`."""
        return time.time() + self.clock_offset

    def http_date(self) -> str:
        """The ``date`` header of a reply now."""
        return email.utils.formatdate(self.now(), usegmt=True)

    def end_outage(self) -> None:
        self.outage = None
        self.outage_retry_after = None

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[ApnsRecord]:
        """Wait until at least ``n`` requests were received; return all of them."""
        if len(self.requests) < n:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((n, future))
            try:
                await asyncio.wait_for(future, timeout)
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove((n, future))
        return self.requests

    async def start(self) -> None:
        ctx = self.ca.switchable_server_context(self._untrusted_now, None,
                                                verify_client=self.verify_client)
        self._server = await asyncio.get_running_loop().create_server(
            self._new_connection, self.host, self.port, ssl=ctx
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in self.connections:
            connection._close()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # internals

    def _new_connection(self) -> FakeApnsConnection:
        connection = FakeApnsConnection(self)
        self.connections.append(connection)
        return connection

    def _untrusted_now(self) -> bool:
        if self.untrusted:
            self.handshakes_untrusted += 1
        return self.untrusted

    def _reset_now(self) -> bool:
        """Whether to reset this request's connection: ``reset_ratio`` of them,
        evenly spread (deterministic, so that counts in tests are exact)."""
        if self.reset_ratio <= 0:
            return False
        self._reset_credit += self.reset_ratio
        if self._reset_credit >= 1.0:
            self._reset_credit -= 1.0
            return True
        return False

    def _record(self, record: ApnsRecord) -> None:
        self.requests.append(record)
        count = len(self.requests)
        for n, future in self._waiters:
            if count >= n and not future.done():
                future.set_result(None)

    def _authenticate(
        self, headers: dict[str, str], client_cert: dict[str, Any] | None
    ) -> tuple[int, str] | None:
        """Apple's provider checks (token or certificate, then topic): an error or None."""
        if self.provider_keys is not None:
            scheme, _, bearer = headers.get("authorization", "").partition(" ")
            if not bearer:
                if client_cert is None:
                    return 403, "MissingProviderToken"
            elif scheme.lower() != "bearer":
                return 403, "InvalidProviderToken"
            else:
                refused = self._check_jwt(bearer)
                if refused is not None:
                    return refused
        topic = headers.get("apns-topic")
        if self.topics is not None:
            if not topic:
                return 400, "MissingTopic"
            if topic not in self.topics:
                return 400, "TopicDisallowed"
        return None

    def _check_jwt(self, bearer: str) -> tuple[int, str] | None:
        assert self.provider_keys is not None
        try:
            key_id = str(jwt.get_unverified_header(bearer).get("kid"))
            team_id, public_key = self.provider_keys[key_id]
            claims = jwt.decode(bearer, public_key, algorithms=["ES256"],
                                options={"verify_exp": False, "verify_iat": False,
                                         "require": ["iss", "iat"]})
        except (jwt.PyJWTError, KeyError, TypeError):
            return 403, "InvalidProviderToken"
        if claims.get("iss") != team_id or not isinstance(claims.get("iat"), int):
            return 403, "InvalidProviderToken"
        age = self.now() - claims["iat"]
        if age > self.JWT_MAX_AGE:
            return 403, "ExpiredProviderToken"
        if age < -self.JWT_LEEWAY:
            return 403, "InvalidProviderToken"
        current = self._key_tokens.get(key_id)
        if current is None or current[0] != bearer:
            if (current is not None and self.min_token_interval is not None
                    and self.now() - current[1] < self.min_token_interval):
                return 429, "TooManyProviderTokenUpdates"
            self._key_tokens[key_id] = (bearer, self.now())
        return None

    def _decide(
        self, headers: dict[str, str], token: str, body: bytes
    ) -> tuple[int, str, int | None]:
        """(status, reason, retry_after) for one request, Apple's checks first."""
        if headers.get(":method") != "POST":
            return 405, "MethodNotAllowed", None
        if not token:
            return 404, "BadPath", None
        if self.outage is not None:
            return self.outage[0], self.outage[1], self.outage_retry_after
        if token in self.responses:
            status, reason = self.responses[token]
            return status, reason, self.retry_afters.get(token)
        if self.dead_token_prefix and token.startswith(self.dead_token_prefix):
            return 410, "Unregistered", None
        if not token.strip("0"):
            return 400, "BadDeviceToken", None
        if not body:
            return 400, "PayloadEmpty", None
        return 200, "", None


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeApns(TestCA(Path(args.ca_dir)), host=args.host, port=args.port)
    fake.dead_token_prefix = args.dead_prefix
    if args.log_requests:
        # One line per request with its CLOCK_MONOTONIC time: system-wide on
        # Linux, so another process can compute latencies against it.
        record = fake._record

        def record_and_log(entry: ApnsRecord) -> None:
            record(entry)
            print(f"REQ {entry.token} {entry.received:.6f}", flush=True)

        fake._record = record_and_log  # type: ignore[method-assign]
    async with fake:
        print(f"PORT {fake.port}", flush=True)
        if args.control:
            await serve_commands(_commands(fake))
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def _commands(fake: FakeApns) -> dict[str, Callable[[list[str]], str]]:
    """``--control``: faults from the test's process (fakes.control.FakeProcess)."""

    def untrusted(args: list[str]) -> str:
        fake.untrusted = args == ["on"]
        if fake.untrusted:  # as a server restarted with another certificate
            for connection in fake.connections:
                connection._close()
        return "OK"

    def reset(args: list[str]) -> str:
        fake.reset_ratio = float(args[0])
        return "OK"

    def stats(_: list[str]) -> str:
        count = len(fake.requests)
        fake.requests.clear()  # the fake's own memory stays flat too
        fake.connections = [c for c in fake.connections if not c.closed]
        return (f"requests={count} resets={fake.resets} "
                f"untrusted={fake.handshakes_untrusted}")

    return {"untrusted": untrusted, "reset": reset, "stats": stats}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake APNs (HTTP/2 over TLS) for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ca-dir", required=True, help="folder receiving ca.pem")
    parser.add_argument("--dead-prefix", default=None, help="tokens answered 410 Unregistered")
    parser.add_argument("--log-requests", action="store_true",
                        help="print 'REQ <token> <monotonic time>' for each request")
    parser.add_argument("--control", action="store_true",
                        help="take fault commands on stdin (fakes.control); stop at EOF")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
