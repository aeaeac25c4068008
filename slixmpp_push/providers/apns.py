"""Apple Push Notification service (APNs) provider, on aioapns.

One :class:`ApnsProvider` per configured app (bundle id). :meth:`ApnsProvider.send`
is the only network call; Apple's answer becomes a
:class:`~slixmpp_push.errors.DeliveryResult` through the policy table in the
class constants (what counts as a dead token, what is worth retrying).

aioapns speaks HTTP/2 for us (its protocol class); the rest is ours, because
stock aioapns fails quietly and expensively under faults:

- :class:`ApnsConnectionPool` replaces aioapns's pool. aioapns tries five
  connections per notification, one second apart, logging two lines each, and
  then reports ``MaxAttemptsExceeded`` (we saw "Timeout": our deadline came
  first). Ours makes one attempt, names its cause (connection refused, TLS
  verify failed, timeout connecting), backs off reconnecting while the cause
  lasts, and breaks the reference cycles a failed connection leaves behind (an
  exception's traceback holding the frame holding the future holding the
  exception): without that, every failed TLS handshake kept its transport and
  asyncio's 256 KiB SSL buffer alive until a full garbage collection, and a
  30 s fault left the process 200 MB larger for good.
- :class:`ProviderToken`: one JWT for the whole app, where aioapns signs one
  per connection (connection churn became token churn, which Apple answers with
  429 TooManyProviderTokenUpdates). It is re-signed every 30 minutes, or when
  Apple refuses it (403 ExpiredProviderToken / InvalidProviderToken), but never
  sooner than 20 minutes after the last one, as Apple asks.
- :class:`ApnsClientProtocol`, set as the pool's protocol class, which

  - connects to ``endpoint`` ("host:port") instead of Apple when configured;
  - returns HTTP/2 flow-control credit, which stock aioapns never does;
  - releases the HTTP/2 stream of a request abandoned by our timeout, and
    forgets finished streams (stock aioapns keeps one entry per successful push
    for the life of the connection);
  - matches each reply to its request by stream, reads ``Retry-After`` (aioapns
    drops the response headers), and retries a request whose stream APNs reset
    (stock aioapns leaves it waiting);
  - forgets every request when the connection is lost, so that a reset
    connection is freed at once rather than by the cycle collector;
  - remembers the last ``Date`` response header and why the connection was lost,
    for :meth:`ApnsProvider.probe` (``slixmpp-push doctor``);
  - sends a request for less CPU than aioapns (``ApnsClientProtocol._request``): one
    TLS write per event-loop turn for every request started in it, the request
    and its reply framed by our connection rather than h2's streams, headers
    encoded without Huffman coding (the per-request headers never indexed, the
    others a cached one-byte index), the provider token's header value encoded
    once per token, a cheap ``apns-id``, the inactivity timer re-armed once per
    10 s. The HTTP/2 side is :mod:`slixmpp_push.providers.apns_h2`.

Refused credentials pause the app (:meth:`Provider.pause`): no request is made
until a fresh token may be signed, then one trial request at a time, so a
revoked key costs a few requests an hour rather than a retry storm for a day.

Config keys used (``AppConfig``): ``topic``, ``sandbox``, ``key_file`` +
``key_id`` + ``team_id`` (token auth) or ``cert_file`` (certificate auth),
``max_connections``, ``endpoint``, ``ca_file``, ``timeout``.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import math
import socket
import ssl
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import jwt
from aioapns import NotificationRequest, PushType
from aioapns.common import NotificationResult
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsBaseConnectionPool,
    APNsTLSClientProtocol,
    AuthorizationHeaderProvider,
)
from aioapns.exceptions import ConnectionClosed
from h2.errors import ErrorCodes
from h2.exceptions import NoAvailableStreamIDError, ProtocolError

from ..coalesce import CoalescedWrites
from ..errors import ConfigError, DeliveryResult, Outcome
from ..logs import short_token
from .apns_h2 import ApnsH2Connection, Headers
from .base import (
    AUTH_REJECTED,
    CERT_REFUSED,
    CLOSED,
    TIMEOUT,
    ApnsRequest,
    ProbeResult,
    ProbeStatus,
    Provider,
    PushRequest,
    clock_offset,
    parse_retry_after,
    transport_reason,
)

if TYPE_CHECKING:
    from ..config import AppConfig

__all__ = ["ApnsClientProtocol", "ApnsConnectError", "ApnsConnectionPool", "ApnsProvider",
           "ProviderToken"]

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
    #: Apple refused our provider token: a new one is signed (when Apple allows)
    #: and the request sent again at once; refused again, the app is paused.
    TOKEN_REFUSALS: ClassVar[frozenset[tuple[int, str]]] = frozenset(
        {(403, "ExpiredProviderToken"), (403, "InvalidProviderToken")}
    )
    #: Credentials refused for good until the operator acts (or the key is
    #: re-signed): the app is paused, the notifications kept.
    AUTH_ERRORS: ClassVar[frozenset[tuple[int, str]]] = TOKEN_REFUSALS | frozenset(
        {
            (403, "MissingProviderToken"),
            (403, "BadCertificate"),
            (403, "BadCertificateEnvironment"),
            (403, "Forbidden"),
            (429, "TooManyProviderTokenUpdates"),
        }
    )
    #: Seconds the app pauses after Apple refused the credentials, when no new
    #: provider token can help sooner (certificate auth, a missing token).
    AUTH_PAUSE: ClassVar[float] = 20 * 60.0
    #: The shortest pause after a refusal (Apple's 429 TooManyProviderTokenUpdates
    #: included: it names no wait, the current token is kept meanwhile).
    MIN_AUTH_PAUSE: ClassVar[float] = 60.0
    #: Reconnecting while connections fail: first wait, doubling up to the
    #: ceiling (Apple treats rapid reconnects as abuse). Requests meanwhile fail
    #: at once with the last connection failure's cause.
    CONNECT_BACKOFF: ClassVar[float] = 0.5
    CONNECT_BACKOFF_MAX: ClassVar[float] = 5.0  # also the longest wait once APNs is back
    #: Characters of a device token that may appear in logs.

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
        self._pool: ApnsConnectionPool | None = None
        #: The app's provider token (token auth), once started.
        self.token: ProviderToken | None = None

    @property
    def pool(self) -> ApnsConnectionPool | None:
        """The connection pool once started (for diagnostics and tests)."""
        return self._pool

    async def start(self) -> None:
        """Load the credentials and build the connection pool (no connection yet)."""
        app = self.app
        ssl_context = self._ssl_context()
        if app.cert_file:
            try:
                ssl_context.load_cert_chain(app.cert_file)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise ConfigError(self._key("cert_file"), f"cannot load: {exc}") from exc
        else:
            assert app.key_id is not None and app.team_id is not None  # _check_config
            self.token = ProviderToken(self._read_key(), app.key_id, app.team_id)
        self._pool = ApnsConnectionPool(
            topic=app.topic,
            max_connections=app.max_connections,
            ssl_context=ssl_context,
            auth_provider=self.token,
            protocol_class=ApnsClientProtocol.for_address(self.host, self.port),
            backoff=(self.CONNECT_BACKOFF, self.CONNECT_BACKOFF_MAX),
        )

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    async def send(self, request: PushRequest) -> DeliveryResult:
        """Send one notification; every expected failure comes back as a result."""
        if not isinstance(request, ApnsRequest):
            raise TypeError(f"ApnsProvider cannot send {type(request).__name__}")
        if self._pool is None:
            raise RuntimeError("ApnsProvider.send() before start()")
        held = self.paused()
        if held is not None:
            return held
        token = short_token(request.token)
        push_type = _PUSH_TYPES.get(request.push_type)
        if push_type is None:
            log.warning("APNs %s: unknown push type %r", token, request.push_type)
            return DeliveryResult(Outcome.REJECTED, reason="BadPushType")
        notification = NotificationRequest(
            device_token=request.token,
            message=request.payload,
            notification_id=_apns_id(),
            time_to_live=_AbsoluteExpiration(request.expiration),
            priority=request.priority,
            collapse_key=request.collapse_id,
            push_type=push_type,
            apns_topic=request.topic or None,
        )
        generation = self.token.generation if self.token is not None else 0
        delivery = await self._send_once(notification, token)
        if (
            self.token is not None
            and (delivery.status, delivery.reason) in self.TOKEN_REFUSALS
            and self.token.renew(generation)
        ):
            log.info("APNs app %s: %s: sending again with a new provider token", self.id,
                     delivery.reason)
            delivery = await self._send_once(notification, token)
        return self.note(self._judge(delivery))

    async def _send_once(self, notification: NotificationRequest, token: str) -> DeliveryResult:
        """One request (and Apple's answer as a result, not yet judged for the app)."""
        pool = self._pool
        assert pool is not None
        began = time.monotonic()
        try:
            # asyncio.timeout, not wait_for: no task per request, and no task
            # holding the exception (and through it every frame) in a cycle.
            async with asyncio.timeout(self.app.timeout):
                answer = await pool.send_notification(notification)
        except ApnsConnectError as exc:
            return DeliveryResult(Outcome.RETRY, reason=exc.reason)
        except TimeoutError as exc:
            traceback.clear_frames(exc.__traceback__)
            # A timed-out connection attempt was noted by the pool with its cause.
            reason = pool.failure if pool.failed_at >= began else TIMEOUT
            log.debug("APNs %s: %s, will retry", token, reason)
            return DeliveryResult(Outcome.RETRY, reason=reason)
        except (ConnectionClosed, ProtocolError, OSError) as exc:
            # Our protocol's ConnectionClosed names the cause (stock aioapns: "None").
            said = str(exc) if isinstance(exc, ConnectionClosed) else ""
            reason = said if said not in ("", "None") else transport_reason(exc)
            traceback.clear_frames(exc.__traceback__)
            log.debug("APNs %s: %s, will retry", token, reason)
            return DeliveryResult(Outcome.RETRY, reason=reason)
        delivery = self.classify(answer)
        log.log(
            # A failure is logged once per cause by note(), not per request.
            logging.DEBUG if delivery.outcome in (Outcome.DELIVERED, Outcome.RETRY)
            else logging.INFO,
            "APNs %s: %s %s -> %s",
            token,
            answer.status,
            answer.description or "",
            delivery.outcome.value,
        )
        return delivery

    def _judge(self, delivery: DeliveryResult) -> DeliveryResult:
        """Pause or resume the app by what one result says about it."""
        key = (delivery.status, delivery.reason)
        if key in self.AUTH_ERRORS:
            if key == (429, "TooManyProviderTokenUpdates"):
                if self.token is not None:
                    self.token.hold()  # Apple says: no new token for a while
                wait = max(self.MIN_AUTH_PAUSE, delivery.retry_after or 0.0)
                return self.pause(wait, f"{AUTH_REJECTED}: {delivery.reason}", auth=True,
                                  status=delivery.status)
            return self.pause(self._auth_pause(), f"{AUTH_REJECTED}: {delivery.reason}",
                              auth=True, status=delivery.status)
        if delivery.reason.startswith(CERT_REFUSED):  # Apple refused our certificate
            return self.pause(self.AUTH_PAUSE, f"{AUTH_REJECTED}: {delivery.reason}", auth=True)
        if delivery.status is not None:
            if delivery.status >= 500:
                if delivery.retry_after:  # Apple's outage, and the wait it asks of everyone
                    return self.pause(delivery.retry_after, delivery.reason, auth=False,
                                      status=delivery.status)
            else:
                self.resume()  # any other answer means the credentials were accepted
        return delivery

    def _auth_pause(self) -> float:
        """Seconds to pause after a refusal: until a new token may be signed."""
        if self.token is None:
            return self.AUTH_PAUSE
        return max(self.MIN_AUTH_PAUSE, self.token.seconds_until_renewal())

    async def probe(self, timeout: float) -> ProbeResult:
        """One background push to :attr:`PROBE_TOKEN` through aioapns, on a
        connection of its own so that a failure to connect is named (the pool
        would retry it for seconds and log only "could not connect")."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("ApnsProvider.probe() before start()")
        where = f"{self.host}:{self.port}"
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

        ``retry_after``: the answer's ``Retry-After`` header, when it had one
        (:class:`ApnsClientProtocol` reads it; Apple does not document one).
        """
        reason = result.description or ""
        message_id = result.notification_id or None
        retry_after = getattr(result, "retry_after", None)
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
            or (status, reason) in cls.AUTH_ERRORS
        ):
            outcome = Outcome.RETRY
        else:  # 413 PayloadTooLarge, BadTopic, BadExpirationDate, MissingTopic, ...
            outcome = Outcome.REJECTED
        return DeliveryResult(outcome, status=status, reason=reason,
                              retry_after=retry_after if outcome is Outcome.RETRY else None,
                              message_id=message_id)

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

    def _ssl_context(self) -> ssl.SSLContext:
        """One context for every connection of the app: trusting ``ca_file`` only,
        or the system's CA certificates."""
        if not self.app.ca_file:
            return ssl.create_default_context()
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


#: Push types by their header value (``PushType(value)`` is an Enum call per request).
_PUSH_TYPES: dict[str, PushType] = {push_type.value: push_type for push_type in PushType}

#: ``apns-id``: this process's random UUID with its last 12 digits counting up.
_APNS_ID_PREFIX = str(uuid.uuid4())[:24]
_apns_ids = itertools.count(int(uuid.uuid4().hex[:8], 16))


def _apns_id() -> str:
    """A new ``apns-id`` (a UUID as Apple wants it, lowercase 8-4-4-4-12 hex), unique
    in this process and random across processes; aioapns would call ``uuid4()``,
    an ``os.urandom`` system call, per request."""
    return f"{_APNS_ID_PREFIX}{next(_apns_ids) & 0xFFFFFFFFFFFF:012x}"


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



class ApnsConnectError(Exception):
    """No connection to APNs could be made; ``reason`` names the cause."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProviderToken(AuthorizationHeaderProvider):
    """The ES256 provider token (JWT) of token auth: one for all connections of an app.

    Apple wants a token refreshed no more often than every 20 minutes (else
    429 TooManyProviderTokenUpdates) and at least hourly (else 403
    ExpiredProviderToken). aioapns signs one per connection, so connection
    churn became token churn; here one token is shared, re-signed after
    :attr:`TTL`, or by :meth:`renew` when Apple refuses it, and never sooner
    than :attr:`MIN_INTERVAL` after the previous one.

    ``clock`` gives the ``iat`` claim (wall time, as Apple judges it);
    ``monotonic`` measures the intervals (immune to clock steps).
    """

    TTL: ClassVar[float] = 30 * 60.0
    MIN_INTERVAL: ClassVar[float] = 20 * 60.0

    def __init__(self, key: str, key_id: str, team_id: str, *,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.key = key
        self.key_id = key_id
        self.team_id = team_id
        self.clock = clock
        self.monotonic = monotonic
        #: Bumped by every new token: a refusal is only acted on once per token.
        self.generation = 0
        #: Tokens signed so far (the metric operators compare with Apple's limit).
        self.signed = 0
        self._header = ""
        self._value = b""  # _header encoded, for the HTTP/2 header block
        self._signed_at = -math.inf  # monotonic
        self._no_new_token_before = -math.inf  # monotonic; set by hold()
        # Signed now, so that generation names the token the first request
        # carries (and a bad key fails at start, not at the first push).
        self._sign()

    def get_header(self) -> str:
        """``bearer <jwt>`` for the next request (aioapns's interface)."""
        if self.monotonic() - self._signed_at >= self.TTL and self._may_sign():
            self._sign()
        return self._header

    def authorization(self) -> bytes:
        """The ``authorization`` header value for the next request, encoded once
        per token: the same bytes object until the token is re-signed (its hash
        computed once, for the header encoder's cache)."""
        if self.monotonic() - self._signed_at >= self.TTL and self._may_sign():
            self._sign()
        return self._value

    def renew(self, generation: int) -> bool:
        """Apple refused the token of ``generation``: True when a newer token is
        there to send again with (signed now, or by another request meanwhile);
        False when Apple would not accept a new one yet."""
        if generation != self.generation:
            return True
        if not self._may_sign():
            return False
        self._sign()
        return True

    def hold(self) -> None:
        """Apple said TooManyProviderTokenUpdates: sign nothing new for a while."""
        self._no_new_token_before = self.monotonic() + self.MIN_INTERVAL

    def seconds_until_renewal(self) -> float:
        """Seconds until :meth:`renew` may sign a new token."""
        now = self.monotonic()
        return max(0.0, self._signed_at + self.MIN_INTERVAL - now,
                   self._no_new_token_before - now)

    def _may_sign(self) -> bool:
        return self.seconds_until_renewal() <= 0.0

    def _sign(self) -> None:
        token = jwt.encode({"iss": self.team_id, "iat": int(self.clock())}, self.key,
                           algorithm="ES256", headers={"kid": self.key_id})
        self._header = f"bearer {token}"
        self._value = self._header.encode()
        self._signed_at = self.monotonic()
        self.generation += 1
        self.signed += 1


class ApnsConnectionPool(APNsBaseConnectionPool):
    """aioapns's connection pool, made to fail fast, precisely and cheaply.

    One connection attempt per request (aioapns: five, a second apart); its
    failure is raised as :class:`ApnsConnectError` naming the cause. While
    connecting fails, new attempts wait ``backoff`` (first, ceiling; doubling)
    and requests meanwhile fail at once with the last cause. A notification
    whose connection was closed under it after having worked (the server
    closed an idle connection) is sent once more on a new one.
    """

    def __init__(self, *, topic: str, max_connections: int,
                 ssl_context: ssl.SSLContext, auth_provider: ProviderToken | None,
                 protocol_class: type[APNsTLSClientProtocol],
                 backoff: tuple[float, float] = (0.5, 5.0)) -> None:
        super().__init__(topic=topic, max_connections=max_connections)
        self.topic = topic
        self.ssl_context = ssl_context
        self.auth_provider = auth_provider
        self.protocol_class = protocol_class
        self.backoff = backoff
        #: The cause of the last failed connection attempt, and when (monotonic).
        self.failure = ""
        self.failed_at = -math.inf
        #: Connection attempts so far, and how many failed.
        self.attempts = 0
        self.failures = 0
        self._failures_in_a_row = 0
        self._next_attempt = -math.inf

    async def create_connection(self) -> APNsBaseClientProtocol:
        """A new TLS connection to the protocol class's server (not added to the pool)."""
        cls = self.protocol_class
        # (aioapns annotates the lost-connection callback as NoReturn; it returns.)
        lost: Any = self.discard_connection
        factory = partial(cls, self.topic, self.loop, lost, self.auth_provider)
        _, protocol = await self.loop.create_connection(
            factory, host=cls.APNS_SERVER, port=cls.APNS_PORT, ssl=self.ssl_context)
        return protocol

    def discard_connection(self, connection: APNsBaseClientProtocol) -> None:
        # aioapns raises for a connection it does not hold (the probe's, lost
        # before it was added) and logs each at INFO: a reset storm floods logs.
        if connection in self.connections:
            self.connections.remove(connection)
        log.debug("APNs connection lost (%d left)", len(self.connections))

    def _usable(self) -> APNsBaseClientProtocol | None:
        for connection in self.connections:
            if getattr(connection, "closing", False):
                # Failing under TLS, not yet told: out of the pool now, so that
                # no request is written to it meanwhile.
                self.discard_connection(connection)
                return self._usable()
            if not connection.is_busy:
                return connection
        return None

    async def acquire(self) -> APNsBaseClientProtocol:
        connection = self._usable()
        if connection is not None:
            return connection
        async with self._lock:
            connection = self._usable()
            if connection is not None:
                return connection
            if len(self.connections) < self.max_connections:
                return await self._connect()
        while True:  # every connection has the most streams APNs allows in flight
            await asyncio.sleep(0.01)
            connection = self._usable()
            if connection is not None:
                return connection

    async def _connect(self) -> APNsBaseClientProtocol:
        now = time.monotonic()
        if now < self._next_attempt:
            raise ApnsConnectError(self.failure)
        self.attempts += 1
        try:
            connection = await self.create_connection()
        except asyncio.CancelledError:
            # Our request timeout ran out while connecting (a firewall dropping
            # packets): the send reports this cause rather than a bare timeout.
            cls = self.protocol_class
            self._failed(f"{TIMEOUT} connecting to {cls.APNS_SERVER}:{cls.APNS_PORT}")
            raise
        except Exception as exc:  # OSError, ssl.SSLError, ...
            reason = transport_reason(exc)
            # The exception's frames hold asyncio's connection waiter, which
            # holds the exception: a cycle keeping the transport and its SSL
            # buffers until a full collection. Cleared, all is freed right now.
            traceback.clear_frames(exc.__traceback__)
            self._failed(reason)
            raise ApnsConnectError(reason) from None
        self._failures_in_a_row = 0
        self._next_attempt = -math.inf
        self.connections.append(connection)
        log.debug("APNs connection made (%d open)", len(self.connections))
        return connection

    def _failed(self, reason: str) -> None:
        first, ceiling = self.backoff
        self.failures += 1
        self._failures_in_a_row += 1
        self.failure, self.failed_at = reason, time.monotonic()
        delay = min(ceiling, first * 2.0 ** min(self._failures_in_a_row - 1, 30))
        self._next_attempt = self.failed_at + delay
        log.debug("APNs connection failed (%s): next attempt in %.1f s", reason, delay)

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        connection = await self.acquire()
        try:
            return await connection.send_notification(request)
        except ConnectionClosed:
            if not getattr(connection, "answered", 1):  # (a stock aioapns protocol: unknown)
                raise  # a new connection failed: that is the answer
        except NoAvailableStreamIDError:  # 2^30 requests on one connection
            connection.close()
        return await (await self.acquire()).send_notification(request)


#: Requests are written together (:meth:`ApnsClientProtocol.flush`), at most this many:
#: 100 publishes read at once are then on their way to Apple while the rest are still
#: being built, instead of one write after all of them (measured: a window of 100
#: publishes from the XMPP server moved in lockstep, each side idle half the time).
WRITE_BATCH = 32
_METHOD_POST = (b":method", b"POST")
_SCHEME_HTTPS = (b":scheme", b"https")


class _Answer(NotificationResult):
    """Apple's answer, with the ``Retry-After`` header aioapns does not keep."""

    __slots__ = ("retry_after",)

    def __init__(self, result: NotificationResult, retry_after: float | None) -> None:
        super().__init__(result.notification_id, result.status, result.description,
                         result.timestamp)
        self.retry_after = retry_after


class ApnsClientProtocol(APNsTLSClientProtocol):
    """aioapns's TLS protocol with flow control fixed, streams cleaned up, and
    requests sent for less (:meth:`_request`, :meth:`flush`).

    Use :meth:`for_address` to get a subclass bound to a host and port; set it
    as :attr:`ApnsConnectionPool.protocol_class`.
    """

    conn: ApnsH2Connection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = ApnsH2Connection(self._replied, self._stream_reset)  # before connection_made
        #: The last ``Date`` response header and our ``time.time()`` when it came.
        self.last_date: tuple[bytes, float] | None = None
        #: Whether the connection ended, and why (an ``ssl.SSLError`` for a TLS alert).
        self.lost = False
        self.lost_with: BaseException | None = None
        #: Answers received on this connection (it worked at least once).
        self.answered = 0
        self._host = (b"host", self.APNS_SERVER.encode())
        auth = self.auth_provider
        self._authorization: Callable[[], bytes] | None = (
            None if auth is None else auth.authorization if isinstance(auth, ProviderToken)
            else lambda: auth.get_header().encode())
        self._writes = CoalescedWrites(self._write, self.loop)
        self._unwritten = 0  # requests started since the last write
        self._active_at = 0.0  # loop.time() of the last flush (the inactivity timer's)
        #: Bodies the peer's flow-control window cannot take yet, in order: sent as its
        #: WINDOW_UPDATEs come (h2 would raise FlowControlError, and the request fail).
        self._held: collections.deque[tuple[int, bytes]] = collections.deque()

    @classmethod
    def for_address(cls, host: str, port: int) -> type[ApnsClientProtocol]:
        """A subclass connecting to ``host:port`` (aioapns reads the class attributes)."""
        return type(
            f"{cls.__name__}[{host}:{port}]",
            (cls,),
            {"APNS_SERVER": host, "APNS_PORT": port},
        )

    @property
    def closing(self) -> bool:
        """Whether the connection is lost or going: the socket under TLS can fail
        two loop turns before :meth:`connection_lost` is called, and every
        write meanwhile makes asyncio log "socket.send() raised exception"."""
        if self.lost:
            return True
        ssl_protocol = getattr(self.transport, "_ssl_protocol", None)
        raw = getattr(ssl_protocol, "_transport", None)
        return raw is not None and raw.is_closing()

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        if self.closing:
            # Stock aioapns would write to the closed transport and wait forever:
            # with TLS 1.3 a refused client certificate ends the connection only
            # after the handshake seemed to succeed.
            raise self._closed()
        try:
            return await self._request(request)
        except asyncio.CancelledError:
            self._abandon(request.notification_id)
            raise
        except ConnectionClosed as exc:
            # aioapns fails every request of a lost connection with one shared
            # exception; each raise chains this request's frames (holding its
            # future, holding the exception) onto it: a cycle per request that
            # kept the connection alive until a full collection. Cut it.
            traceback.clear_frames(exc.__traceback__)
            raise self._closed() from None

    async def _request(self, request: NotificationRequest) -> NotificationResult:
        """aioapns's ``send_notification``, without what we do not need per request:
        the headers are built as bytes (the token's value encoded once per token),
        the expiration is taken as given when absolute, the JSON is compact, the
        request framed by our connection (:meth:`ApnsH2Connection.send_request`)
        rather than h2 when it can be, and the write waits for the end of the
        loop turn (:meth:`flush`). The reply comes to :meth:`_replied`."""
        stream_id = await self.free_channels.acquire()
        headers = [
            _METHOD_POST,
            _SCHEME_HTTPS,
            (b":path", b"/3/device/" + request.device_token.encode()),
            self._host,
            (b"apns-id", request.notification_id.encode()),
            (b"apns-topic", (request.apns_topic or self.apns_topic).encode()),
        ]
        ttl = request.time_to_live
        if ttl is not None:
            expiration = int(ttl) if isinstance(ttl, _AbsoluteExpiration) \
                else int(time.time()) + ttl
            headers.append((b"apns-expiration", b"%d" % expiration))
        if request.priority is not None:
            headers.append((b"apns-priority", b"%d" % request.priority))
        if request.collapse_key is not None:
            headers.append((b"apns-collapse-id", request.collapse_key.encode()))
        if request.push_type is not None:
            headers.append((b"apns-push-type", request.push_type.value.encode()))
        if self._authorization is not None:
            headers.append((b"authorization", self._authorization()))
        body = json.dumps(request.message, ensure_ascii=False, separators=(",", ":")).encode()
        conn = self.conn
        try:
            # Bodies held for want of credit go first: then this one waits too.
            if self._held or not conn.send_request(stream_id, headers, body):
                conn.send_headers(stream_id, headers)
                if self._held or len(body) > conn.local_flow_control_window(stream_id):
                    self._held.append((stream_id, body))  # behind the ones already waiting
                else:
                    conn.send_data(stream_id, body, end_stream=True)
        except BaseException:
            self.free_channels.release()  # (aioapns keeps it taken: one stream lost)
            raise
        self._unwritten += 1
        self.flush()
        if self._unwritten >= WRITE_BATCH:
            self._writes.now()  # APNs gets to work while we build the rest
        future: asyncio.Future[NotificationResult] = self.loop.create_future()
        self.requests[request.notification_id] = future
        self.request_streams[stream_id] = request.notification_id
        return await future

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._held:
            self._send_held()

    def _send_held(self) -> None:
        """Send the held bodies the peer's windows now take, in order."""
        conn = self.conn
        while self._held:
            stream_id, body = self._held[0]
            stream = conn.streams.get(stream_id)
            if stream is None or stream.closed:  # abandoned (reset) meanwhile
                self._held.popleft()
                continue
            if len(body) > conn.local_flow_control_window(stream_id):
                break
            self._held.popleft()
            conn.send_data(stream_id, body, end_stream=True)
        self.flush()

    def flush(self) -> None:
        """Write what h2 has to send soon (:class:`~slixmpp_push.coalesce.CoalescedWrites`),
        once for every request started (and every reply read) meanwhile: one TLS record
        and one ``send()`` where aioapns makes one each per request."""
        self._active_at = self.loop.time()
        self._writes.soon()

    def _write(self) -> bool:
        """Write what h2 has to send; whether there was anything."""
        self._unwritten = 0
        transport = self.transport
        if transport is None or self.closing or transport.is_closing():
            return False  # lost or failing meanwhile: its requests fail with it
        data = self.conn.data_to_send()
        if data:
            transport.write(data)
        return bool(data)

    def refresh_inactivity_timer(self) -> None:
        """Note activity; the timer, armed once, closes the connection after
        ``INACTIVITY_TIME`` without a flush, as aioapns's (which re-arms a timer
        per request)."""
        self._active_at = self.loop.time()
        if self.inactivity_timer is None:
            self.inactivity_timer = self.loop.call_at(
                self._active_at + self.INACTIVITY_TIME, self._inactive)

    def _inactive(self) -> None:
        idle_until = self._active_at + self.INACTIVITY_TIME
        if self.loop.time() >= idle_until:
            self.inactivity_timer = None
            self.close()
        else:
            self.inactivity_timer = self.loop.call_at(idle_until, self._inactive)

    def _closed(self) -> ConnectionClosed:
        """The exception for a request on this lost connection, naming the cause."""
        cause = self.lost_with
        return ConnectionClosed(transport_reason(cause) if cause is not None else CLOSED)

    def _abandon(self, notification_id: str) -> None:
        """Forget a request cancelled by our timeout and free its stream.

        Stock aioapns keeps the stream counted as busy forever: after 1,000
        unanswered requests the connection would refuse new work.
        """
        self.requests.pop(notification_id, None)
        stream_ids = [s for s, n in self.request_streams.items() if n == notification_id]
        for stream_id in stream_ids:
            del self.request_streams[stream_id]
            if self.conn.cancel(stream_id):
                self.free_channels.release()
        if stream_ids and self.transport is not None and not self.transport.is_closing():
            self.flush()

    def _replied(self, stream_id: int, headers: Headers, body: bytes) -> None:
        """A complete reply (called by :attr:`conn`): settle its request, found by
        its stream, not by ``apns-id`` (aioapns decodes that header for it)."""
        notification_id = self._stream_ended(stream_id)
        if notification_id is None:
            log.debug("APNs: a reply on stream %d, which no request waits for", stream_id)
            return
        self.answered += 1
        fields = dict(headers)
        date = fields.get(b"date")
        if date is not None:
            self.last_date = (date, time.time())
        result = NotificationResult(
            notification_id, fields.get(b":status", b"").decode("ascii", "replace"),
            *(_error_body(body) if body else ()))
        retry_after = fields.get(b"retry-after")
        if retry_after is not None:
            result = _Answer(result, parse_retry_after(retry_after))
        self._settle(notification_id, result)

    def _stream_reset(self, stream_id: int, error_code: int) -> None:
        """APNs reset a request's stream (or answered it malformed): no answer,
        so the request is retried (:meth:`ApnsProvider.classify`: no status)."""
        notification_id = self._stream_ended(stream_id)
        if notification_id is not None:
            self._settle(notification_id, NotificationResult(
                notification_id, "", f"stream reset ({_error_name(error_code)})"))

    def _stream_ended(self, stream_id: int) -> str | None:
        """The request of a stream that ended, its channel freed; None if none waits."""
        notification_id = self.request_streams.pop(stream_id, None)
        if notification_id is not None:
            self.free_channels.release()
        return notification_id

    def _settle(self, notification_id: str, result: NotificationResult) -> None:
        future = self.requests.pop(notification_id, None)
        if future is not None and not future.done():
            future.set_result(result)

    def connection_lost(self, exc: Exception | None) -> None:
        # The error of a failed write has a traceback whose frames lead (through
        # f_back) to our own send_notification, holding this protocol: kept in
        # lost_with, it would keep the connection, its transport and SSL buffers
        # alive until a full collection. Only its type and text are needed.
        inner: BaseException | None = exc
        while inner is not None and inner.__traceback__ is not None:
            inner.__traceback__ = None
            inner = inner.__cause__ or inner.__context__
        self.lost, self.lost_with = True, exc
        # aioapns sets the exception on every waiting future; one already
        # cancelled by our timeout would make that raise.
        for notification_id in [n for n, f in self.requests.items() if f.done()]:
            del self.requests[notification_id]
        super().connection_lost(exc)
        # Nothing more will be answered here: let go of every request now.
        self.requests.clear()
        self.request_streams.clear()
        self._held.clear()


def _error_body(body: bytes) -> tuple[str | None, int | None]:
    """The reason and timestamp of an error reply's JSON body (both None if unreadable)."""
    try:
        data = json.loads(body)
    except ValueError:  # UnicodeDecodeError included
        return None, None
    if not isinstance(data, dict):
        return None, None
    reason, timestamp = data.get("reason"), data.get("timestamp")
    return (reason if isinstance(reason, str) and reason else None,
            timestamp if isinstance(timestamp, int) else None)


def _error_name(error_code: int) -> str:
    try:
        return ErrorCodes(error_code).name
    except ValueError:
        return f"error {error_code}"
