"""Apple Push Notification service (APNs) provider, on aioapns.

One :class:`ApnsProvider` per configured app (bundle id). :meth:`ApnsProvider.send`
is the only network call; Apple's answer becomes a
:class:`~slixmpp_push.errors.DeliveryResult` through the policy table in the
class constants (what counts as a dead token, what is worth retrying).

aioapns is used as is, except for one protocol subclass (:class:`ApnsClientProtocol`)
set on the client's connection pool, which

- connects to ``endpoint`` ("host:port") instead of Apple when configured
  (aioapns has no host/port argument: they are protocol class attributes);
- returns HTTP/2 flow-control credit, which stock aioapns never does (see
  :class:`_CreditReturningH2Connection`);
- releases the HTTP/2 stream of a request abandoned by our timeout, and
  forgets finished streams (stock aioapns keeps one entry per successful push
  for the life of the connection);
- remembers the last ``Date`` response header and why the connection was lost,
  for :meth:`ApnsProvider.probe` (``slixmpp-push doctor``).

Config keys used (``AppConfig``): ``topic``, ``sandbox``, ``key_file`` +
``key_id`` + ``team_id`` (token auth) or ``cert_file`` (certificate auth),
``max_connections``, ``endpoint``, ``ca_file``, ``timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from aioapns import APNs, NotificationRequest, PushType
from aioapns.common import NotificationResult
from aioapns.connection import APNsTLSClientProtocol
from aioapns.exceptions import ConnectionClosed, MaxAttemptsExceeded
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived
from h2.exceptions import ProtocolError

from ..errors import ConfigError, DeliveryResult, Outcome
from .base import ApnsRequest, ProbeResult, ProbeStatus, Provider, PushRequest, clock_offset

if TYPE_CHECKING:
    from h2.events import Event
    from typing_extensions import Buffer

    from ..config import AppConfig

__all__ = ["ApnsClientProtocol", "ApnsProvider"]

log = logging.getLogger(__name__)

PRODUCTION_HOST = "api.push.apple.com"
SANDBOX_HOST = "api.development.push.apple.com"
APNS_PORT = 443


class ApnsProvider(Provider):
    """Delivers :class:`~slixmpp_push.providers.base.ApnsRequest` to APNs.

    Token auth (``key_file``/``key_id``/``team_id``, a .p8 key signing ES256
    JWTs) or certificate auth (``cert_file``, one PEM with certificate and
    key). The aioapns client is created in :meth:`start`, inside the running
    loop (it captures the loop). Connections are opened lazily, at most
    ``max_connections``, and reused (Apple treats rapid reconnects as abuse).
    """

    kind = "apns"

    # Policy. Apple's reasons: "Handling notification responses from APNs".
    #: Any 410 means the token is no longer active for the topic
    #: (Unregistered, ExpiredToken): drop the registration.
    DEAD_TOKEN_STATUSES: ClassVar[frozenset[int]] = frozenset({410})
    #: 400s that also condemn the token: it is malformed or belongs to another app.
    DEAD_TOKEN_ERRORS: ClassVar[frozenset[tuple[int, str]]] = frozenset(
        {
            (400, "BadDeviceToken"),
            (400, "DeviceTokenNotForTopic"),
            (400, "TopicDisallowed"),
        }
    )
    #: Throttling (429) and Apple's own trouble (5xx): try again later.
    RETRY_STATUSES: ClassVar[frozenset[int]] = frozenset({429, 500, 502, 503, 504})
    #: Our JWT was stale or refused: not the device's fault, aioapns signs a
    #: fresh one on a new connection, so keep the token and retry.
    RETRY_ERRORS: ClassVar[frozenset[tuple[int, str]]] = frozenset(
        {(403, "ExpiredProviderToken"), (403, "InvalidProviderToken")}
    )
    #: Transport trouble: no answer within ``timeout``, connection refused or lost.
    RETRY_EXCEPTIONS: ClassVar[tuple[type[BaseException], ...]] = (
        TimeoutError,  # asyncio.wait_for (asyncio.TimeoutError is an alias)
        ApnsConnectionError,
        ConnectionClosed,
        MaxAttemptsExceeded,
        ProtocolError,  # h2: FlowControlError, NoAvailableStreamIDError, ...
        OSError,  # socket and TLS errors
    )
    #: Characters of a device token that may appear in logs.
    LOG_TOKEN_CHARS: ClassVar[int] = 8

    # The probe (``slixmpp-push doctor``): one background push to a token no
    # device can have. Apple checks the provider token (or certificate) and the
    # topic first, then the device token: 32 zero bytes are no token Apple
    # issued, so the expected answer is 400 BadDeviceToken, which proves that
    # key, team and topic were accepted, and no phone shows anything.
    PROBE_TOKEN: ClassVar[str] = "0" * 64
    _KEY_FIX: ClassVar[str] = (
        "check key_id (the 10-character id of this .p8 key, developer.apple.com > Keys) and "
        "team_id (Membership > Team ID); a revoked key, or a key created for the other "
        "environment (set environment), is refused the same way, and so is a JWT signed "
        "with a wrong clock (see the clock check)"
    )
    _TOPIC_FIX: ClassVar[str] = (
        "topic must be the iOS app's bundle id, of an app of this team (with a "
        "topic-specific key or a certificate: the bundle id it was created for)"
    )
    #: Apple's answers to the probe: (status, reason) -> (verdict, meaning, fix).
    #: Any 410 also passes; other answers fail as "unexpected".
    PROBE_VERDICTS: ClassVar[Mapping[tuple[int, str], tuple[ProbeStatus, str, str]]] = {
        (400, "BadDeviceToken"): (ProbeStatus.PASS, "credentials and topic accepted", ""),
        (403, "InvalidProviderToken"): (
            ProbeStatus.FAIL, "Apple refused the provider token (key, key_id or team_id)",
            _KEY_FIX),
        (403, "ExpiredProviderToken"): (
            ProbeStatus.FAIL, "Apple says the provider token is older than 1 hour",
            "set this machine's clock right (NTP: timedatectl set-ntp true; see the clock "
            "check)"),
        (403, "MissingProviderToken"): (
            ProbeStatus.FAIL, "Apple got neither a provider token nor a client certificate",
            "set key_file, key_id and team_id (token auth) or cert_file"),
        (403, "BadCertificate"): (
            ProbeStatus.FAIL, "Apple refused the client certificate",
            "cert_file must hold an APNs certificate from developer.apple.com > Certificates "
            "and its private key; or use token auth (key_file), which does not expire"),
        (403, "BadCertificateEnvironment"): (
            ProbeStatus.FAIL, "the client certificate is for the other environment",
            "set environment (\"sandbox\" or \"production\") to the certificate's"),
        (400, "TopicDisallowed"): (ProbeStatus.FAIL, "Apple refused the topic", _TOPIC_FIX),
        (400, "BadTopic"): (ProbeStatus.FAIL, "Apple refused the topic", _TOPIC_FIX),
        (400, "MissingTopic"): (ProbeStatus.FAIL, "Apple refused the topic", _TOPIC_FIX),
        (400, "DeviceTokenNotForTopic"): (ProbeStatus.FAIL, "Apple refused the topic",
                                          _TOPIC_FIX),
        (429, "TooManyProviderTokenUpdates"): (
            ProbeStatus.FAIL, "Apple throttles this key: new provider tokens too often",
            "another process signs with this key in a tight loop (restarts?); try again "
            "in 20 minutes"),
    }

    def __init__(self, app: AppConfig) -> None:
        super().__init__(app)
        self._check_config()
        self.host, self.port = self._address()
        self._client: APNs | None = None

    @property
    def client(self) -> APNs | None:
        """The aioapns client once started (for diagnostics and tests)."""
        return self._client

    async def start(self) -> None:
        """Load the credentials and build the aioapns client (no connection yet)."""
        app = self.app
        ssl_context = self._ssl_context()
        try:
            if app.cert_file:
                # aioapns loads the client certificate into ssl_context itself.
                client = APNs(
                    client_cert=app.cert_file,
                    topic=app.topic,
                    max_connections=app.max_connections,
                    use_sandbox=app.sandbox,
                    ssl_context=ssl_context,
                    err_func=_no_error_log,
                )
            else:
                client = APNs(
                    key=self._read_key(),
                    key_id=app.key_id,
                    team_id=app.team_id,
                    topic=app.topic,
                    max_connections=app.max_connections,
                    use_sandbox=app.sandbox,
                    ssl_context=ssl_context,
                    err_func=_no_error_log,
                )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            key = "cert_file" if app.cert_file else "key_file"
            raise ConfigError(self._key(key), f"cannot load: {exc}") from exc
        client.pool.protocol_class = ApnsClientProtocol.for_address(self.host, self.port)
        self._client = client

    async def close(self) -> None:
        if self._client is not None:
            self._client.pool.close()
            self._client = None

    async def send(self, request: PushRequest) -> DeliveryResult:
        """Send one notification; every expected failure comes back as a result."""
        if not isinstance(request, ApnsRequest):
            raise TypeError(f"ApnsProvider cannot send {type(request).__name__}")
        if self._client is None:
            raise RuntimeError("ApnsProvider.send() before start()")
        token = self._short(request.token)
        try:
            push_type = PushType(request.push_type)
        except ValueError:
            log.warning("APNs %s: unknown push type %r", token, request.push_type)
            return DeliveryResult(Outcome.REJECTED, reason="BadPushType")
        notification = NotificationRequest(
            device_token=request.token,
            message=request.payload,
            time_to_live=_AbsoluteExpiration(request.expiration),
            priority=request.priority,
            collapse_key=request.collapse_id,
            push_type=push_type,
            apns_topic=request.topic or None,
        )
        try:
            result = await asyncio.wait_for(
                self._client.send_notification(notification), self.app.timeout
            )
        except self.RETRY_EXCEPTIONS as exc:
            reason = "Timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            log.info("APNs %s: %s, will retry", token, reason)
            return DeliveryResult(Outcome.RETRY, reason=reason)
        delivery = self.classify(result)
        log.log(
            logging.DEBUG if delivery.ok else logging.INFO,
            "APNs %s: %s %s -> %s",
            token,
            result.status,
            result.description or "",
            delivery.outcome.value,
        )
        return delivery

    async def probe(self, timeout: float) -> ProbeResult:
        """One background push to :attr:`PROBE_TOKEN` through aioapns, on a
        connection of its own so that a failure to connect is named (the pool
        would retry it for seconds and log only "could not connect")."""
        if self._client is None:
            raise RuntimeError("ApnsProvider.probe() before start()")
        where = f"{self.host}:{self.port}"
        pool = self._client.pool
        try:
            connection = await asyncio.wait_for(pool.create_connection(), timeout)
        except TimeoutError:
            return ProbeResult(ProbeStatus.FAIL,
                               f"no TLS connection to {where} within {timeout:g} s",
                               "a firewall drops the traffic? outbound TCP 443 to "
                               f"{self.host} must be allowed")
        except OSError as exc:
            return self._connect_failure(where, exc)
        if not (isinstance(connection, ApnsClientProtocol) and connection.lost):
            pool.connections.append(connection)  # as pool.acquire() does: forgotten on close
        notification = NotificationRequest(
            device_token=self.PROBE_TOKEN,
            message={"aps": {"content-available": 1}},
            time_to_live=_AbsoluteExpiration(0),  # never stored for later delivery
            priority=5,  # background pushes must be 5
            push_type=PushType.BACKGROUND,
            apns_topic=self.app.topic,
        )
        try:
            result = await asyncio.wait_for(connection.send_notification(notification), timeout)
        except TimeoutError:
            return ProbeResult(ProbeStatus.FAIL,
                               f"connected to {where}, but no answer within {timeout:g} s",
                               f"is {where} an APNs server? (endpoint)")
        except (ConnectionClosed, ProtocolError, OSError) as exc:
            lost = getattr(connection, "lost_with", None) or exc
            why = f": {_describe(lost)}" if isinstance(lost, ssl.SSLError) else ""
            if self.app.cert_file:
                # With TLS 1.3 the server checks our certificate after the handshake
                # looked complete, and its alert reaches asyncio as a bare EOF.
                return ProbeResult(ProbeStatus.FAIL,
                                   f"{where} closed the connection without answering: the "
                                   f"client certificate was refused (expired, revoked or not "
                                   f"issued by Apple){why}",
                                   "see the credentials check; renew cert_file "
                                   "(developer.apple.com > Certificates) or use token auth")
            return ProbeResult(ProbeStatus.FAIL,
                               f"{where} closed the connection without answering{why}",
                               f"is {where} an APNs server? (endpoint)")
        offset = None
        if isinstance(connection, ApnsClientProtocol) and connection.last_date is not None:
            offset = clock_offset(*connection.last_date)
        return self.judge_probe(result, offset)

    def judge_probe(self, result: NotificationResult, offset: float | None) -> ProbeResult:
        """Apple's answer to the probe as a verdict (pure; see :attr:`PROBE_VERDICTS`)."""
        status = str(result.status)
        reason = result.description or ""
        answer = f"{status} {reason}".strip()
        auth = (f"certificate {Path(self.app.cert_file).name}" if self.app.cert_file
                else f"key {self.app.key_id} of team {self.app.team_id}")
        about = f"topic {self.app.topic}, {auth}, {'sandbox' if self.app.sandbox else 'production'}"
        if status == "200":
            return ProbeResult(ProbeStatus.WARN,
                               f"{self.host}:{self.port} accepted a push to a token that cannot "
                               f"exist (200): is it really APNs? ({about})",
                               "check endpoint: unset it to reach Apple", offset)
        try:
            code = int(status)
        except ValueError:
            code = 0
        verdict = self.PROBE_VERDICTS.get((code, reason))
        if verdict is None and code == 410:
            verdict = self.PROBE_VERDICTS[(400, "BadDeviceToken")]
        if verdict is None:
            if code >= 500:
                return ProbeResult(ProbeStatus.FAIL, f"Apple is unavailable ({answer}): "
                                   "credentials not verified", "try again later", offset)
            return ProbeResult(ProbeStatus.FAIL, f"unexpected answer {answer} ({about})",
                               "see docs/providers.md#apns-answers", offset)
        verdict_status, meaning, fix = verdict
        if verdict_status is ProbeStatus.PASS:
            return ProbeResult(verdict_status, f"{meaning} ({about}): the test token got "
                               f"{answer}, as expected", "", offset)
        return ProbeResult(verdict_status, f"{meaning}: {answer} ({about})", fix, offset)

    def _connect_failure(self, where: str, exc: OSError) -> ProbeResult:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return ProbeResult(
                ProbeStatus.FAIL,
                f"TLS: the certificate of {where} is not trusted ({exc.verify_message})",
                "with endpoint set, ca_file must hold that server's CA; for Apple, update the "
                "system CA certificates (Apple moved to the USERTrust RSA root in 2025) or "
                "look for a TLS-intercepting proxy")
        if isinstance(exc, ssl.SSLError):
            return ProbeResult(ProbeStatus.FAIL,
                               f"TLS handshake with {where} failed: {_describe(exc)}",
                               "is endpoint an APNs server? with cert_file: see the "
                               "credentials check")
        if isinstance(exc, socket.gaierror):
            return ProbeResult(ProbeStatus.FAIL, f"cannot resolve {self.host}: {exc.strerror}",
                               "check DNS on this machine (and endpoint)")
        if isinstance(exc, ConnectionRefusedError):
            return ProbeResult(ProbeStatus.FAIL, f"connection refused by {where}",
                               "nothing listens there: check endpoint (unset, Apple's "
                               "host is used)")
        return ProbeResult(ProbeStatus.FAIL, f"cannot connect to {where}: {_describe(exc)}",
                           f"outbound TCP {self.port} to {self.host} must be allowed")

    # policy (pure)

    @classmethod
    def classify(cls, result: NotificationResult) -> DeliveryResult:
        """Map one APNs answer to a :class:`DeliveryResult`, by the policy constants.

        aioapns does not expose response headers, so ``retry_after`` stays
        ``None`` (Apple does not document a Retry-After for APNs anyway).
        """
        reason = result.description or ""
        message_id = result.notification_id or None
        try:
            status = int(result.status)
        except (TypeError, ValueError):  # no usable :status: a confused connection
            return DeliveryResult(Outcome.RETRY, reason=reason, message_id=message_id)
        if status == 200:
            outcome = Outcome.DELIVERED
        elif status in cls.DEAD_TOKEN_STATUSES or (status, reason) in cls.DEAD_TOKEN_ERRORS:
            outcome = Outcome.DEAD_TOKEN
        elif (
            status in cls.RETRY_STATUSES
            or status >= 500
            or (status, reason) in cls.RETRY_ERRORS
        ):
            outcome = Outcome.RETRY
        else:  # 413 PayloadTooLarge, BadTopic, BadExpirationDate, MissingTopic, ...
            outcome = Outcome.REJECTED
        return DeliveryResult(outcome, status=status, reason=reason, message_id=message_id)

    # configuration

    def _key(self, name: str) -> str:
        return f"apps.{self.app.id}.{name}"

    def _check_config(self) -> None:
        app = self.app
        if not app.topic:
            raise ConfigError(self._key("topic"), "the app's bundle id is required for APNs")
        if app.cert_file and app.key_file:
            raise ConfigError(self._key("cert_file"), "set either cert_file or key_file, not both")
        if not app.cert_file:
            for name in ("key_file", "key_id", "team_id"):
                if not getattr(app, name):
                    raise ConfigError(
                        self._key(name),
                        "required for token auth (or set cert_file for certificate auth)",
                    )
        if app.max_connections < 1:
            raise ConfigError(self._key("max_connections"), "must be at least 1")
        if app.timeout <= 0:
            raise ConfigError(self._key("timeout"), "must be a positive number of seconds")

    def _address(self) -> tuple[str, int]:
        """(host, port): ``endpoint`` if set, else Apple's production or sandbox host."""
        endpoint = self.app.endpoint
        if not endpoint:
            return (SANDBOX_HOST if self.app.sandbox else PRODUCTION_HOST), APNS_PORT
        host, sep, port = endpoint.rpartition(":")
        host = host.strip("[]")  # "[::1]:2197"
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(self._key("endpoint"), f"expected host:port, got {endpoint!r}")
        return host, int(port)

    def _ssl_context(self) -> ssl.SSLContext | None:
        """A context trusting ``ca_file`` only, or None for aioapns's default."""
        if not self.app.ca_file:
            return None
        try:
            return ssl.create_default_context(cafile=self.app.ca_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(self._key("ca_file"), f"cannot load: {exc}") from exc

    def _read_key(self) -> str:
        """The .p8 key as PEM text (aioapns wants the text, not a path), checked now."""
        assert self.app.key_file is not None
        try:
            pem = Path(self.app.key_file).read_text()
        except OSError as exc:
            raise ConfigError(self._key("key_file"), f"cannot read: {exc.strerror}") from exc
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            key = load_pem_private_key(pem.encode(), password=None)
        except ValueError as exc:
            raise ConfigError(self._key("key_file"), "not a PEM private key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(self._key("key_file"), "APNs keys are EC P-256 (ES256)")
        return pem

    @classmethod
    def _short(cls, token: str) -> str:
        """A token prefix for logs: enough to correlate, useless to push with."""
        return token[: cls.LOG_TOKEN_CHARS] + "…"


class _AbsoluteExpiration(int):
    """An absolute ``apns-expiration`` that passes through aioapns unchanged.

    aioapns only accepts a relative ``time_to_live`` and writes
    ``int(time.time()) + time_to_live`` when it builds the headers, which may
    be seconds after we would have computed the difference (waiting for a
    connection or a free stream). When the right operand's type is a subclass
    of the left's, Python calls its reflected method first, so
    ``now + _AbsoluteExpiration(t)`` is exactly ``t``: the header is the
    request's absolute expiration, 0 ("try once, do not store") included.
    """

    def __radd__(self, other: int) -> int:
        return int(self)


def _describe(exc: BaseException) -> str:
    """An exception as a short phrase (an SSL error's reason, else its text)."""
    reason = getattr(exc, "reason", None)
    if isinstance(exc, ssl.SSLError) and reason:
        return str(reason)
    return str(exc) or type(exc).__name__


async def _no_error_log(request: NotificationRequest, result: NotificationResult) -> None:
    """Replaces aioapns's per-failure ERROR log: ApnsProvider logs outcomes itself."""


def _discard_if_held(discard: Callable[[Any], object], connection: Any) -> None:
    with contextlib.suppress(ValueError):  # list.remove of a connection never added
        discard(connection)


class _CreditReturningH2Connection(H2Connection):
    """An h2 client connection that hands flow-control credit back at once.

    Why: stock aioapns never calls ``acknowledge_received_data``, so every byte
    of every error body (410, 400 ...) permanently shrinks the connection's
    64 KiB receive window. After ~1,300 error replies on one connection APNs
    cannot send any more, and those requests hang until aioapns's 10 s idle
    timer reconnects. aioapns consumes DATA synchronously as it is parsed, so
    the credit can be returned as soon as h2 has processed the frames; the
    WINDOW_UPDATE frames go out with the protocol's next ``flush()``, which
    ``data_received`` does right after this call.
    """

    def receive_data(self, data: Buffer) -> list[Event]:
        events = super().receive_data(data)
        for event in events:
            if isinstance(event, DataReceived) and event.flow_controlled_length:
                # Connection level always; stream level while the stream is open.
                self.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        return events


class ApnsClientProtocol(APNsTLSClientProtocol):
    """aioapns's TLS protocol with flow control fixed and streams cleaned up.

    Use :meth:`for_address` to get a subclass bound to a host and port; set it
    as ``APNs.pool.protocol_class``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _CreditReturningH2Connection()  # before connection_made
        #: The last ``Date`` response header and our ``time.time()`` when it came.
        self.last_date: tuple[bytes, float] | None = None
        #: Whether the connection ended, and why (an ``ssl.SSLError`` for a TLS alert).
        self.lost = False
        self.lost_with: BaseException | None = None
        # The pool's discard_connection raises for a connection it does not hold:
        # the probe's, when it is lost before it was handed to the pool.
        discard = self.on_connection_lost
        if discard is not None:
            # (aioapns annotates the callback as NoReturn; it returns None.)
            self.on_connection_lost = functools.partial(  # type: ignore[assignment]
                _discard_if_held, discard)

    @classmethod
    def for_address(cls, host: str, port: int) -> type[ApnsClientProtocol]:
        """A subclass connecting to ``host:port`` (aioapns reads the class attributes)."""
        return type(
            f"{cls.__name__}[{host}:{port}]",
            (cls,),
            {"APNS_SERVER": host, "APNS_PORT": port},
        )

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        if self.lost:
            # Stock aioapns would write to the closed transport and wait forever:
            # with TLS 1.3 a refused client certificate ends the connection only
            # after the handshake seemed to succeed.
            raise ConnectionClosed(str(self.lost_with))
        try:
            return await super().send_notification(request)
        except asyncio.CancelledError:
            self._abandon(request.notification_id)
            raise

    def _abandon(self, notification_id: str) -> None:
        """Forget a request cancelled by our timeout and free its stream.

        Stock aioapns keeps the stream counted as busy forever: after 1,000
        unanswered requests the connection would refuse new work.
        """
        self.requests.pop(notification_id, None)
        self.request_statuses.pop(notification_id, None)
        stream_ids = [s for s, n in self.request_streams.items() if n == notification_id]
        for stream_id in stream_ids:
            del self.request_streams[stream_id]
            stream = self.conn.streams.get(stream_id)
            if stream is None or stream.closed:
                continue  # already ended: its channel was released then
            try:
                self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
            except ProtocolError:  # the connection itself is closing
                continue
            self.free_channels.release()
        if stream_ids and self.transport is not None and not self.transport.is_closing():
            self.flush()

    def on_response_received(self, headers: dict[bytes, bytes]) -> None:
        date = headers.get(b"date")
        if date is not None:
            self.last_date = (date, time.time())
        super().on_response_received(headers)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost, self.lost_with = True, exc
        super().connection_lost(exc)

    def on_stream_ended(self, stream_id: int) -> None:
        # Stock aioapns only forgets a stream when an error body arrives; after
        # a 200 the entry would stay for the life of the connection.
        notification_id = self.request_streams.pop(stream_id, None)
        if notification_id is not None:
            # An error reply that ended without a JSON reason: settle it now
            # rather than leaving the caller to time out.
            future = self.requests.pop(notification_id, None)
            status = self.request_statuses.pop(notification_id, "")
            if future is not None and not future.done():
                future.set_result(NotificationResult(notification_id, status))
        super().on_stream_ended(stream_id)
