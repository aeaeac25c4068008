"""The one interface every push provider implements.

A provider owns the connection to one configured app (an APNs bundle id, an
FCM project, the console). :meth:`Provider.send` is its only network seam: it
takes a request already built by :mod:`slixmpp_push.payloads` and returns a
:class:`~slixmpp_push.errors.DeliveryResult`; it never raises for an expected
outcome (dead token, outage, throttling).
"""

from __future__ import annotations

import abc
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
    extra: dict[str, Any] = field(default_factory=dict)


PushRequest = ApnsRequest | FcmRequest


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
