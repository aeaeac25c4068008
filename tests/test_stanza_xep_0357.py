"""XEP-0357 stanzas (slixmpp round trips) and parse_publish on real server bytes."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slixmpp.plugins.xep_0004.stanza import FieldOption, Form, FormField
from slixmpp.test import SlixTest
from slixmpp.xmlstream import register_stanza_plugin

from slixmpp_push.models import Notification, Priority
from slixmpp_push.notifier.publisher import RemoteTarget, pubsub_element
from slixmpp_push.xep_0357 import (
    PAGE_FORM_TYPE,
    PUBLISH_OPTIONS_FORM_TYPE,
    PUBLISH_OPTIONS_FORM_TYPES,
    SUMMARY_FORM_TYPE,
    MalformedPublish,
    PageFields,
    form_values,
    parse_publish,
    register_stanzas,
)
from slixmpp_push.xep_0357.stanza import PUBLISH_OPTIONS_FORM_TYPE_ALT, JingleMedia, MutedItem

register_stanzas()

CAPTURED = Path(__file__).parent / "data" / "captured"
PUBSUB = "http://jabber.org/protocol/pubsub"


# -- stanzas ------------------------------------------------------------------------------
class TestPushStanzas(SlixTest):
    def setUp(self) -> None:
        register_stanzas()
        # What the xep_0004 plugin registers in plugin_init (always loaded by the app server).
        register_stanza_plugin(FormField, FieldOption, iterable=True)
        register_stanza_plugin(Form, FormField, iterable=True)

    def test_enable_with_publish_options(self) -> None:
        iq = self.Iq()
        iq["type"] = "set"
        iq["id"] = "e1"
        iq["push_enable"]["jid"] = "push.example.org"
        iq["push_enable"]["node"] = "yxs32uqsflafdk3iuqo"
        form = iq["push_enable"]["form"]
        form["type"] = "submit"
        form.add_field(var="FORM_TYPE", ftype="hidden", value=PUBLISH_OPTIONS_FORM_TYPE)
        form.add_field(var="secret", value="eruio234vzxc2kla-91")
        self.check(iq, """
          <iq type="set" id="e1">
            <enable xmlns="urn:xmpp:push:0" jid="push.example.org" node="yxs32uqsflafdk3iuqo">
              <x xmlns="jabber:x:data" type="submit">
                <field var="FORM_TYPE" type="hidden">
                  <value>http://jabber.org/protocol/pubsub#publish-options</value>
                </field>
                <field var="secret"><value>eruio234vzxc2kla-91</value></field>
              </x>
            </enable>
          </iq>
        """)
        self.assertEqual(iq["push_enable"]["form"].get_values()["secret"],
                         "eruio234vzxc2kla-91")

    def test_captured_enable_request_round_trips(self) -> None:
        text = (CAPTURED / "prosody_enable_request.xml").read_text()
        iq = self.Iq(xml=ET.fromstring(text.replace("<iq ", "<iq xmlns='jabber:client' ", 1)))
        self.assertEqual(iq["push_enable"]["jid"], "push.localhost")
        self.assertEqual(iq["push_enable"]["node"], "testnode")
        values = form_values(iq["push_enable"]["form"].xml)
        self.assertEqual(values["FORM_TYPE"], PUBLISH_OPTIONS_FORM_TYPE_ALT)
        self.assertEqual(values["secret"], "s3cr3t-app-token")
        self.check(iq, text)

    def test_enable_with_tigase_extensions(self) -> None:
        iq = self.Iq()
        iq["type"] = "set"
        enable = iq["push_enable"]
        enable["jid"] = "push.tigase.im"
        enable["node"] = "n-siskin"
        enable["away"] = "true"
        enable["encrypt"]["alg"] = "aes-128-gcm"
        enable["encrypt"]["max_size"] = 3000
        enable["encrypt"]["key"] = "a2V5a2V5a2V5a2V5a2V5"
        enable.enable("push_priority")
        enable.enable("push_jingle")
        enable["groupchat_filter"]["policy"] = "mentioned"
        muted = enable["muted_filter"]
        for jid in ("noisy@muc.example.org", "spam@example.org"):
            item = MutedItem()
            item["jid"] = jid
            muted.append(item)
        enable.enable("ignore_unknown_filter")
        self.check(iq, """
          <iq type="set">
            <enable xmlns="urn:xmpp:push:0" jid="push.tigase.im" node="n-siskin" away="true">
              <encrypt xmlns="tigase:push:encrypt:0" alg="aes-128-gcm"
                       max-size="3000">a2V5a2V5a2V5a2V5a2V5</encrypt>
              <priority xmlns="tigase:push:priority:0"/>
              <jingle xmlns="tigase:push:jingle:0"/>
              <groupchat xmlns="tigase:push:filter:groupchat:0" policy="mentioned"/>
              <muted xmlns="tigase:push:filter:muted:0">
                <item jid="noisy@muc.example.org"/>
                <item jid="spam@example.org"/>
              </muted>
              <ignore-unknown xmlns="tigase:push:filter:ignore-unknown:0"/>
            </enable>
          </iq>
        """, use_values=False)

    def test_tigase_enable_parses(self) -> None:
        iq = self.Iq(xml=ET.fromstring("""
          <iq xmlns="jabber:client" type="set">
            <enable xmlns="urn:xmpp:push:0" jid="push.tigase.im" node="n-siskin">
              <encrypt xmlns="tigase:push:encrypt:0" alg="aes-128-gcm"
                       max-size="3000">KEY</encrypt>
              <priority xmlns="tigase:push:priority:0"/>
              <jingle xmlns="tigase:push:jingle:0"/>
              <groupchat xmlns="tigase:push:filter:groupchat:0" policy="always"/>
              <muted xmlns="tigase:push:filter:muted:0"><item jid="a@b"/><item jid="c@d"/></muted>
              <ignore-unknown xmlns="tigase:push:filter:ignore-unknown:0"/>
            </enable>
          </iq>"""))
        enable = iq["push_enable"]
        self.assertEqual(enable["encrypt"]["alg"], "aes-128-gcm")
        self.assertEqual(enable["encrypt"]["max_size"], 3000)
        self.assertEqual(enable["encrypt"]["key"], "KEY")
        self.assertEqual(enable["groupchat_filter"]["policy"], "always")
        self.assertEqual([item["jid"] for item in enable["muted_filter"]["items"]],
                         ["a@b", "c@d"])
        for name in ("push_priority", "push_jingle", "ignore_unknown_filter"):
            self.assertIn(name, enable.loaded_plugins)
        self.assertEqual(enable["push_priority"]["value"], "")

    def test_encrypt_max_size_absent_or_garbage_is_none(self) -> None:
        iq = self.Iq()
        encrypt = iq["push_enable"]["encrypt"]
        self.assertIsNone(encrypt["max_size"])
        encrypt.xml.set("max-size", "lots")
        self.assertIsNone(encrypt["max_size"])
        encrypt["max_size"] = 10
        self.assertEqual(encrypt.xml.get("max-size"), "10")
        encrypt["max_size"] = None
        self.assertNotIn("max-size", encrypt.xml.attrib)

    def test_disable_with_node(self) -> None:
        iq = self.Iq()
        iq["type"] = "set"
        iq["push_disable"]["jid"] = "push.example.org"
        iq["push_disable"]["node"] = "yxs32uqsflafdk3iuqo"
        self.check(iq, """
          <iq type="set">
            <disable xmlns="urn:xmpp:push:0" jid="push.example.org"
                     node="yxs32uqsflafdk3iuqo"/>
          </iq>
        """)

    def test_disable_without_node(self) -> None:
        iq = self.Iq()
        iq["type"] = "set"
        iq["push_disable"]["jid"] = "push.example.org"
        self.check(iq, """
          <iq type="set">
            <disable xmlns="urn:xmpp:push:0" jid="push.example.org"/>
          </iq>
        """)
        self.assertEqual(iq["push_disable"]["node"], "")

    def test_notification_with_tigase_extensions(self) -> None:
        iq = self.Iq()
        iq["type"] = "set"
        iq["from"] = "tigase.im"
        iq["to"] = "push.tigase.im"
        publish = iq["pubsub"]["publish"]
        publish["node"] = "n-siskin"
        note = publish["item"]["push_notification"]
        form = note["form"]
        form["type"] = "submit"
        form.add_field(var="FORM_TYPE", ftype="hidden", value=SUMMARY_FORM_TYPE)
        form.add_field(var="message-count", value="3")
        note["encrypted"]["iv"] = "AAECAwQFBgcICQoL"
        note["encrypted"]["type"] = "voip"
        note["encrypted"]["payload"] = "ZW5jcnlwdGVk"
        note["push_priority"]["value"] = "high"
        jingle = note["push_jingle"]
        jingle["action"] = "propose"
        jingle["sid"] = "call-1"
        for kind in ("audio", "video"):
            media = JingleMedia()
            media["value"] = kind
            jingle.append(media)
        expected = """
          <iq type="set" from="tigase.im" to="push.tigase.im">
            <pubsub xmlns="http://jabber.org/protocol/pubsub">
              <publish node="n-siskin">
                <item>
                  <notification xmlns="urn:xmpp:push:0">
                    <x xmlns="jabber:x:data" type="submit">
                      <field var="FORM_TYPE" type="hidden">
                        <value>urn:xmpp:push:summary</value>
                      </field>
                      <field var="message-count"><value>3</value></field>
                    </x>
                    <encrypted xmlns="tigase:push:encrypt:0" iv="AAECAwQFBgcICQoL"
                               type="voip">ZW5jcnlwdGVk</encrypted>
                    <priority xmlns="tigase:push:priority:0">high</priority>
                    <jingle xmlns="tigase:push:jingle:0" action="propose" sid="call-1">
                      <media>audio</media>
                      <media>video</media>
                    </jingle>
                  </notification>
                </item>
              </publish>
            </pubsub>
          </iq>
        """
        self.check(iq, expected, use_values=False)
        # and the same bytes through the hot-path parser
        parsed = parse_publish(ET.fromstring(str(iq)))
        self.assertEqual(parsed.node, "n-siskin")
        self.assertEqual(parsed.notification.message_count, 3)
        self.assertEqual(parsed.notification.encrypted, "ZW5jcnlwdGVk")
        self.assertEqual(parsed.notification.iv, "AAECAwQFBgcICQoL")
        self.assertEqual(parsed.notification.encrypted_type, "voip")
        self.assertIs(parsed.notification.priority, Priority.HIGH)
        assert parsed.notification.jingle is not None
        self.assertEqual(parsed.notification.jingle.sid, "call-1")
        self.assertEqual(parsed.notification.jingle.media, ("audio", "video"))
        self.assertTrue(parsed.notification.is_call)

    def test_notification_parses_into_stanza_interfaces(self) -> None:
        iq = self.Iq(xml=ET.fromstring("""
          <iq xmlns="jabber:client" type="set">
            <pubsub xmlns="http://jabber.org/protocol/pubsub"><publish node="n"><item>
              <notification xmlns="urn:xmpp:push:0">
                <encrypted xmlns="tigase:push:encrypt:0" iv="IV">BLOB</encrypted>
                <priority xmlns="tigase:push:priority:0">low</priority>
                <jingle xmlns="tigase:push:jingle:0" action="propose" sid="s">
                  <media>audio</media></jingle>
              </notification></item></publish></pubsub></iq>"""))
        note = iq["pubsub"]["publish"]["item"]["push_notification"]
        self.assertEqual(note["encrypted"]["payload"], "BLOB")
        self.assertEqual(note["encrypted"]["iv"], "IV")
        self.assertEqual(note["push_priority"]["value"], "low")
        self.assertEqual(note["push_jingle"]["sid"], "s")
        self.assertEqual([m["value"] for m in note["push_jingle"]["medias"]], ["audio"])

    def test_remote_disable_message(self) -> None:
        xml = """
          <message to="u@d">
            <pubsub xmlns="http://jabber.org/protocol/pubsub" node="N">
              <affiliation jid="u@d" affiliation="none"/>
            </pubsub>
          </message>
        """
        msg = self.Message()
        msg["to"] = "u@d"
        msg["pubsub"].xml.set("node", "N")
        msg["pubsub"]["push_affiliation"]["jid"] = "u@d"
        msg["pubsub"]["push_affiliation"]["affiliation"] = "none"
        # Pubsub has no "node" interface, so stanza.values cannot carry it.
        self.check(msg, xml, use_values=False)
        parsed = self.Message(xml=ET.fromstring(
            xml.replace("<message ", "<message xmlns='jabber:client' ", 1)))
        self.assertEqual(parsed["pubsub"]["push_affiliation"]["jid"], "u@d")
        self.assertEqual(parsed["pubsub"]["push_affiliation"]["affiliation"], "none")
        self.assertEqual(parsed["pubsub"].xml.get("node"), "N")


# -- parse_publish on captured server bytes --------------------------------------------------
def load(name: str, ns: str | None = "jabber:component:accept") -> ET.Element:
    text = (CAPTURED / name).read_text()
    if ns is not None:
        text = text.replace("<iq ", f"<iq xmlns='{ns}' ", 1)
    return ET.fromstring(text)


EXPECTED = {
    # file: (node, message_count, sender, body)
    "ejabberd_publish_hibernated.xml": ("hibnode", None, None, "New message"),
    "ejabberd_publish_offline.xml": ("testnode", None, None, "New message"),
    "prosody-with-body-sender_publish_offline.xml":
        ("testnode", 1, "bob@localhost/rig", "hello alice (offline)"),
    "prosody_publish_hibernated.xml": ("hibnode", 1, None, "New Message!"),
    "prosody_publish_offline.xml": ("testnode", 1, None, "New Message!"),
    # bookworm-backports releases (tests/servers.py: prosody13, ejabberd24.12)
    "ejabberd2412_publish_offline.xml": ("testnode", None, None, "New message"),
    "prosody13_publish_offline.xml": ("testnode", 1, None, "New Message!"),
}
# Prosody 13 with mod_cloud_notify_extensions tags every important push (a
# message with a body) <priority>high</priority>, even for a plain enable.
HIGH_PRIORITY = {"prosody13_publish_offline.xml"}


def test_every_captured_publish_is_covered() -> None:
    publishes = {p.name for p in CAPTURED.glob("*.xml") if "_publish_" in p.name}
    assert publishes == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("ns", ["jabber:component:accept", "jabber:client", None])
def test_captured_publish(name: str, ns: str | None) -> None:
    node, count, sender, body = EXPECTED[name]
    publish = parse_publish(load(name, ns))
    note = publish.notification
    assert publish.node == node
    assert note.message_count == count
    assert note.pending_subscriptions is None  # Prosody sends the field empty
    assert note.sender == sender
    assert note.body == body
    assert note.publish_options == {"secret": "s3cr3t-app-token"}
    assert note.priority is (Priority.HIGH if name in HIGH_PRIORITY else Priority.NORMAL)
    assert note.encrypted is None and note.iv is None and note.jingle is None
    assert not note.is_call
    assert note.received_at > 0
    assert not note.unimportant  # a chat message: each of these carries a body


def test_prosody_marks_an_unimportant_stanza_with_an_empty_body_field() -> None:
    """A chat state queued for a dropped session: count 1 (always), body field empty."""
    text = (CAPTURED / "prosody_publish_hibernated.xml").read_text()
    text = text.replace("<value>New Message!</value>", "")
    note = parse_publish(ET.fromstring(text)).notification
    assert note.message_count == 1 and note.body is None
    assert note.unimportant


@pytest.mark.parametrize("form_type", sorted(PUBLISH_OPTIONS_FORM_TYPES))
def test_both_publish_options_form_types_are_accepted(form_type: str) -> None:
    text = (CAPTURED / "prosody_publish_offline.xml").read_text()
    assert PUBLISH_OPTIONS_FORM_TYPE_ALT in text
    text = text.replace(PUBLISH_OPTIONS_FORM_TYPE_ALT, form_type)
    publish = parse_publish(ET.fromstring(text))
    assert publish.notification.publish_options == {"secret": "s3cr3t-app-token"}


def test_publish_options_without_form_type_are_accepted() -> None:
    text = (CAPTURED / "prosody_publish_offline.xml").read_text()
    text = text.replace(f"<field type='hidden' var='FORM_TYPE'><value>"
                        f"{PUBLISH_OPTIONS_FORM_TYPE_ALT}</value></field>", "")
    assert "FORM_TYPE'><value>http" not in text
    assert parse_publish(ET.fromstring(text)).notification.publish_options == {
        "secret": "s3cr3t-app-token"}


def publish_xml(notification: str = "<notification xmlns='urn:xmpp:push:0'/>",
                node: str | None = "n1", options: str = "") -> ET.Element:
    node_attr = f" node='{node}'" if node is not None else ""
    return ET.fromstring(
        f"<iq xmlns='jabber:component:accept' type='set' from='example.org' id='p'>"
        f"<pubsub xmlns='{PUBSUB}'><publish{node_attr}><item>{notification}</item></publish>"
        f"{options}</pubsub></iq>")


def summary(**fields: str) -> str:
    body = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    return (f"<notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='submit'>"
            f"<field var='FORM_TYPE'><value>{SUMMARY_FORM_TYPE}</value></field>{body}"
            f"</x></notification>")


def test_bare_notification_is_a_wake_up() -> None:
    publish = parse_publish(publish_xml())
    assert publish.node == "n1"
    assert publish.notification.message_count is None
    assert publish.notification.publish_options == {}


def test_pending_subscriptions_and_message_count() -> None:
    note = parse_publish(publish_xml(summary(**{
        "message-count": "7", "pending-subscription-count": "2"}))).notification
    assert (note.message_count, note.pending_subscriptions) == (7, 2)


def test_foreign_form_in_notification_is_ignored() -> None:
    other = ("<notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data'>"
             "<field var='FORM_TYPE'><value>urn:example</value></field>"
             "<field var='message-count'><value>many</value></field></x></notification>")
    assert parse_publish(publish_xml(other)).notification.message_count is None


def tigase(inner: str) -> str:
    return f"<notification xmlns='urn:xmpp:push:0'>{inner}</notification>"


def test_tigase_priority_values() -> None:
    def level(text: str) -> Priority:
        element = publish_xml(tigase(
            f"<priority xmlns='tigase:push:priority:0'>{text}</priority>"))
        return parse_publish(element).notification.priority

    assert level("high") is Priority.HIGH
    assert level(" low ") is Priority.LOW
    assert level("urgent") is Priority.NORMAL
    assert level("") is Priority.NORMAL


# -- a pager's page form ---------------------------------------------------------------------
PAGER = "pager@example.org"
PAGE = Notification(title="[AB12] Disk full on db1", body="/var at 99%",
                    priority=Priority.CRITICAL, message_count=1, sender=PAGER,
                    collapse_key="page:AB12")


def pagers_publish(notification: Notification = PAGE, secret: str | None = "s3") -> ET.Element:
    """What push_notifier's publisher sends to a remote app server (the iq around it is
    the client's, as the app server's component stream sees it)."""
    iq = ET.Element("{jabber:component:accept}iq", {"type": "set", "from": f"{PAGER}/bot"})
    iq.append(pubsub_element(RemoteTarget("push.example.org", "n1", secret), notification))
    return iq


def test_a_pagers_publish_is_a_summary_for_anyone_and_a_page_form_for_us() -> None:
    element = pagers_publish()
    forms = element.findall(".//{urn:xmpp:push:0}notification/{jabber:x:data}x")
    assert [form_values(form) for form in forms] == [
        {"FORM_TYPE": SUMMARY_FORM_TYPE, "message-count": "1", "last-message-sender": PAGER,
         "last-message-body": "[AB12] Disk full on db1 — /var at 99%"},
        {"FORM_TYPE": PAGE_FORM_TYPE, "title": "[AB12] Disk full on db1",
         "priority": "critical", "body": "/var at 99%", "key": "page:AB12"},
    ]
    publish = parse_publish(element)
    # Read beside the notification, not into it: the app server decides who may set it.
    note = publish.notification
    assert (note.title, note.priority, note.collapse_key) == (None, Priority.HIGH, None)
    assert note.body == "[AB12] Disk full on db1 — /var at 99%"
    assert publish.page == PageFields(title="[AB12] Disk full on db1", body="/var at 99%",
                                      priority=Priority.CRITICAL, key="page:AB12")
    assert note.publish_options == {"secret": "s3"}


def test_applied_page_fields_make_the_pagers_own_notification() -> None:
    publish = parse_publish(pagers_publish())
    assert publish.page is not None
    publish.page.apply(publish.notification)
    note = publish.notification
    assert (note.title, note.body, note.priority, note.collapse_key, note.sender,
            note.message_count) == (PAGE.title, PAGE.body, PAGE.priority, PAGE.collapse_key,
                                    PAGE.sender, PAGE.message_count)


@pytest.mark.parametrize("priority", list(Priority))
def test_every_page_priority_travels(priority: Priority) -> None:
    notification = Notification(title="Backups", priority=priority, sender=PAGER)
    page = parse_publish(pagers_publish(notification, secret=None)).page
    assert page == PageFields(title="Backups", priority=priority)


def test_a_notification_without_a_title_has_no_page_form() -> None:
    plain = Notification(message_count=1, sender=PAGER, body="hi")
    element = pagers_publish(plain)
    assert PAGE_FORM_TYPE not in ET.tostring(element, encoding="unicode")
    assert parse_publish(element).page is None


def page_form(**fields: str) -> str:
    values = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    return (f"<notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='submit'>"
            f"<field var='FORM_TYPE'><value>{PAGE_FORM_TYPE}</value></field>{values}"
            f"</x></notification>")


def test_a_page_form_is_read_leniently_never_refused() -> None:
    """A stranger's page form is ignored by the app server, so reading it never fails
    the publish: an unknown priority is left out, long text is cut, no title is no page."""
    page = parse_publish(publish_xml(page_form(title="T", priority="urgent"))).page
    assert page == PageFields(title="T")
    assert parse_publish(publish_xml(page_form(title="  ", body="b"))).page is None
    assert parse_publish(publish_xml(page_form(body="b"))).page is None
    page = parse_publish(publish_xml(page_form(title="é" * 3000, body="ü" * 3000,
                                               key="k" * 5000))).page
    assert page is not None and page.key is not None and page.body is not None
    assert len(page.title.encode()) <= 4096 and page.title == "é" * 2048
    assert len(page.body.encode()) <= 4096 and len(page.key) == 4096


@pytest.mark.parametrize(("element", "message"), [
    (ET.fromstring("<iq xmlns='jabber:client' type='set'/>"), "no pubsub publish"),
    (publish_xml(node=None), "no node"),
    (publish_xml(node=""), "no node"),
    (publish_xml(notification=""), "no urn:xmpp:push:0 notification"),
    (publish_xml(notification="<notification xmlns='urn:example'/>"),
     "no urn:xmpp:push:0 notification"),
    (publish_xml(summary(**{"message-count": "lots"})), "'message-count' is not a number"),
    (publish_xml(summary(**{"message-count": "-1"})), "'message-count' is negative"),
    (publish_xml(summary(**{"pending-subscription-count": "x"})),
     "'pending-subscription-count' is not a number"),
    (publish_xml(tigase("<encrypted xmlns='tigase:push:encrypt:0'>QUJD</encrypted>")),
     "encrypted payload without data or iv"),
    (publish_xml(tigase("<encrypted xmlns='tigase:push:encrypt:0' iv=''>QUJD</encrypted>")),
     "encrypted payload without data or iv"),
    (publish_xml(tigase("<encrypted xmlns='tigase:push:encrypt:0' iv='SVY='>  </encrypted>")),
     "encrypted payload without data or iv"),
    (publish_xml(options=(
        "<publish-options><x xmlns='jabber:x:data' type='submit'>"
        "<field var='FORM_TYPE'><value>urn:example:other</value></field>"
        "<field var='secret'><value>s</value></field></x></publish-options>")),
     "unknown FORM_TYPE 'urn:example:other'"),
], ids=["no-publish", "no-node", "empty-node", "no-notification", "foreign-notification",
        "count-not-number", "count-negative", "pending-not-number", "encrypted-no-iv",
        "encrypted-empty-iv", "encrypted-empty-data", "unknown-options-form-type"])
def test_malformed_publish(element: ET.Element, message: str) -> None:
    with pytest.raises(MalformedPublish, match=message.replace("'", ".")):
        parse_publish(element)


def test_malformed_publish_is_a_value_error_with_a_message() -> None:
    with pytest.raises(ValueError) as info:
        parse_publish(publish_xml(node=None))
    assert str(info.value)


# -- property: parse or MalformedPublish, nothing else ---------------------------------------
TAGS = [f"{{{PUBSUB}}}pubsub", f"{{{PUBSUB}}}publish", f"{{{PUBSUB}}}item",
        f"{{{PUBSUB}}}publish-options", "{urn:xmpp:push:0}notification", "{jabber:x:data}x",
        "{jabber:x:data}field", "{jabber:x:data}value", "{tigase:push:encrypt:0}encrypted",
        "{tigase:push:priority:0}priority", "{tigase:push:jingle:0}jingle",
        "{tigase:push:jingle:0}media", "{urn:example}other"]
ATTRS = ["node", "var", "iv", "type", "sid", "action"]
VALUES = ["", "1", "-3", "0x10", " 12 ", "high", "low", "voip", "FORM_TYPE", "message-count",
          "pending-subscription-count", "last-message-body", SUMMARY_FORM_TYPE,
          PUBLISH_OPTIONS_FORM_TYPE, PUBLISH_OPTIONS_FORM_TYPE_ALT, "9" * 5000, "١٢",
          PAGE_FORM_TYPE, "title", "priority", "key", "critical"]
values = st.one_of(st.sampled_from(VALUES), st.text(max_size=20))


def _element(tag: str, attrs: list[tuple[str, str]], text: str | None,
             children: list[ET.Element]) -> ET.Element:
    element = ET.Element(tag, dict(attrs))
    element.text = text
    element.extend(children)
    return element


leaves = st.builds(_element, st.sampled_from(TAGS),
                   st.lists(st.tuples(st.sampled_from(ATTRS), values), max_size=3),
                   st.one_of(st.none(), values), st.just([]))
elements = st.recursive(leaves, lambda kids: st.builds(
    _element, st.sampled_from(TAGS),
    st.lists(st.tuples(st.sampled_from(ATTRS), values), max_size=3),
    st.one_of(st.none(), values), st.lists(kids, max_size=4)), max_leaves=25)


@st.composite
def skeletons(draw: st.DrawFn) -> ET.Element:
    """A well-formed publish path with random subtrees where the data lives."""
    pubsub = ET.Element(f"{{{PUBSUB}}}pubsub")
    publish = ET.SubElement(pubsub, f"{{{PUBSUB}}}publish")
    if draw(st.booleans()):
        publish.set("node", draw(values))
    item = ET.SubElement(publish, f"{{{PUBSUB}}}item")
    notification = ET.SubElement(item, "{urn:xmpp:push:0}notification")
    notification.extend(draw(st.lists(elements, max_size=4)))
    if draw(st.booleans()):
        options = ET.SubElement(pubsub, f"{{{PUBSUB}}}publish-options")
        options.extend(draw(st.lists(elements, max_size=2)))
    return pubsub


def check_parse(iq: ET.Element) -> None:
    try:
        publish = parse_publish(iq)
    except MalformedPublish as exc:
        assert str(exc)
    else:
        assert publish.node


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(elements, skeletons()), max_size=3))
def test_random_trees_parse_or_raise_malformed(children: list[ET.Element]) -> None:
    iq = ET.Element("{jabber:component:accept}iq", {"type": "set"})
    iq.extend(children)
    check_parse(iq)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(node=values, count=values, pending=values, sender=values, body=values, iv=values,
       blob=values, priority=values, form_type=values, sid=values,
       drop=st.sets(st.sampled_from(["summary", "page", "encrypted", "priority", "jingle",
                                     "options"])))
def test_random_publish_strings_parse_or_raise_malformed(
        node: str, count: str, pending: str, sender: str, body: str, iv: str, blob: str,
        priority: str, form_type: str, sid: str, drop: set[str]) -> None:
    def esc(text: str) -> str:
        # Characters XML 1.0 cannot carry at all are not ours to worry about.
        clean = "".join(c for c in text if c in "\t\n\r" or 0x20 <= ord(c) <= 0xD7FF
                        or 0xE000 <= ord(c) <= 0xFFFD or ord(c) >= 0x10000)
        return (clean.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;")
                .replace("\r", "&#13;"))

    parts = {
        "summary": (f"<x xmlns='jabber:x:data'><field var='FORM_TYPE'><value>"
                    f"{SUMMARY_FORM_TYPE}</value></field>"
                    f"<field var='message-count'><value>{esc(count)}</value></field>"
                    f"<field var='pending-subscription-count'><value>{esc(pending)}</value>"
                    f"</field><field var='last-message-sender'><value>{esc(sender)}</value>"
                    f"</field><field var='last-message-body'><value>{esc(body)}</value>"
                    f"</field></x>"),
        "page": (f"<x xmlns='jabber:x:data'><field var='FORM_TYPE'><value>{PAGE_FORM_TYPE}"
                 f"</value></field><field var='title'><value>{esc(sender)}</value></field>"
                 f"<field var='body'><value>{esc(body)}</value></field>"
                 f"<field var='priority'><value>{esc(priority)}</value></field>"
                 f"<field var='key'><value>{esc(sid)}</value></field></x>"),
        "encrypted": (f"<encrypted xmlns='tigase:push:encrypt:0' iv='{esc(iv)}'>{esc(blob)}"
                      f"</encrypted>"),
        "priority": f"<priority xmlns='tigase:push:priority:0'>{esc(priority)}</priority>",
        "jingle": (f"<jingle xmlns='tigase:push:jingle:0' sid='{esc(sid)}'>"
                   f"<media>{esc(body)}</media></jingle>"),
    }
    inner = "".join(v for k, v in parts.items() if k not in drop)
    options = "" if "options" in drop else (
        f"<publish-options><x xmlns='jabber:x:data'><field var='FORM_TYPE'><value>"
        f"{esc(form_type)}</value></field><field var='secret'><value>{esc(body)}</value>"
        f"</field></x></publish-options>")
    text = (f"<iq xmlns='jabber:component:accept' type='set' from='example.org'>"
            f"<pubsub xmlns='{PUBSUB}'><publish node='{esc(node)}'><item>"
            f"<notification xmlns='urn:xmpp:push:0'>{inner}</notification></item></publish>"
            f"{options}</pubsub></iq>")
    check_parse(ET.fromstring(text))
