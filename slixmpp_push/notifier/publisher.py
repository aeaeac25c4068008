"""Publish to a remote app server as an XEP-0357 publisher (any bot, any app server).

The same publish IQ a user's server sends: a summary form, the Tigase
priority element for urgent pages, and the secret in publish-options. Any app
server shows that as a message. Beside the summary goes the page form
(:data:`~slixmpp_push.xep_0357.stanza.PAGE_FORM_TYPE`: title, body, priority,
collapse key), which other app servers ignore, and from which slixmpp-push's app
server, when it trusts this publisher, renders the page exactly as its own pager
would: the title, a critical or time-sensitive alert, one notification per page.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree as ET

from slixmpp.basexmpp import BaseXMPP

from ..models import Notification
from ..xep_0357.stanza import (
    NS,
    NS_PRIORITY,
    PAGE_FORM_TYPE,
    PUBLISH_OPTIONS_FORM_TYPE,
    SUMMARY_FORM_TYPE,
)

PUBSUB = "http://jabber.org/protocol/pubsub"
DATA = "jabber:x:data"


@dataclass(slots=True, frozen=True)
class RemoteTarget:
    """A node on someone else's app server (what a user's <enable/> names)."""

    jid: str
    node: str
    secret: str | None = None


def _form(parent: ET.Element, form_type: str, fields: dict[str, str]) -> None:
    form = ET.SubElement(parent, f"{{{DATA}}}x", type="submit")
    for var, value in {"FORM_TYPE": form_type, **fields}.items():
        field = ET.SubElement(form, f"{{{DATA}}}field", var=var)
        ET.SubElement(field, f"{{{DATA}}}value").text = value


def _page_fields(notification: Notification) -> dict[str, str]:
    assert notification.title
    fields = {"title": notification.title, "priority": notification.priority.value}
    if notification.body:
        fields["body"] = notification.body
    if notification.collapse_key:
        fields["key"] = notification.collapse_key
    return fields


def pubsub_element(target: RemoteTarget, notification: Notification) -> ET.Element:
    """The ``<pubsub>`` of the publish IQ for ``notification`` to ``target``."""
    pubsub = ET.Element(f"{{{PUBSUB}}}pubsub")
    item = ET.SubElement(ET.SubElement(pubsub, f"{{{PUBSUB}}}publish", node=target.node),
                         f"{{{PUBSUB}}}item")
    element = ET.SubElement(item, f"{{{NS}}}notification")
    summary = {"message-count": str(notification.message_count or 1)}
    if notification.sender:
        summary["last-message-sender"] = notification.sender
    text = " — ".join(t for t in (notification.title, notification.body) if t)
    if text:
        summary["last-message-body"] = text
    _form(element, SUMMARY_FORM_TYPE, summary)
    if notification.title:  # a page (or a notice): see the module docstring
        _form(element, PAGE_FORM_TYPE, _page_fields(notification))
    if notification.priority.is_urgent:
        ET.SubElement(element, f"{{{NS_PRIORITY}}}priority").text = "high"
    if target.secret is not None:
        options = ET.SubElement(pubsub, f"{{{PUBSUB}}}publish-options")
        _form(options, PUBLISH_OPTIONS_FORM_TYPE, {"secret": target.secret})
    return pubsub


async def publish(xmpp: BaseXMPP, target: RemoteTarget, notification: Notification,
                  timeout: float = 15.0, *, await_reply: bool = True) -> None:
    """Send one publish; raises slixmpp's IqError / IqTimeout when it is refused.

    ``await_reply=False`` sends it and returns: with several active instances of one
    component (all-active) the server may route the reply to another instance, so
    waiting for it would report a delivered publish as a timeout.
    """
    iq = xmpp.make_iq_set(ito=target.jid)
    iq.xml.append(pubsub_element(target, notification))
    if not await_reply:
        xmpp.send(iq)  # not Iq.send: that would wait for a reply that may go elsewhere
        return
    await iq.send(timeout=timeout)
