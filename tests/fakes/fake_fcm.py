"""A protocol-faithful fake of the FCM HTTP v1 send endpoint.

Why a real server instead of mocks: the FCM provider's behaviour depends on
firebase-admin's httpx/HTTP/2 client, its error parsing (the ``details`` list
with an ``FcmError`` entry) and on how a batch turns into concurrent requests.
Only a server speaking TLS + HTTP/2 on a socket exercises all of that::

    async with FakeFcm(access_token="tok") as fake:
        app = AppConfig(id="fcm", type="fcm", project_id="p",
                        endpoint=fake.base_url, ca_file=str(fake.ca_file))
        ...
        fake.fail("dead-token", "UNREGISTERED")
        await fake.wait_for(3, timeout=5)
        fake.requests[0].message["token"]

What it serves: ``POST /v1/projects/<project>/messages:send`` with a JSON body
``{"message": {...}, "validate_only": bool?}``; 200 ``{"name":
"projects/<p>/messages/<id>"}`` on success. Errors use FCM's real body shape
(``{"error": {"code", "message", "status", "details": [{"@type":
"type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": ...}]}}``).

TLS with ALPN offering ``h2`` and ``http/1.1`` (server preference: h2). httpx
with ``http2=True`` offers both and gets h2; a client offering only
``http/1.1`` (or a fake started with ``alpn=("http/1.1",)``) is served over
HTTP/1.1 with ``h11``. Without ALPN the protocol is sniffed from the preface.

It also serves a Google OAuth2 token endpoint (``POST /token``, the JWT-bearer
grant a service-account credential makes), so a real service-account file
whose ``token_uri`` is :attr:`FakeFcm.token_url` works end to end offline.
Like Google's, it refuses (400 ``invalid_grant``) an assertion whose ``iat``/``exp``
are not a short-lived window around its clock and, once
:meth:`FakeFcm.add_service_account` registered accounts, one of an unknown
account ("account not found") or not signed by the account's key ("Invalid JWT
Signature.").

Faults from outside: :attr:`FakeFcm.untrusted` presents, on each new
handshake, a certificate of a CA the client does not trust; the :data:`DROP`
outage aborts each connection as its request arrives.

Like Google's, every reply carries a ``date`` header, from the fake's clock
(real time plus :attr:`FakeFcm.clock_offset`). :attr:`FakeFcm.issued_tokens`,
when set, are the registration tokens Google issued: a message (dry run or not)
to any other token is 400 INVALID_ARGUMENT "The registration token is not a
valid FCM registration token", which is what ``slixmpp-push doctor`` expects
for its probe. ``None`` (the default) treats every token as issued.

Standalone: ``python -m tests.fakes.fake_fcm --port N`` prints the port on the
first stdout line when ready, then ``ca_file=<path>``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import email.utils
import itertools
import json
import re
import shutil
import signal
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import h11
import jwt

from .control import serve_commands
from .tls import TestCA

__all__ = ["FCM_ERRORS", "ErrorSpec", "FakeFcm", "RecordedRequest"]

_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_SEND_PATH = re.compile(r"^/v1/projects/(?P<project>[^/]+)/messages:send$")
_TTL = re.compile(r"^\d+(\.\d{1,9})?s$")
_H2_PREFACE = b"PRI * HTTP/2.0"
#: FCM's documented limit on a message's payload.
MAX_PAYLOAD = 4096

#: FCM error code -> (HTTP status, google.rpc status, message), as FCM sends them.
FCM_ERRORS: dict[str, tuple[int, str, str]] = {
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": (
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute'.",
    ),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "INVALID_ARGUMENT": (
        400,
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
    ),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
}

#: Outage mode that aborts the TCP connection instead of answering.
DROP = "drop"


@dataclass(slots=True)
class ErrorSpec:
    """A scripted failure: an FCM error code (a key of :data:`FCM_ERRORS`) or :data:`DROP`.

    ``times``: how many requests it applies to (``None``: all of them).
    """

    code: str
    retry_after: str | None = None
    times: int | None = None

    def __post_init__(self) -> None:
        if self.code != DROP and self.code not in FCM_ERRORS:
            raise ValueError(f"unknown FCM error code {self.code!r}")

    def take(self) -> bool:
        """Use up one application; False once ``times`` is exhausted."""
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake received it (whatever it answered)."""

    method: str
    path: str
    project: str | None
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON (None when unparsable)
    time: float  # time.monotonic() when the request was complete
    http_version: str  # "2" or "1.1"
    connection: int  # connection number, from 1
    status: int = 0  # what the fake answered (0: dropped the connection)

    @property
    def message(self) -> dict[str, Any]:
        """The ``message`` object of the body (empty when absent)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("message"), dict):
            return self.body["message"]
        return {}

    @property
    def token(self) -> str | None:
        return self.message.get("token")

    @property
    def validate_only(self) -> bool:
        return bool(isinstance(self.body, dict) and self.body.get("validate_only"))

    @property
    def bearer(self) -> str | None:
        value = self.headers.get("authorization", "")
        return value[7:] if value.startswith("Bearer ") else None


@dataclass(slots=True)
class _Reply:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


_DROP_REPLY = _Reply(0, b"")


def _json_reply(status: int, obj: Any, extra: Iterable[tuple[str, str]] = ()) -> _Reply:
    headers = [("content-type", "application/json; charset=UTF-8"), *extra]
    return _Reply(status, json.dumps(obj).encode(), headers)


def _error_body(status: int, rpc_status: str, message: str, fcm_code: str | None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if fcm_code is not None:
        details: list[dict[str, Any]] = [{"@type": _FCM_ERROR_TYPE, "errorCode": fcm_code}]
        if fcm_code == "INVALID_ARGUMENT":
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [
                        {"field": "message.token", "description": "Invalid registration token"}
                    ],
                }
            )
        error["details"] = details
    return {"error": error}


class FakeFcm:
    """The fake server. Use as ``async with FakeFcm() as fake`` (or :meth:`start`/:meth:`stop`).

    ``projects``: accepted project ids (``None``: any). ``access_token``: the
    bearer token required (``None``: any non-empty bearer). ``latency``:
    seconds before every answer. ``ca``: share a :class:`TestCA` (else a
    throwaway one in a temporary folder). ``alpn``: protocols offered.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        projects: Iterable[str] | None = None,
        access_token: str | None = None,
        latency: float = 0.0,
        max_concurrent_streams: int = 100,
        alpn: Iterable[str] | None = ("h2", "http/1.1"),
        ca: TestCA | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.projects = set(projects) if projects is not None else None
        self.access_token = access_token
        self.latency = latency
        self.max_concurrent_streams = max_concurrent_streams
        self.alpn = list(alpn) if alpn else None
        self._tmpdir: str | None = None
        if ca is None:
            self._tmpdir = tempfile.mkdtemp(prefix="fake-fcm-")
            ca = TestCA(self._tmpdir)
        self.ca = ca
        self.errors: dict[str, ErrorSpec] = {}
        self.delays: dict[str, float] = {}
        self.outage: ErrorSpec | None = None
        self.requests: list[RecordedRequest] = []
        #: Requests to the OAuth2 token endpoint (not counted by :meth:`wait_for`).
        self.token_requests: list[RecordedRequest] = []
        #: Access token handed out by the token endpoint (default: ``access_token``).
        self.issued_token = access_token or "ya29.fake-access-token"
        self.token_expires_in = 3599
        self.token_latency = 0.0
        #: Registration tokens Google issued; None: every token is one.
        self.issued_tokens: set[str] | None = None
        #: client_email -> RSA public key of the service accounts that may get
        #: tokens; None: any well-formed assertion gets one.
        self.service_accounts: dict[str, Any] | None = None
        self.clock_offset = 0.0  # seconds the fake's clock is ahead of the real one
        #: Present, on each new handshake, a certificate the client does not trust.
        self.untrusted = False
        self.handshakes_untrusted = 0
        self.connections = 0
        self.alpn_selected: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._ids = itertools.count(1)
        self._changed: asyncio.Condition | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[_Connection] = set()

    # -- scripting -----------------------------------------------------------

    @property
    def base_url(self) -> str:
        """What the FCM provider's ``endpoint`` should be set to."""
        return f"https://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        """``token_uri`` for a service-account file that should get its tokens here."""
        return f"{self.base_url}/token"

    @property
    def ca_file(self) -> Path:
        """PEM of the CA that issued the fake's certificate."""
        return self.ca.ca_file

    def fail(
        self,
        token: str,
        code: str,
        *,
        retry_after: str | int | None = None,
        times: int | None = None,
    ) -> None:
        """Answer ``token`` with FCM error ``code`` (or :data:`DROP` the connection)."""
        ra = None if retry_after is None else str(retry_after)
        self.errors[token] = ErrorSpec(code, ra, times)

    def add_service_account(self, client_email: str, public_key: Any) -> None:
        """Hand out tokens to this account only for assertions signed with its key."""
        if self.service_accounts is None:
            self.service_accounts = {}
        self.service_accounts[client_email] = public_key

    def now(self) -> float:
        """The fake's clock: real time plus :attr:`clock_offset`."""
        return time.time() + self.clock_offset

    def set_outage(self, code: str | None, *, retry_after: str | int | None = None) -> None:
        """Fail every request with ``code`` (``"UNAVAILABLE"``, :data:`DROP`, ...); None ends it."""
        ra = None if retry_after is None else str(retry_after)
        self.outage = None if code is None else ErrorSpec(code, ra)

    def delay(self, token: str, seconds: float) -> None:
        """Hold the answer for ``token`` back by ``seconds`` (to provoke client timeouts)."""
        self.delays[token] = seconds

    @property
    def delivered(self) -> list[RecordedRequest]:
        """Requests answered 200 that were real sends (not ``validate_only``)."""
        return [r for r in self.requests if r.status == 200 and not r.validate_only]

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Wait until at least ``n`` requests were recorded; return them all."""
        assert self._changed is not None, "server not started"
        cond = self._changed
        try:
            async with asyncio.timeout(timeout):
                async with cond:
                    await cond.wait_for(lambda: len(self.requests) >= n)
        except TimeoutError:
            raise TimeoutError(
                f"fake FCM got {len(self.requests)} requests, expected {n} within {timeout}s"
            ) from None
        return list(self.requests)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> Self:
        self._changed = asyncio.Condition()
        ctx = self.ca.switchable_server_context(self._untrusted_now, self.alpn)
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self), self.host, self.port, ssl=ctx
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for handler in list(self._handlers):
                handler.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the endpoint --------------------------------------------------------

    def _untrusted_now(self) -> bool:
        if self.untrusted:
            self.handshakes_untrusted += 1
        return self.untrusted

    def _opened(self) -> None:
        """A request started arriving (counts towards :attr:`max_in_flight`)."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _finished(self) -> None:
        """A request was answered, reset or lost with its connection."""
        self.in_flight -= 1

    async def _handle(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
        http_version: str,
        connection: int,
    ) -> _Reply:
        """Answer one complete request the way FCM would; record it."""
        if path == "/token":
            return self._dated(await self._token(method, headers, raw, http_version, connection))
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        match = _SEND_PATH.match(path.split("?", 1)[0])
        rec = RecordedRequest(
            method=method,
            path=path,
            project=match["project"] if match else None,
            headers=headers,
            body=body,
            time=time.monotonic(),
            http_version=http_version,
            connection=connection,
        )
        reply = self._dated(await self._answer(rec, match))
        rec.status = reply.status
        self.requests.append(rec)
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()
        return reply

    def _dated(self, reply: _Reply) -> _Reply:
        """Google's ``date`` header, from the fake's clock, on every reply but a drop."""
        if reply is not _DROP_REPLY:
            reply.headers.append(("date", email.utils.formatdate(self.now(), usegmt=True)))
        return reply

    async def _answer(self, rec: RecordedRequest, match: re.Match[str] | None) -> _Reply:
        if self.latency:
            await asyncio.sleep(self.latency)
        if match is None:
            return _json_reply(404, _error_body(404, "NOT_FOUND", "Not Found", None))
        if rec.method != "POST":
            return _json_reply(
                405, _error_body(405, "METHOD_NOT_ALLOWED", "Method Not Allowed", None)
            )
        bearer = rec.bearer
        if not bearer or (self.access_token is not None and bearer != self.access_token):
            return _json_reply(
                401,
                _error_body(
                    401,
                    "UNAUTHENTICATED",
                    "Request is missing required authentication credential. Expected OAuth 2 "
                    "access token, login cookie or other valid authentication credential.",
                    None,
                ),
                [("www-authenticate", 'Bearer realm="https://accounts.google.com/"')],
            )
        if self.projects is not None and rec.project not in self.projects:
            return _json_reply(
                404, _error_body(404, "NOT_FOUND", "Requested entity was not found.", None)
            )
        problem = self._validate(rec.body)
        if problem:
            return _json_reply(400, _error_body(400, "INVALID_ARGUMENT", problem, None))
        token = rec.message.get("token")
        if token in self.delays:
            await asyncio.sleep(self.delays[token])
        spec = self.outage
        if spec is None and token in self.errors and self.errors[token].take():
            spec = self.errors[token]
        if spec is not None:
            if spec.code == DROP:
                return _DROP_REPLY
            status, rpc, text = FCM_ERRORS[spec.code]
            extra = [("retry-after", spec.retry_after)] if spec.retry_after is not None else []
            return _json_reply(status, _error_body(status, rpc, text, spec.code), extra)
        if token is not None and self.issued_tokens is not None and token not in self.issued_tokens:
            status, rpc, text = FCM_ERRORS["INVALID_ARGUMENT"]
            return _json_reply(status, _error_body(status, rpc, text, "INVALID_ARGUMENT"))
        if rec.validate_only:
            return _json_reply(200, {"name": f"projects/{rec.project}/messages/fake_message_id"})
        return _json_reply(200, {"name": f"projects/{rec.project}/messages/0:{next(self._ids)}"})

    async def _token(
        self, method: str, headers: dict[str, str], raw: bytes, http_version: str, connection: int
    ) -> _Reply:
        """Google's OAuth2 token endpoint, JWT-bearer grant (what service accounts use)."""
        form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode(errors="replace")).items()}
        claims: Any = None
        with contextlib.suppress(ValueError, IndexError):
            segment = form.get("assertion", "").split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        rec = RecordedRequest(
            method,
            "/token",
            None,
            headers,
            {"form": form, "claims": claims},
            time.monotonic(),
            http_version,
            connection,
        )
        if self.token_latency:
            await asyncio.sleep(self.token_latency)
        ok = (
            method == "POST"
            and form.get("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer"
            and isinstance(claims, dict)
        )
        refused = self._check_assertion(form.get("assertion", ""), claims) if ok else None
        if refused is not None:
            reply = _json_reply(400, {"error": "invalid_grant", "error_description": refused})
        elif ok:
            reply = _json_reply(
                200,
                {
                    "access_token": self.issued_token,
                    "expires_in": self.token_expires_in,
                    "token_type": "Bearer",
                },
            )
        else:
            reply = _json_reply(
                400, {"error": "invalid_grant", "error_description": "Invalid JWT assertion."}
            )
        rec.status = reply.status
        self.token_requests.append(rec)
        return reply

    def _check_assertion(self, assertion: str, claims: dict[str, Any]) -> str | None:
        """Google's checks of a service account's JWT: the refusal's description, or None."""
        iat, exp = claims.get("iat"), claims.get("exp")
        now = self.now()
        if (
            not isinstance(iat, int)
            or not isinstance(exp, int)
            or exp - iat > 3600
            or exp <= now
            or iat > now + 300  # Google's tolerance is undocumented; the fake allows 5 min
        ):
            return (
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim."
            )
        if self.service_accounts is None:
            return None
        public_key = self.service_accounts.get(str(claims.get("iss")))
        if public_key is None:
            return "Invalid grant: account not found"
        try:
            jwt.decode(
                assertion,
                public_key,
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_iat": False, "verify_aud": False},
            )
        except jwt.PyJWTError:
            return "Invalid JWT Signature."
        return None

    @staticmethod
    def _validate(body: Any) -> str | None:
        """The checks FCM makes that a client library can get wrong."""
        if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
            return "Invalid JSON payload received. Expected a 'message' object."
        message = body["message"]
        targets = [k for k in ("token", "topic", "condition", "fid") if message.get(k)]
        if len(targets) != 1:
            return "Exactly one of token, topic, condition or fid must be set."
        data = message.get("data", {})
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            return "Invalid value at 'message.data': values must be strings."
        payload = len(json.dumps(data, separators=(",", ":")).encode())
        notification = message.get("android", {}).get("notification") or {}
        payload += len(json.dumps(notification, separators=(",", ":")).encode())
        if payload > MAX_PAYLOAD:
            return "Message is too big"
        android = message.get("android", {})
        if not isinstance(android, dict):
            return "Invalid value at 'message.android'."
        priority = android.get("priority")
        if priority is not None and str(priority).upper() not in ("HIGH", "NORMAL"):
            return f"Invalid value at 'message.android.priority' ({priority!r})"
        ttl = android.get("ttl")
        if ttl is not None and not (isinstance(ttl, str) and _TTL.match(ttl)):
            return f"Invalid value at 'message.android.ttl' ({ttl!r})"
        return None


class _Connection(asyncio.Protocol):
    """One TLS connection; picks HTTP/2 or HTTP/1.1 from ALPN (or the preface)."""

    def __init__(self, fake: FakeFcm) -> None:
        self.fake = fake
        self.transport: asyncio.Transport | None = None
        self.number = 0
        self.proto: _H2 | _H11 | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.fake.connections += 1
        self.number = self.fake.connections
        self.fake._handlers.add(self)
        ssl_object = transport.get_extra_info("ssl_object")
        selected = ssl_object.selected_alpn_protocol() if ssl_object else None
        self.fake.alpn_selected.append(selected)
        if selected == "h2":
            self.proto = _H2(self)
        elif selected == "http/1.1":
            self.proto = _H11(self)

    def data_received(self, data: bytes) -> None:
        if self.proto is None:  # no ALPN: sniff the HTTP/2 preface
            self.proto = _H2(self) if data.startswith(_H2_PREFACE[: len(data)]) else _H11(self)
        self.proto.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fake._handlers.discard(self)
        for task in self.tasks:
            task.cancel()
        if self.proto is not None:
            self.proto.lost()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _H2:
    """HTTP/2 side of a connection, with flow control honoured both ways."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: conn.fake.max_concurrent_streams
            },
        )
        self.h2.initiate_connection()
        self.streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        self.open: set[int] = set()  # streams not answered yet
        self.window_open = asyncio.Event()
        conn.write(self.h2.data_to_send())

    def wake(self) -> None:
        self.window_open.set()

    def done(self, sid: int) -> None:
        if sid in self.open:
            self.open.discard(sid)
            self.conn.fake._finished()

    def lost(self) -> None:
        for sid in list(self.open):
            self.done(sid)
        self.wake()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.conn.write(self.h2.data_to_send())
            self.conn.abort()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                headers = {str(k).lower(): str(v) for k, v in event.headers or []}
                self.streams[event.stream_id or 0] = (headers, bytearray())
                self.open.add(event.stream_id or 0)
                self.conn.fake._opened()
            elif isinstance(event, h2.events.DataReceived):
                sid = event.stream_id or 0
                if sid in self.streams:
                    self.streams[sid][1].extend(event.data or b"")
                # Give the credit back, or the client stalls after 64 KiB of bodies.
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0, sid)
            elif isinstance(event, h2.events.StreamEnded):
                sid = event.stream_id or 0
                if sid in self.streams:
                    headers, body = self.streams.pop(sid)
                    self.conn.spawn(self._serve(sid, headers, bytes(body)))
            elif isinstance(event, h2.events.StreamReset):
                self.streams.pop(event.stream_id or 0, None)
                self.done(event.stream_id or 0)
                self.wake()
            elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                self.wake()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.conn.write(self.h2.data_to_send())
                if self.conn.transport is not None:
                    self.conn.transport.close()
        self.conn.write(self.h2.data_to_send())

    async def _serve(self, sid: int, headers: dict[str, str], body: bytes) -> None:
        try:
            await self._serve_stream(sid, headers, body)
        finally:
            self.done(sid)

    async def _serve_stream(self, sid: int, headers: dict[str, str], body: bytes) -> None:
        reply = await self.conn.fake._handle(
            headers.get(":method", ""),
            headers.get(":path", ""),
            headers,
            body,
            "2",
            self.conn.number,
        )
        if reply is _DROP_REPLY:
            self.conn.abort()
            return
        try:
            self.h2.send_headers(
                sid,
                [
                    (":status", str(reply.status)),
                    ("content-length", str(len(reply.body))),
                    *reply.headers,
                ],
            )
            await self._send_body(sid, reply.body)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass  # the client reset the stream (e.g. it timed out)
        self.conn.write(self.h2.data_to_send())

    async def _send_body(self, sid: int, data: bytes) -> None:
        while True:
            window = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if window >= len(data) or (window > 0 and data):
                chunk, data = data[:window], data[window:]
                self.h2.send_data(sid, chunk, end_stream=not data)
                self.conn.write(self.h2.data_to_send())
                if not data:
                    return
                continue
            if self.conn.transport is None or self.conn.transport.is_closing():
                return
            self.window_open.clear()
            await self.window_open.wait()


class _H11:
    """HTTP/1.1 side of a connection (one request at a time, keep-alive)."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.h11 = h11.Connection(h11.SERVER)
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.busy = False
        self.open = False  # a request is being received or answered

    def data_received(self, data: bytes) -> None:
        self.h11.receive_data(data)
        self._pump()

    def _pump(self) -> None:
        while not self.busy:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError:
                self.conn.abort()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.request, self.body = event, bytearray()
                self.open = True
                self.conn.fake._opened()
            elif isinstance(event, h11.Data):
                self.body.extend(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.busy = True
                self.conn.spawn(self._serve())
            elif isinstance(event, h11.ConnectionClosed):
                if self.conn.transport is not None:
                    self.conn.transport.close()
                return

    def lost(self) -> None:
        if self.open:
            self.open = False
            self.conn.fake._finished()

    async def _serve(self) -> None:
        try:
            await self._serve_request()
        finally:
            self.lost()

    async def _serve_request(self) -> None:
        request = self.request
        assert request is not None
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        reply = await self.conn.fake._handle(
            request.method.decode(),
            request.target.decode(),
            headers,
            bytes(self.body),
            "1.1",
            self.conn.number,
        )
        if reply is _DROP_REPLY:
            self.conn.abort()
            return
        out = self.h11.send(
            h11.Response(
                status_code=reply.status,
                headers=[("content-length", str(len(reply.body))), *reply.headers],
            )
        )
        out = (out or b"") + (self.h11.send(h11.Data(data=reply.body)) or b"")
        out += self.h11.send(h11.EndOfMessage()) or b""
        self.conn.write(out)
        if self.h11.our_state is h11.MUST_CLOSE:
            if self.conn.transport is not None:
                self.conn.transport.close()
            return
        self.h11.start_next_cycle()
        self.busy = False
        self._pump()


async def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--project", action="append", help="accepted project id (repeatable)")
    parser.add_argument("--token", help="required bearer token (default: any)")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--control", action="store_true",
                        help="take fault commands on stdin (fakes.control); stop at EOF")
    args = parser.parse_args(argv)
    async with FakeFcm(
        host=args.host,
        port=args.port,
        projects=args.project,
        access_token=args.token,
        latency=args.latency,
    ) as fake:
        print(fake.port, flush=True)
        print(f"ca_file={fake.ca_file}", flush=True)
        if args.control:
            await serve_commands(_commands(fake))
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def _commands(fake: FakeFcm) -> dict[str, Callable[[list[str]], str]]:
    """``--control``: faults from the test's process (fakes.control.FakeProcess)."""

    def untrusted(args: list[str]) -> str:
        fake.untrusted = args == ["on"]
        if fake.untrusted:  # as a server restarted with another certificate
            for handler in list(fake._handlers):
                handler.abort()
        return "OK"

    def drop(args: list[str]) -> str:
        fake.set_outage(DROP if args == ["on"] else None)
        return "OK"

    def stats(_: list[str]) -> str:
        dropped = sum(1 for r in fake.requests if r.status == 0)
        count = len(fake.requests)
        fake.requests.clear()  # the fake's own memory stays flat too
        return f"requests={count} dropped={dropped} untrusted={fake.handshakes_untrusted}"

    return {"untrusted": untrusted, "drop": drop, "stats": stats}


if __name__ == "__main__":
    asyncio.run(_main())
