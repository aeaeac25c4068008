"""Build the provider request for one notification to one registration.

Pure functions, no I/O: what each client reads, decided in one place.

- Conversations (p2 dialect): a data-only FCM message ``{"account": <device
  key>[, "channel": <channel key>]}``; the app fetches the message itself.
- Siskin / Stork (Tigase dialect): ``account`` plus either the encrypted blob
  (``encrypted``, ``iv``, forwarded unchanged) or ``sender`` / ``body`` /
  ``unread-messages``; a call goes as VoIP push to the second token.
- Monal (stateless dialect): a mutable alert, so its notification service
  extension wakes up and fetches the message.

Bodies and senders reach Apple or Google only when the app's
``include_body`` is set. Payloads never exceed the provider's limit: text
fields are shortened, the keys clients need never are.
"""

from __future__ import annotations

import json
from typing import Any

from .config import AppConfig
from .models import Dialect, Notification, Priority, Registration
from .providers.base import ApnsRequest, FcmRequest, PushRequest

APNS_MAX_PAYLOAD = 4096
APNS_VOIP_MAX_PAYLOAD = 5120
FCM_MAX_PAYLOAD = 4096
#: Keys whose text may be shortened to fit, longest first.
TRUNCATABLE = ("body", "sender", "nickname", "title")
ELLIPSIS = "…"
GENERIC_TITLE = "New message"


def build_request(registration: Registration, notification: Notification,
                  app: AppConfig, now: float) -> PushRequest:
    """The request ``app``'s provider must send for ``notification``."""
    fmt = app.format or ("apns" if app.type == "console" else app.type)
    if fmt == "fcm":
        return build_fcm(registration, notification, app, now)
    return build_apns(registration, notification, app, now)


# -- APNs ----------------------------------------------------------------------
def build_apns(registration: Registration, notification: Notification,
               app: AppConfig, now: float) -> ApnsRequest:
    if notification.is_call and registration.voip_token:
        return _apns_voip(registration, notification, app, now)
    custom = _visible_fields(registration, notification, app)
    if registration.dialect is Dialect.MONAL:
        # Monal's notification service extension only runs for a mutable alert.
        aps: dict[str, Any] = {"alert": {"title": GENERIC_TITLE}, "mutable-content": 1,
                               "sound": "default"}
        push_type, priority = "alert", 10
    elif notification.priority.is_urgent or notification.is_call:
        alert: dict[str, str] = {"title": notification.title or custom.get("sender")
                                 or GENERIC_TITLE}
        if notification.title and notification.body and app.include_body:
            alert["body"] = notification.body
        aps = {"alert": alert, "mutable-content": 1, "sound": "default"}
        if notification.priority is Priority.CRITICAL:
            aps["interruption-level"] = "critical"
            aps["sound"] = {"critical": 1, "name": "default", "volume": 1.0}
        else:  # HIGH: breaks through Focus, not through silent mode
            aps["interruption-level"] = "time-sensitive"
        push_type, priority = "alert", 10
    elif notification.title:
        # A notice with a title (pager, administrator) is shown, without urgency.
        alert = {"title": notification.title}
        if notification.body and app.include_body:
            alert["body"] = notification.body
        aps = {"alert": alert, "mutable-content": 1}
        push_type, priority = "alert", 5
    else:
        # Background pushes MUST use priority 5 and push type "background".
        aps = {"content-available": 1}
        push_type, priority = "background", 5
    payload: dict[str, Any] = {"aps": aps, **custom}
    payload = _fit(payload, APNS_MAX_PAYLOAD, nested=aps.get("alert"))
    return ApnsRequest(
        token=registration.token, topic=app.topic, push_type=push_type, priority=priority,
        expiration=int(now) + app.ttl, payload=payload,
    )


def _apns_voip(registration: Registration, notification: Notification,
               app: AppConfig, now: float) -> ApnsRequest:
    assert registration.voip_token is not None
    payload: dict[str, Any] = {"account": registration.account}
    if notification.encrypted:
        payload["encrypted"] = notification.encrypted
        payload["iv"] = notification.iv
    else:
        if app.include_body and notification.sender:
            payload["sender"] = notification.sender
        if notification.jingle is not None:
            payload["sid"] = notification.jingle.sid
            payload["media"] = list(notification.jingle.media)
    return ApnsRequest(
        token=registration.voip_token, topic=f"{app.topic}.voip", push_type="voip",
        priority=10, expiration=int(now) + app.call_ttl,
        payload=_fit(payload, APNS_VOIP_MAX_PAYLOAD),
    )


# -- FCM -----------------------------------------------------------------------
def build_fcm(registration: Registration, notification: Notification,
              app: AppConfig, now: float) -> FcmRequest:
    urgent = notification.priority.is_urgent or notification.is_call
    if registration.dialect is Dialect.P2:
        # Conversations wakes up and fetches; it never wants content from us.
        assert registration.device_key is not None
        data = {"account": registration.device_key}
        if registration.channel_key:
            data["channel"] = registration.channel_key
        return FcmRequest(token=registration.token, data=data, priority="high",
                          ttl=app.ttl, collapse_key=registration.device_key[:6])
    fields = _visible_fields(registration, notification, app)
    data = {key: str(value) for key, value in fields.items()}
    if urgent:
        data["priority"] = "high"
    data = _fit(data, FCM_MAX_PAYLOAD)
    title = body = channel = None
    if notification.title:  # a page or a notice: shown by Android on the app's channel
        title = notification.title
        body = notification.body if app.include_body else None
        channel = app.android_channel
    return FcmRequest(
        token=registration.token, data=data, priority="high" if urgent else "normal",
        ttl=app.call_ttl if notification.is_call else app.ttl,
        title=title, body=body, channel_id=channel,
    )


# -- shared ----------------------------------------------------------------------
def _visible_fields(registration: Registration, notification: Notification,
                    app: AppConfig) -> dict[str, Any]:
    """The custom keys (Tigase names) a notification carries for this app."""
    fields: dict[str, Any] = {"account": registration.account}
    if notification.encrypted:
        fields["encrypted"] = notification.encrypted
        fields["iv"] = notification.iv
        return fields
    if notification.message_count is not None:
        fields["unread-messages"] = notification.message_count
    if app.include_body:
        if notification.sender:
            fields["sender"] = notification.sender
        if notification.body:
            fields["body"] = notification.body
        if notification.title:
            fields["title"] = notification.title
    return fields


def _surely_small(value: Any, limit: int) -> bool:
    """A cheap upper bound: each character is at most 6 bytes of JSON (\\uXXXX)."""
    budget = limit // 6 - 16

    def cost(item: Any) -> int:
        if isinstance(item, dict):
            return sum(cost(k) + cost(v) + 4 for k, v in item.items()) + 2
        if isinstance(item, list | tuple):
            return sum(cost(v) + 2 for v in item) + 2
        return len(str(item)) + 2

    return cost(value) <= budget


def _size(payload: dict[str, Any]) -> int:
    # Measured as aioapns serialises it (default separators, with spaces):
    # the compact form would undercount by a few bytes and APNs answers 413.
    return len(json.dumps(payload, ensure_ascii=False).encode())


def _fit(payload: dict[str, Any], limit: int, nested: Any = None) -> dict[str, Any]:
    """Shorten text fields until ``payload`` fits ``limit`` bytes of JSON."""
    if _surely_small(payload, limit):
        return payload  # the common case, without serialising twice
    excess = _size(payload) - limit
    if excess <= 0:
        return payload
    holders = [payload] + ([nested] if isinstance(nested, dict) else [])
    for key in TRUNCATABLE:
        for holder in holders:
            text = holder.get(key)
            if not isinstance(text, str) or not text:
                continue
            holder[key] = _shorten(text, excess)
            excess = _size(payload) - limit
            if excess <= 0:
                return payload
    if "encrypted" in payload:
        # An encrypted blob cannot be cut; fall back to a bare wake-up.
        payload.pop("encrypted")
        payload.pop("iv", None)
        if _size(payload) <= limit:
            return payload
    raise ValueError(f"payload cannot fit {limit} bytes")


def _shorten(text: str, excess: int) -> str:
    """Drop at least ``excess`` UTF-8 bytes from the end of ``text``, adding an ellipsis."""
    data = text.encode()
    keep = max(0, len(data) - excess - len(ELLIPSIS.encode()))
    return data[:keep].decode(errors="ignore") + ELLIPSIS
