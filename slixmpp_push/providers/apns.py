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
  for the life of the connection).

Config keys used (``AppConfig``): ``topic``, ``sandbox``, ``key_file`` +
``key_id`` + ``team_id`` (token auth) or ``cert_file`` (certificate auth),
``max_connections``, ``endpoint``, ``ca_file``, ``timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
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
from .base import ApnsRequest, Provider, PushRequest

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


async def _no_error_log(request: NotificationRequest, result: NotificationResult) -> None:
    """Replaces aioapns's per-failure ERROR log: ApnsProvider logs outcomes itself."""


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

    @classmethod
    def for_address(cls, host: str, port: int) -> type[ApnsClientProtocol]:
        """A subclass connecting to ``host:port`` (aioapns reads the class attributes)."""
        return type(
            f"{cls.__name__}[{host}:{port}]",
            (cls,),
            {"APNS_SERVER": host, "APNS_PORT": port},
        )

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
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
