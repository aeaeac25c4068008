"""Stanzas of XEP-0357 (``urn:xmpp:push:0``) and the Tigase push extensions.

Declarative only; parsing for the publish hot path lives in
:mod:`slixmpp_push.xep_0357.publish`.
"""

from __future__ import annotations

from typing import ClassVar

from slixmpp import Iq, Message
from slixmpp.plugins.xep_0004 import Form
from slixmpp.plugins.xep_0060.stanza.pubsub import Item, Pubsub
from slixmpp.xmlstream import ElementBase, register_stanza_plugin

NS = "urn:xmpp:push:0"
SUMMARY_FORM_TYPE = "urn:xmpp:push:summary"
PUBLISH_OPTIONS_FORM_TYPE = "http://jabber.org/protocol/pubsub#publish-options"
# Sent by some clients instead of the standard one; servers echo it verbatim.
PUBLISH_OPTIONS_FORM_TYPE_ALT = "http://jabber.org/protocol/publish-options"
PUBLISH_OPTIONS_FORM_TYPES = frozenset({PUBLISH_OPTIONS_FORM_TYPE, PUBLISH_OPTIONS_FORM_TYPE_ALT})

NS_ENCRYPT = "tigase:push:encrypt:0"
NS_ENCRYPT_AES_GCM = "tigase:push:encrypt:aes-128-gcm"
NS_PRIORITY = "tigase:push:priority:0"
NS_JINGLE = "tigase:push:jingle:0"
NS_FILTER_GROUPCHAT = "tigase:push:filter:groupchat:0"
NS_FILTER_MUTED = "tigase:push:filter:muted:0"
NS_FILTER_IGNORE_UNKNOWN = "tigase:push:filter:ignore-unknown:0"

#: Our own data form in a publish's ``<notification>``, beside the summary: what a pager
#: says about its page (``title``, ``body``, ``priority``, ``key``). Other app servers
#: ignore a form of a FORM_TYPE they do not know; ours honours it only from a trusted
#: publisher (see :class:`~slixmpp_push.xep_0357.publish.PageFields`).
PAGE_FORM_TYPE = "https://codeberg.org/slixmpp-push/slixmpp-push/protocol/page"


class Enable(ElementBase):
    """``<enable jid node [away]>``: turn push on at the user's own server."""

    name = "enable"
    namespace = NS
    plugin_attrib = "push_enable"
    interfaces = {"jid", "node", "away"}


class Disable(ElementBase):
    """``<disable jid [node]>``: turn one (or, without node, every) push target off."""

    name = "disable"
    namespace = NS
    plugin_attrib = "push_disable"
    interfaces = {"jid", "node"}


class Notification(ElementBase):
    """``<notification>``: the payload of a publish, with an optional summary form."""

    name = "notification"
    namespace = NS
    plugin_attrib = "push_notification"
    interfaces: ClassVar[set[str]] = set()


class EncryptRequest(ElementBase):
    """In ``<enable>``: ``<encrypt alg max-size>KEY</encrypt>`` asks for encrypted payloads."""

    name = "encrypt"
    namespace = NS_ENCRYPT
    plugin_attrib = "encrypt"
    interfaces = {"alg", "max_size", "key"}

    def get_max_size(self) -> int | None:
        value = self.xml.attrib.get("max-size")
        return int(value) if value and value.isdigit() else None

    def set_max_size(self, value: int | None) -> None:
        if value is None:
            self.xml.attrib.pop("max-size", None)
        else:
            self.xml.attrib["max-size"] = str(value)

    def del_max_size(self) -> None:
        self.xml.attrib.pop("max-size", None)

    def get_key(self) -> str:
        return self.xml.text or ""

    def set_key(self, value: str) -> None:
        self.xml.text = value

    def del_key(self) -> None:
        self.xml.text = None


class Encrypted(ElementBase):
    """In ``<notification>``: ``<encrypted iv [type='voip']>B64</encrypted>`` (forwarded as is)."""

    name = "encrypted"
    namespace = NS_ENCRYPT
    plugin_attrib = "encrypted"
    interfaces = {"iv", "type", "payload"}

    def get_payload(self) -> str:
        return self.xml.text or ""

    def set_payload(self, value: str) -> None:
        self.xml.text = value

    def del_payload(self) -> None:
        self.xml.text = None


class PushPriority(ElementBase):
    """``<priority/>`` in enable asks for it; ``<priority>high|low</priority>`` in a publish."""

    name = "priority"
    namespace = NS_PRIORITY
    plugin_attrib = "push_priority"
    interfaces = {"value"}

    def get_value(self) -> str:
        return self.xml.text or ""

    def set_value(self, value: str) -> None:
        self.xml.text = value

    def del_value(self) -> None:
        self.xml.text = None


class JingleMedia(ElementBase):
    name = "media"
    namespace = NS_JINGLE
    plugin_attrib = "media"
    plugin_multi_attrib = "medias"
    interfaces = {"value"}

    def get_value(self) -> str:
        return self.xml.text or ""

    def set_value(self, value: str) -> None:
        self.xml.text = value


class PushJingle(ElementBase):
    """``<jingle/>`` in enable; ``<jingle action sid><media>…</media></jingle>`` in a publish."""

    name = "jingle"
    namespace = NS_JINGLE
    plugin_attrib = "push_jingle"
    interfaces = {"action", "sid"}


class GroupchatFilter(ElementBase):
    """``<groupchat policy='always|mentioned|never'>``: which group chat messages are pushed."""

    name = "groupchat"
    namespace = NS_FILTER_GROUPCHAT
    plugin_attrib = "groupchat_filter"
    interfaces = {"policy"}


class MutedItem(ElementBase):
    name = "item"
    namespace = NS_FILTER_MUTED
    plugin_attrib = "item"
    plugin_multi_attrib = "items"
    interfaces = {"jid"}


class MutedFilter(ElementBase):
    """``<muted><item jid/>…</muted>``: conversations never pushed."""

    name = "muted"
    namespace = NS_FILTER_MUTED
    plugin_attrib = "muted_filter"
    interfaces: ClassVar[set[str]] = set()


class IgnoreUnknownFilter(ElementBase):
    """``<ignore-unknown/>``: do not push messages from senders not in the roster."""

    name = "ignore-unknown"
    namespace = NS_FILTER_IGNORE_UNKNOWN
    plugin_attrib = "ignore_unknown_filter"
    interfaces: ClassVar[set[str]] = set()


class RemoteDisable(ElementBase):
    """App server → user: ``<pubsub node><affiliation jid affiliation='none'/></pubsub>``."""

    name = "affiliation"
    namespace = "http://jabber.org/protocol/pubsub"
    plugin_attrib = "push_affiliation"
    interfaces = {"jid", "affiliation"}


_registered = False


def register_stanzas() -> None:
    """Plug the push stanzas into slixmpp's stanza tree (idempotent)."""
    global _registered
    if _registered:
        return
    _registered = True
    register_stanza_plugin(Iq, Enable)
    register_stanza_plugin(Iq, Disable)
    register_stanza_plugin(Enable, Form)
    for extension in (EncryptRequest, PushPriority, PushJingle, GroupchatFilter,
                      MutedFilter, IgnoreUnknownFilter):
        register_stanza_plugin(Enable, extension)
    register_stanza_plugin(MutedFilter, MutedItem, iterable=True)
    register_stanza_plugin(Item, Notification)
    register_stanza_plugin(Notification, Form)
    register_stanza_plugin(Notification, Encrypted)
    register_stanza_plugin(Notification, PushPriority)
    register_stanza_plugin(Notification, PushJingle)
    register_stanza_plugin(PushJingle, JingleMedia, iterable=True)
    register_stanza_plugin(Pubsub, RemoteDisable)
    register_stanza_plugin(Message, Pubsub)
