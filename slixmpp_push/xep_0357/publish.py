"""Parse a server's publish IQ straight from its XML.

This is the app server's hot path: walking ``iq.xml`` with ElementTree costs a
fraction of going through slixmpp's stanza interfaces (see libraries.md), and
it yields the typed :class:`~slixmpp_push.models.Notification` the rest of the
code works with.

What a notification keeps is bounded, since it may wait in the pending queue
(memory and store) for a day: a body longer than any push can carry is cut to
:data:`MAX_BODY_BYTES` here (the payload builder cuts it further to fit; refusing
it would make ejabberd drop the registration over one long message), while a
field no conforming server sends that long (a sender longer than a JID can be,
an encrypted blob beyond any payload, a publish-options value beyond 4096
bytes) is refused as malformed, naming it.

A pager's page form (:data:`~slixmpp_push.xep_0357.stanza.PAGE_FORM_TYPE`) is read
into :class:`PageFields` beside the notification, never into it: whether it counts
depends on who published, which the app server decides after the look-up. It is
read leniently (cut, or a field left out, never refused), since a stranger's page
form is ignored rather than answered with an error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from ..limits import MAX_FIELD_BYTES, quoted, too_long
from ..models import Jingle, Notification, Priority
from .stanza import (
    NS,
    NS_ENCRYPT,
    NS_JINGLE,
    NS_PRIORITY,
    PAGE_FORM_TYPE,
    PUBLISH_OPTIONS_FORM_TYPES,
    SUMMARY_FORM_TYPE,
)

_PUBSUB = "{http://jabber.org/protocol/pubsub}"
_DATA = "{jabber:x:data}"
#: Where a publish IQ holds its publish element (ElementTree path below the ``iq``).
PUBLISH_PATH = f"{_PUBSUB}pubsub/{_PUBSUB}publish"
_NOTIFICATION = f"{_PUBSUB}item/{{{NS}}}notification"
_OPTIONS_FORM = f"{_PUBSUB}pubsub/{_PUBSUB}publish-options/{_DATA}x"
_ENCRYPTED = f"{{{NS_ENCRYPT}}}encrypted"
_PRIORITY = f"{{{NS_PRIORITY}}}priority"
_JINGLE = f"{{{NS_JINGLE}}}jingle"
_JINGLE_MEDIA = f"{{{NS_JINGLE}}}media"


#: The most of a message body any push carries (APNs and FCM payloads: 4096 bytes).
MAX_BODY_BYTES = 4096
#: RFC 7622: a JID is at most 3 × 1023 bytes plus the '@' and '/'.
MAX_JID_BYTES = 3071
#: The largest payload (an APNs VoIP push): an encrypted blob beyond it never fits.
MAX_ENCRYPTED_BYTES = 5120
_PRIORITIES = {priority.value: priority for priority in Priority}


class MalformedPublish(ValueError):
    """The publish cannot be understood; answered with ``modify/bad-request``."""


@dataclass(slots=True, frozen=True)
class PageFields:
    """What a pager says about its page: honoured only from a trusted publisher.

    Applied, they make a page published by a remote pager render as one the pager
    inside the app server sends (:mod:`slixmpp_push.payloads`): the page's title, its
    priority (critical or time-sensitive alerts, high priority on FCM) and its
    collapse key. ``body`` follows the app's ``include_body`` like any page's.
    """

    title: str
    body: str | None = None
    priority: Priority | None = None  # None: the publish's own (Tigase) priority
    key: str | None = None

    def apply(self, notification: Notification) -> None:
        """Make ``notification`` the page's push (the summary's text was for other app
        servers, which cannot read this form)."""
        notification.title = self.title
        notification.body = self.body
        if self.priority is not None:
            notification.priority = self.priority
        notification.collapse_key = self.key


@dataclass(slots=True)
class Publish:
    node: str
    notification: Notification
    #: A page form, whoever sent it: the app server applies it only for a trusted publisher.
    page: PageFields | None = None


def form_values(form: Element | None) -> dict[str, str]:
    """``var → first value`` of a data form; empty fields map to ``""``."""
    values: dict[str, str] = {}
    if form is None:
        return values
    for item in form.iter(f"{_DATA}field"):
        var = item.get("var")
        if not var:
            continue
        value = item.find(f"{_DATA}value")
        values[var] = (value.text or "") if value is not None else ""
    return values


def _count(value: str | None, field: str) -> int | None:
    if not value:
        return None
    try:
        count = int(value)
    except ValueError:
        raise MalformedPublish(f"summary field {field!r} is not a number") from None
    if count < 0:
        raise MalformedPublish(f"summary field {field!r} is negative")
    return count


def _bounded(value: str | None, field: str, limit: int = MAX_FIELD_BYTES) -> str | None:
    if value is not None and too_long(value, limit):
        raise MalformedPublish(f"field {quoted(field)} is longer than {limit} bytes")
    return value


def _cut(text: str, limit: int = MAX_BODY_BYTES) -> str:
    if not too_long(text, limit):
        return text
    return text.encode()[:limit].decode(errors="ignore")


def _page(fields: dict[str, str]) -> PageFields | None:
    """The page form's fields, bounded; None when it has no title (nothing to show)."""
    title = fields.get("title", "").strip()
    if not title:
        return None
    body = fields.get("body")
    key = fields.get("key")
    return PageFields(title=_cut(title, MAX_FIELD_BYTES), body=_cut(body) if body else None,
                      priority=_PRIORITIES.get(fields.get("priority", "").strip()),
                      key=_cut(key, MAX_FIELD_BYTES) if key else None)


def parse_publish(iq: Element) -> Publish:
    """Read node, summary, Tigase extensions and publish-options of a publish IQ."""
    publish = iq.find(PUBLISH_PATH)
    if publish is None:
        raise MalformedPublish("no pubsub publish element")
    node = _bounded(publish.get("node"), "node")  # ours are 12 characters, tokens 200
    if not node:
        raise MalformedPublish("publish has no node")
    element = publish.find(_NOTIFICATION)
    if element is None:
        raise MalformedPublish("no urn:xmpp:push:0 notification in the published item")

    notification = Notification(received_at=time.time())
    page: PageFields | None = None
    for form in element.iterfind(f"{_DATA}x"):
        fields = form_values(form)
        kind = fields.get("FORM_TYPE", SUMMARY_FORM_TYPE)
        if kind == PAGE_FORM_TYPE:
            page = _page(fields)
            continue
        if kind != SUMMARY_FORM_TYPE:
            continue
        notification.message_count = _count(fields.get("message-count"), "message-count")
        notification.pending_subscriptions = _count(
            fields.get("pending-subscription-count"), "pending-subscription-count")
        notification.sender = _bounded(fields.get("last-message-sender") or None,
                                       "last-message-sender", MAX_JID_BYTES)
        body = fields.get("last-message-body")
        notification.body = _cut(body) if body else None
        notification.unimportant = fields.get("last-message-body") == ""

    encrypted = element.find(_ENCRYPTED)
    if encrypted is not None:
        notification.encrypted = _bounded((encrypted.text or "").strip() or None,
                                          "encrypted", MAX_ENCRYPTED_BYTES)
        notification.iv = _bounded(encrypted.get("iv"), "iv")
        notification.encrypted_type = encrypted.get("type")
        if notification.encrypted is None or not notification.iv:
            raise MalformedPublish("encrypted payload without data or iv")

    priority = element.find(_PRIORITY)
    if priority is not None:
        level = (priority.text or "").strip()
        if level == "high":
            notification.priority = Priority.HIGH
        elif level == "low":
            notification.priority = Priority.LOW

    jingle = element.find(_JINGLE)
    if jingle is not None:
        notification.jingle = Jingle(
            sid=_bounded(jingle.get("sid", ""), "sid") or "",
            action=_bounded(jingle.get("action", "propose"), "action") or "",
            media=tuple(_bounded(m.text or "", "media") or "" for m in
                        jingle.iterfind(_JINGLE_MEDIA)),
        )

    options = iq.find(_OPTIONS_FORM)
    if options is not None:
        values = form_values(options)
        form_type = values.pop("FORM_TYPE", None)
        if form_type is not None and form_type not in PUBLISH_OPTIONS_FORM_TYPES:
            raise MalformedPublish(
                f"publish-options has unknown FORM_TYPE {quoted(form_type)}")
        for var, value in values.items():
            _bounded(value, var)
        notification.publish_options = values
    return Publish(node=node, notification=notification, page=page)
