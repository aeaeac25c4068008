"""Build the provider request for one notification to one registration.

Pure functions, no I/O: what each client shows, decided in one place.

First :func:`presentation` decides *how* a notification appears on the device,
from the dialect and what the publish signals; then the APNs or FCM builder
renders that decision:

=============  ===============================================================
CALL           a call (Jingle propose, ``<encrypted type='voip'>``): a VoIP
               push to the second token; without one, a time-sensitive alert
URGENT         a page (critical, or high with a title): a visible alert that
               breaks through Focus (``time-sensitive``) or Do Not Disturb
               (``critical``)
NOTICE         a titled notice (administrator, pager at normal priority)
MESSAGE        a chat message: a visible, *mutable* alert with a neutral text,
               so that iOS runs the app's Notification Service Extension,
               which decrypts or fetches the message and shows it
WAKE           a silent background push: Tigase priority ``low``, Siskin's
               "messages fetched" (``unread-messages`` 0, no sender, no body),
               or a publish that signals nothing to show
=============  ===============================================================

A publish signals a message when it carries a body, an ``<encrypted>`` payload,
Tigase priority ``high``, or a message count above zero (unless the server marked
the stanza unimportant, as Prosody does with an empty body field): stock Prosody and
ejabberd send no priority element, and a background push for their chat
messages would never be shown (iOS also throttles background pushes to a few
an hour).

Per client family:

- Conversations (p2 dialect): a data-only FCM message ``{"account": <device
  key>[, "channel": <channel key>]}``; the app fetches the message itself.
- Siskin, Snikket iOS, v1 clients (APNs): ``account`` plus either the
  encrypted blob (``encrypted``, ``iv``, forwarded unchanged) or
  ``unread-messages`` (and ``sender`` / ``body`` with ``include_body``).
- Stork and other Tigase-dialect FCM clients: the same keys as FCM data,
  high priority for a message.
- Monal (stateless dialect): a mutable alert, so its extension wakes up and
  fetches the message.

One notification per event: alerts for one account and app share an
``apns-collapse-id`` / FCM collapse key, so a burst replaces rather than
stacks (the app's ``collapse = "none"`` turns that off); a page or notice with
a key collapses on its own key. Bodies and senders reach Apple or Google only
when the app's ``include_body`` is set. Payloads never exceed the provider's
limit: text fields are shortened, the keys clients need never are.

One notification to many devices (a page, a notice): :class:`RequestTemplates`
builds the request once per app and dialect and copies it for every other device,
with the same result as :func:`build_request` device by device.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import operator
from collections.abc import Callable
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
#: What a visible chat alert says until the app's extension replaces it: nothing
#: about the sender or the text, which the extension decrypts or fetches.
GENERIC_TITLE = "New message"
CALL_TITLE = "Incoming call"


class Presentation(enum.Enum):
    """How a notification appears on the device (see the module docstring)."""

    CALL = "call"
    URGENT = "urgent"
    NOTICE = "notice"
    MESSAGE = "message"
    WAKE = "wake"


def presentation(registration: Registration, notification: Notification) -> Presentation:
    """Decide how ``notification`` is shown to the owner of ``registration``."""
    if notification.is_call:
        return Presentation.CALL
    priority = notification.priority
    if priority is Priority.CRITICAL or (notification.title and priority is Priority.HIGH):
        return Presentation.URGENT
    if notification.title:
        return Presentation.NOTICE
    if priority is Priority.LOW:
        return Presentation.WAKE  # the client asked for a silent push
    if registration.dialect is Dialect.MONAL or signals_message(notification):
        return Presentation.MESSAGE
    return Presentation.WAKE


def signals_message(notification: Notification) -> bool:
    """Whether a publish says a message is waiting (what a person should see).

    A count alone does not, when the server marked the stanza unimportant: Prosody
    says ``message-count`` 1 for everything, and tells a chat state or a receipt from
    a message only by leaving ``last-message-body`` empty.
    """
    return bool(notification.encrypted or notification.body
                or notification.priority is Priority.HIGH
                or ((notification.message_count or 0) > 0 and not notification.unimportant))


#: Makes a payload fit a number of bytes (``_fit``), or leaves it whole (``_whole``).
Fitter = Callable[..., dict[str, Any]]


def build_request(registration: Registration, notification: Notification,
                  app: AppConfig, now: float) -> PushRequest:
    """The request ``app``'s provider must send for ``notification``."""
    fmt = app.request_format
    if fmt == "fcm":
        return build_fcm(registration, notification, app, now)
    return build_apns(registration, notification, app, now)


# -- APNs ----------------------------------------------------------------------
def build_apns(registration: Registration, notification: Notification,
               app: AppConfig, now: float, fit: Fitter | None = None) -> ApnsRequest:
    fit = fit or _fit
    shown = presentation(registration, notification)
    if shown is Presentation.CALL and registration.voip_token:
        return _apns_voip(registration, notification, app, now)
    custom = _visible_fields(registration, notification, app)
    if shown is Presentation.WAKE:
        # Background pushes MUST use priority 5 and push type "background";
        # nothing is displayed, so nothing is collapsed.
        return ApnsRequest(
            token=registration.token, topic=app.topic, push_type="background", priority=5,
            expiration=int(now) + app.ttl,
            payload=fit({"aps": {"content-available": 1}, **custom}, APNS_MAX_PAYLOAD),
        )
    alert: dict[str, str]
    aps: dict[str, Any]
    priority = 10
    if shown is Presentation.URGENT or shown is Presentation.NOTICE:
        alert = {"title": notification.title or GENERIC_TITLE}
        if notification.body and app.include_body:
            alert["body"] = notification.body
        aps = {"alert": alert, "mutable-content": 1}
        if notification.priority is Priority.CRITICAL:
            aps["interruption-level"] = "critical"
            aps["sound"] = {"critical": 1, "name": "default", "volume": 1.0}
        elif shown is Presentation.URGENT:  # HIGH: breaks through Focus, not silent mode
            aps["interruption-level"] = "time-sensitive"
            aps["sound"] = "default"
        else:
            priority = 5  # shown, without urgency
    elif shown is Presentation.CALL:  # a call to a device without a VoIP token
        aps = {"alert": {"title": CALL_TITLE}, "mutable-content": 1, "sound": "default",
               "interruption-level": "time-sensitive"}
    else:  # MESSAGE: the app's notification service extension only runs for a mutable alert
        aps = {"alert": {"title": GENERIC_TITLE}, "mutable-content": 1, "sound": "default"}
    collapse = _collapse_id(registration, notification, app, shown)
    if collapse is not None or shown is Presentation.MESSAGE:
        aps["thread-id"] = _thread_id(registration, notification, app)
    # Only a page's or notice's own text may be shortened; the neutral titles stay whole.
    own_text = shown is Presentation.URGENT or shown is Presentation.NOTICE
    payload = fit({"aps": aps, **custom}, APNS_MAX_PAYLOAD,
                  nested=aps["alert"] if own_text else None)
    return ApnsRequest(
        token=registration.token, topic=app.topic, push_type="alert", priority=priority,
        expiration=int(now) + app.ttl, payload=payload, collapse_id=collapse,
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
              app: AppConfig, now: float, fit: Fitter | None = None) -> FcmRequest:
    if registration.dialect is Dialect.P2:
        # Conversations wakes up and fetches; it never wants content from us.
        assert registration.device_key is not None
        data = {"account": registration.device_key}
        if registration.channel_key:
            data["channel"] = registration.channel_key
        return FcmRequest(token=registration.token, data=data, priority="high",
                          ttl=app.ttl, collapse_key=registration.device_key[:6])
    shown = presentation(registration, notification)
    fields = _visible_fields(registration, notification, app)
    data = {key: str(value) for key, value in fields.items()}
    # Android delays normal-priority data messages in Doze: a message, a call
    # or a page must wake the app now (the Tigase guide's "priority": "high").
    urgent = shown is not Presentation.WAKE and shown is not Presentation.NOTICE
    if urgent:
        data["priority"] = "high"
    data = (fit or _fit)(data, FCM_MAX_PAYLOAD)
    title = body = channel = None
    if notification.title:  # a page or a notice: shown by Android on the app's channel
        title = notification.title
        body = notification.body if app.include_body else None
        channel = app.android_channel
    collapse = _collapse_id(registration, notification, app, shown)
    return FcmRequest(
        token=registration.token, data=data, priority="high" if urgent else "normal",
        ttl=app.call_ttl if shown is Presentation.CALL else app.ttl,
        collapse_key=collapse, title=title, body=body, channel_id=channel,
        tag=collapse if title is not None else None,
    )


# -- one notification, many devices -------------------------------------------------
#: Every field of a notification, as a tuple (a C getter: cheap to take per device).
_notification_fields = operator.attrgetter(
    *(field.name for field in dataclasses.fields(Notification)))


@dataclasses.dataclass(slots=True, frozen=True)
class _Prototype:
    """A device's request, unfitted, that other devices of its app and dialect copy."""

    app: AppConfig
    request: PushRequest
    fields: dict[str, Any]  # the request's fields, for a copy (dataclasses.replace's work)
    payload: dict[str, Any]  # the request's payload (APNs) or data (FCM), whole
    now: float
    limit: int
    cost: int  # _cost(payload) without the account's value
    size: int  # _size(payload) without the account's value


class RequestTemplates:
    """The requests for the many devices of one notification (a page, a notice).

    Paging 10,000 devices takes 10,000 requests that differ in the device token, the
    payload's ``account`` and the expiration only: the first device of each app and
    dialect gets its request built whole, the others a copy with those three changed,
    sharing the rest (the ``aps`` dict, the notification's fields, the headers' values).
    Where a request depends on more of the registration (a call: the VoIP token; a chat
    message's thread: the conversation; Conversations' keys) or would have to be
    shortened, :func:`build_request` builds it. Either way each request equals
    :func:`build_request`'s for the same arguments (tests compare them), also when the
    caller changes the notification between two devices (its fields are compared).
    """

    def __init__(self, notification: Notification) -> None:
        self.notification = notification
        self._prototypes: dict[tuple[str, Dialect], _Prototype | None] = {}
        self._content = _notification_fields(notification)

    def build(self, registration: Registration, app: AppConfig, now: float) -> PushRequest:
        content = _notification_fields(self.notification)
        if content != self._content:  # changed in place by the caller: start afresh
            self._content = content
            self._prototypes.clear()
        key = (app.id, registration.dialect)
        try:
            prototype = self._prototypes[key]
        except KeyError:
            prototype = self._prototypes[key] = self._prototype(registration, app, now)
        if prototype is None or prototype.app is not app:
            return build_request(registration, self.notification, app, now)
        account = registration.account
        if prototype.cost + _cost(account) > _budget(prototype.limit) \
                and prototype.size + _json_size(account) > prototype.limit:
            return build_request(registration, self.notification, app, now)  # to shorten
        payload = {**prototype.payload, "account": account}  # same key order
        request = prototype.request
        if isinstance(request, ApnsRequest):
            return ApnsRequest(**{
                **prototype.fields, "token": registration.token, "payload": payload,
                "expiration": request.expiration - int(prototype.now) + int(now)})
        return FcmRequest(**{
            **prototype.fields, "token": registration.token, "data": payload})

    def _prototype(self, registration: Registration, app: AppConfig, now: float,
                   ) -> _Prototype | None:
        notification = self.notification
        if notification.is_call or registration.dialect is Dialect.P2:
            return None  # the VoIP token; Conversations' device and channel keys
        request: PushRequest
        if app.request_format == "fcm":
            fcm = request = build_fcm(registration, notification, app, now, _whole)
            payload, limit = fcm.data, FCM_MAX_PAYLOAD
            collapse = fcm.collapse_key
            threaded = False
        else:
            apns = request = build_apns(registration, notification, app, now, _whole)
            payload, limit = apns.payload, APNS_MAX_PAYLOAD
            collapse = apns.collapse_id
            threaded = "thread-id" in payload.get("aps", {})
        if not notification.collapse_key and (collapse is not None or threaded):
            return None  # collapsed or threaded per conversation: the account's, the token's
        account = payload.get("account")
        if not isinstance(account, str) or account != registration.account:
            return None
        fields = {field.name: getattr(request, field.name)
                  for field in dataclasses.fields(request) if field.init}
        return _Prototype(app, request, fields, payload, now, limit,
                          _cost(payload) - _cost(account), _size(payload) - _json_size(account))


# -- one notification per event ----------------------------------------------------
def _digest(*parts: str) -> str:
    # Stable across restarts and instances, reveals nothing, within APNs' 64 bytes.
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _conversation(registration: Registration) -> str:
    # A Monal registration knows its server's domain, not its account: the token
    # is the narrowest key it has.
    if registration.dialect is Dialect.MONAL:
        return registration.token
    return registration.account


def _collapse_id(registration: Registration, notification: Notification, app: AppConfig,
                 shown: Presentation) -> str | None:
    """The ``apns-collapse-id`` / FCM collapse key, or None to stack."""
    if notification.collapse_key:  # a page or keyed notice replaces its own earlier push
        return _digest("key", notification.collapse_key)
    if shown is Presentation.MESSAGE and app.collapse == "account":
        return _digest(app.id, _conversation(registration))
    return None


def _thread_id(registration: Registration, notification: Notification,
               app: AppConfig) -> str:
    """Groups an account's alerts in Notification Center (pages by their key)."""
    if notification.collapse_key:
        return _digest("key", notification.collapse_key)
    return _digest(app.id, _conversation(registration))


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
    """Whether ``value``'s JSON surely fits ``limit`` bytes, without serialising it."""
    return _cost(value) <= _budget(limit)


def _budget(limit: int) -> int:
    return limit // 6


def _cost(item: Any) -> int:
    """An upper bound of ``item``'s JSON in bytes, over 6: its ``repr`` (C code, a
    third of the time of a walk in Python) has the JSON's structure, quotes and
    separators, and writes each character of a string as at least one character,
    where JSON takes at most 6 bytes (``\\uXXXX``); numbers, ``True``, ``False``
    and ``None`` take as many characters as ``1.5``, ``true``, ``false`` and
    ``null`` (``inf`` fewer than ``Infinity``, but not 6 times fewer)."""
    return len(repr(item))


def _whole(payload: dict[str, Any], limit: int, nested: Any = None) -> dict[str, Any]:
    """A :data:`Fitter` that leaves the payload as it is (see :class:`RequestTemplates`)."""
    return payload


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode())


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
