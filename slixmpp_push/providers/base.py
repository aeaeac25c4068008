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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import DeliveryResult

if TYPE_CHECKING:
    from ..config import AppConfig


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


class Provider(abc.ABC):
    """Base class of the providers: ``apns``, ``fcm``, ``console``."""

    kind: ClassVar[str]

    def __init__(self, app: AppConfig) -> None:
        self.app = app

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

    async def probe(self, timeout: float) -> ProbeResult:
        """Check, after :meth:`start`, that the provider accepts our credentials,
        without showing anything on any device; never raises for an expected
        failure. Providers that cannot be checked say so."""
        return ProbeResult(ProbeStatus.WARN, f"{self.kind} apps cannot be checked",
                           "nothing to do: this provider offers no test request")
