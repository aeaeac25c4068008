"""The one interface every push provider implements.

A provider owns the connection to one configured app (an APNs bundle id, an
FCM project, the console). :meth:`Provider.send` is its only network seam: it
takes a request already built by :mod:`slixmpp_push.payloads` and returns a
:class:`~slixmpp_push.errors.DeliveryResult`; it never raises for an expected
outcome (dead token, outage, throttling).
"""

from __future__ import annotations

import abc
import datetime
import email.utils
import enum
import logging
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import DeliveryResult, Outcome

if TYPE_CHECKING:
    from ..config import AppConfig

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ApnsRequest:
    """One HTTP/2 request to APNs (``POST /3/device/<token>``)."""

    token: str
    topic: str
    push_type: str  # "alert" | "background" | "voip"
    priority: int  # 10 immediate, 5 power-considerate (background MUST be 5)
    expiration: int  # absolute UNIX time; 0 means "try once"
    payload: dict[str, Any]
    collapse_id: str | None = None


@dataclass(slots=True)
class FcmRequest:
    """One FCM HTTP v1 message (``POST /v1/projects/<id>/messages:send``)."""

    token: str
    data: dict[str, str]
    priority: str = "normal"  # android.priority: "high" | "normal"
    ttl: int = 0  # seconds
    collapse_key: str | None = None
    # Only set for pages (push_notifier): a visible notification on a channel.
    title: str | None = None
    body: str | None = None
    channel_id: str | None = None
    tag: str | None = None  # a visible notification replaces the shown one with this tag
    extra: dict[str, Any] = field(default_factory=dict)


PushRequest = ApnsRequest | FcmRequest


class ProbeStatus(str, enum.Enum):
    """Verdict of one check (``slixmpp-push doctor``): warnings still exit 0."""

    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(slots=True, frozen=True)
class ProbeResult:
    """What :meth:`Provider.probe` learnt: are the credentials accepted?

    ``detail`` is one line saying what was seen; ``fix`` says what to change when
    the status is not PASS. Neither ever holds a secret or a device token.
    ``clock_offset``: seconds the provider's clock (its ``Date`` response header)
    is ahead of ours (negative: behind), when the provider answered with one.
    """

    status: ProbeStatus
    detail: str
    fix: str = ""
    clock_offset: float | None = None


def clock_offset(date_header: str | bytes | None, received: float) -> float | None:
    """Seconds an HTTP ``Date`` header is ahead of ``received`` (our ``time.time()``
    when it arrived); None if absent or unparsable. A Date is truncated to the
    second: the middle of that second is taken, so the error is within ±0.5 s."""
    if not date_header:
        return None
    text = date_header.decode("latin-1") if isinstance(date_header, bytes) else date_header
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": GMT too, as every HTTP date
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp() + 0.5 - received


#: The longest Retry-After believed (seconds): a bogus header must not park a
#: notification for days; the delivery engine's own backoff takes over after.
MAX_RETRY_AFTER = 3600.0


def parse_retry_after(value: str | bytes | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), at most
    :data:`MAX_RETRY_AFTER`; None if absent or unparsable."""
    if not value:
        return None
    text = (value.decode("latin-1") if isinstance(value, bytes) else value).strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    seconds = (when - datetime.datetime.now(datetime.UTC)).total_seconds()
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


# The words DeliveryResult.reason and /health use for a failure's cause.
REFUSED = "connection refused"
RESET = "connection reset"
CLOSED = "connection closed"
TIMEOUT = "timeout"
TLS_VERIFY_FAILED = "TLS verify failed"
CERT_REFUSED = "TLS: client certificate refused"
AUTH_REJECTED = "auth rejected"


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first."""
    chain = [exc]
    while len(chain) < 10:  # httpx -> httpcore -> ssl, aioapns -> asyncio -> ssl ...
        inner = chain[-1].__cause__ or chain[-1].__context__
        if inner is None or inner in chain:
            break
        chain.append(inner)
    return chain


def certificate_refused(exc: BaseException) -> str | None:
    """The TLS alert when the server refused our client certificate, else None.

    With TLS 1.3 the server judges the client certificate after the handshake
    looked complete to us: the refusal arrives as an alert on the first read.
    """
    for inner in _chain(exc):
        reason = getattr(inner, "reason", None)
        if isinstance(inner, ssl.SSLError) and isinstance(reason, str) and "ALERT" in reason \
                and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason):
            return reason
    return None


def transport_reason(exc: BaseException) -> str:
    """A transport failure's cause in a few words, for ``DeliveryResult.reason``
    and /health: ``connection refused``, ``TLS verify failed (…)``, ``timeout``…

    The chain is searched for the most telling exception: a TLS verify error
    under httpx's ``ConnectError`` or aioapns's ``ConnectionError``.
    """
    chain = _chain(exc)
    for inner in chain:
        if isinstance(inner, ssl.SSLCertVerificationError):
            return f"{TLS_VERIFY_FAILED} ({inner.verify_message})"
    for inner in chain:
        alert = certificate_refused(inner)
        if alert is not None:
            return f"{CERT_REFUSED} ({alert})"
        if isinstance(inner, ssl.SSLError):
            reason = getattr(inner, "reason", None)
            return f"TLS handshake failed ({reason or inner})"
        if isinstance(inner, ConnectionRefusedError):
            return REFUSED
        if isinstance(inner, ConnectionResetError | BrokenPipeError):
            return RESET
        if isinstance(inner, socket.gaierror):
            return f"DNS lookup failed ({inner.strerror})"
        if isinstance(inner, TimeoutError) or "Timeout" in type(inner).__name__:
            return TIMEOUT
        name = type(inner).__name__
        if name == "RemoteProtocolError" or (  # httpx: "Server disconnected"
                name == "LocalProtocolError" and "CLOSED" in str(inner)):  # written to it after
            return CLOSED
    for inner in chain:
        # httpx/httpcore: the peer ended the connection mid-read or mid-write, without
        # an OS error underneath (an EOF): to us, as closed as a "Server disconnected".
        if type(inner).__name__ in ("ReadError", "WriteError"):
            return CLOSED
        if isinstance(inner, OSError) and inner.strerror:
            return f"network: {inner.strerror}"
    return type(exc).__name__


@dataclass(slots=True)
class _Pause:
    until: float  # time.monotonic()
    reason: str
    auth: bool  # credentials refused: after ``until``, one trial request at a time
    trial_until: float = 0.0  # while a trial request runs, the others keep waiting


class Provider(abc.ABC):
    """Base class of the providers: ``apns``, ``fcm``, ``console``.

    A provider can pause the whole app (:meth:`pause`): after its credentials
    were refused, or when the service asked every client to wait (Retry-After
    on an outage, FCM's project quota). Meanwhile :meth:`paused` answers each
    send without any network traffic, with the seconds left as ``retry_after``,
    so the delivery engine parks the notifications instead of looping.
    """

    kind: ClassVar[str]
    #: Seconds the other requests wait while one trial request finds out whether
    #: refused credentials work again (longer than any request's timeout).
    TRIAL_WAIT: ClassVar[float] = 30.0
    #: Seconds between two log lines about the same failure cause.
    LOG_EVERY: ClassVar[float] = 60.0

    def __init__(self, app: AppConfig) -> None:
        self.app = app
        self._pause: _Pause | None = None
        self._failing = ""  # the cause of the current run of failures (see note())
        self._failures = 0
        self._logged: dict[str, float] = {}  # log key -> when last logged (monotonic)

    @property
    def id(self) -> str:
        """The provider id clients name (``tigase:messenger:apns:1``, ``fcm-xmpp-api``)."""
        return self.app.id

    async def start(self) -> None:
        """Open connections or load credentials. Called inside the running loop."""

    async def close(self) -> None:
        """Release connections; called once at shutdown."""

    @abc.abstractmethod
    async def send(self, request: PushRequest) -> DeliveryResult:
        """Deliver one request. Expected failures come back as results."""

    def note(self, result: DeliveryResult) -> DeliveryResult:
        """Log a run of failures when its cause appears, and its end, not each
        failed request (a 30 s outage is thousands of them); a cause that comes
        and goes (flapping connections) is logged at most every :attr:`LOG_EVERY`."""
        if result.outcome is Outcome.RETRY:
            self._failures += 1
            if result.reason != self._failing:
                self._failing = result.reason
                self._log_once(result.reason, "%s app %s: %s; notifications are kept and "
                               "retried", self.kind, self.app.id, result.reason or "failed")
        elif self._failing:
            self._log_once("", "%s app %s: working again after %d failed request(s)",
                           self.kind, self.app.id, self._failures)
            self._failing, self._failures = "", 0
        return result

    def _log_once(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._logged.get(key, -self.LOG_EVERY) < self.LOG_EVERY:
            return
        if len(self._logged) > 64:  # reasons are few; never let them pile up
            self._logged.clear()
        self._logged[key] = now
        log.warning(message, *args)

    # -- pausing the app ------------------------------------------------------------------

    def paused(self) -> DeliveryResult | None:
        """The answer for a send while the app is paused (no request is made), or
        None: go ahead. After an auth pause, one caller at a time goes ahead as
        the trial; its outcome resumes the app (:meth:`resume`) or pauses it again."""
        pause = self._pause
        if pause is None:
            return None
        now = time.monotonic()
        if now >= pause.until:
            if not pause.auth:
                self._pause = None
                return None
            if now >= pause.trial_until:
                pause.trial_until = now + self.TRIAL_WAIT
                return None
            wait = pause.trial_until - now
        else:
            wait = pause.until - now
        return DeliveryResult(Outcome.RETRY, reason=pause.reason, retry_after=wait,
                              suspended=pause.auth)

    def pause(self, seconds: float, reason: str, *, auth: bool,
              status: int | None = None) -> DeliveryResult:
        """Stop sending for this app for ``seconds``; returns the result for the
        request that caused it. ``auth``: the credentials were refused (logged
        once per pause, and /health is not ready until a request succeeds)."""
        until = time.monotonic() + seconds
        current = self._pause
        if current is None or auth or (not current.auth and until > current.until):
            if auth and (current is None or not current.auth or current.reason != reason):
                log.warning("%s app %s: %s: sending paused for %.0f s", self.kind,
                            self.app.id, reason, seconds)
            self._pause = _Pause(until, reason, auth)
        return DeliveryResult(Outcome.RETRY, status=status, reason=reason, retry_after=seconds,
                              suspended=auth)

    def resume(self) -> None:
        """An answer showed the credentials are accepted: end an auth pause."""
        pause = self._pause
        if pause is not None and pause.auth:
            log.warning("%s app %s: credentials accepted again: sending resumed", self.kind,
                        self.app.id)
            self._pause = None

    async def probe(self, timeout: float) -> ProbeResult:
        """Check, after :meth:`start`, that the provider accepts our credentials,
        without showing anything on any device; never raises for an expected
        failure. Providers that cannot be checked say so."""
        return ProbeResult(ProbeStatus.WARN, f"{self.kind} apps cannot be checked",
                           "nothing to do: this provider offers no test request")
