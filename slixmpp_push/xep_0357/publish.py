"""Parse a server's publish IQ straight from its XML.

This is the app server's hot path: walking ``iq.xml`` with ElementTree costs a
fraction of going through slixmpp's stanza interfaces (see libraries.md), and
it yields the typed :class:`~slixmpp_push.models.Notification` the rest of the
code works with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from ..models import Jingle, Notification, Priority
from .stanza import (
    NS,
    NS_ENCRYPT,
    NS_JINGLE,
    NS_PRIORITY,
    PUBLISH_OPTIONS_FORM_TYPES,
    SUMMARY_FORM_TYPE,
)

_PUBSUB = "{http://jabber.org/protocol/pubsub}"
_DATA = "{jabber:x:data}"
_PUBLISH = f"{_PUBSUB}pubsub/{_PUBSUB}publish"
_NOTIFICATION = f"{_PUBSUB}item/{{{NS}}}notification"
_OPTIONS_FORM = f"{_PUBSUB}pubsub/{_PUBSUB}publish-options/{_DATA}x"
_ENCRYPTED = f"{{{NS_ENCRYPT}}}encrypted"
_PRIORITY = f"{{{NS_PRIORITY}}}priority"
_JINGLE = f"{{{NS_JINGLE}}}jingle"
_JINGLE_MEDIA = f"{{{NS_JINGLE}}}media"


class MalformedPublish(ValueError):
    """The publish cannot be understood; answered with ``modify/bad-request``."""


@dataclass(slots=True)
class Publish:
    node: str
    notification: Notification


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


def parse_publish(iq: Element) -> Publish:
    """Read node, summary, Tigase extensions and publish-options of a publish IQ."""
    publish = iq.find(_PUBLISH)
    if publish is None:
        raise MalformedPublish("no pubsub publish element")
    node = publish.get("node")
    if not node:
        raise MalformedPublish("publish has no node")
    element = publish.find(_NOTIFICATION)
    if element is None:
        raise MalformedPublish("no urn:xmpp:push:0 notification in the published item")

    notification = Notification(received_at=time.time())
    for form in element.iterfind(f"{_DATA}x"):
        fields = form_values(form)
        if fields.get("FORM_TYPE", SUMMARY_FORM_TYPE) != SUMMARY_FORM_TYPE:
            continue
        notification.message_count = _count(fields.get("message-count"), "message-count")
        notification.pending_subscriptions = _count(
            fields.get("pending-subscription-count"), "pending-subscription-count")
        notification.sender = fields.get("last-message-sender") or None
        notification.body = fields.get("last-message-body") or None
        notification.unimportant = fields.get("last-message-body") == ""

    encrypted = element.find(_ENCRYPTED)
    if encrypted is not None:
        notification.encrypted = (encrypted.text or "").strip() or None
        notification.iv = encrypted.get("iv")
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
            sid=jingle.get("sid", ""),
            action=jingle.get("action", "propose"),
            media=tuple((m.text or "") for m in jingle.iterfind(_JINGLE_MEDIA)),
        )

    options = iq.find(_OPTIONS_FORM)
    if options is not None:
        values = form_values(options)
        form_type = values.pop("FORM_TYPE", None)
        if form_type is not None and form_type not in PUBLISH_OPTIONS_FORM_TYPES:
            raise MalformedPublish(f"publish-options has unknown FORM_TYPE {form_type!r}")
        notification.publish_options = values
    return Publish(node=node, notification=notification)
