"""Push providers: one small class per service behind :class:`Provider`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import ApnsRequest, FcmRequest, ProbeResult, ProbeStatus, Provider, PushRequest

if TYPE_CHECKING:
    from ..config import AppConfig

__all__ = ["ApnsRequest", "FcmRequest", "ProbeResult", "ProbeStatus", "Provider", "PushRequest",
           "create_provider"]


def create_provider(app: AppConfig) -> Provider:
    """Build the provider for one configured app.

    Heavy SDKs are imported here, only for the kinds actually configured.
    """
    if app.type == "apns":
        from .apns import ApnsProvider

        return ApnsProvider(app)
    if app.type == "fcm":
        from .fcm import FcmProvider

        return FcmProvider(app)
    if app.type == "console":
        from .console import ConsoleProvider

        return ConsoleProvider(app)
    raise ValueError(f"unknown provider type {app.type!r}")
