"""Fuzzing (hypothesis, bounded: the file runs in well under 30 s).

(a) Publish IQs — mutations of real publishes (tests/data/fuzz/: Prosody and
    ejabberd captures, a Tigase and a Monal shape) and random element trees —
    fed to push_appserver over a SlixTest component stream: every IQ gets
    exactly one reply, a result or an error whose condition is one the
    app-server contract allows; nothing raises (no traceback is logged) and
    the stream still works afterwards.
(b) Ad-hoc command forms with random fields, values, field types, form types
    and senders (and the two-step execute → complete flow): always a
    completed (or, for a request without a submitted form, executing) result,
    or an error bad-request / item-not-found / forbidden, a bad-request naming
    the field at fault; never undefined-condition ("Slixmpp got into trouble").
(c) Configs: random TOML documents (random keys and values under the known
    sections, around a valid config) given to parse_config: a Config or a
    ConfigError whose key is a dotted path into the document; never another
    exception type.

Webhook fuzzing is left for the issue that adds a webhook receiver (none exists).

Known bugs are pinned by the ``xfail(strict=True)`` tests at the end of each
part, and kept out of the random search by the ``KNOWN BUG`` notes, so that the
fuzzers keep guarding everything else: when a fix lands, its xfail turns into
a failure (XPASS), and the marker and the note go.

``FUZZ_EXAMPLES=5`` multiplies the example counts for a longer local run.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import itertools
import json
import logging
import math
import os
import re
import time
import unittest
from collections import Counter
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from fakes.scripted import ScriptedProvider
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slixmpp.test import SlixTest
from slixmpp.xmlstream.tostring import tostring
from tokens import apns_token

import slixmpp_push  # noqa: F401  (registers the plugin)
from slixmpp_push import (
    AppConfig,
    DeliveryPolicy,
    DeliveryResult,
    Dialect,
    MemoryStore,
    Outcome,
    Registration,
)
from slixmpp_push.appserver.dialects import COMMANDS
from slixmpp_push.config import Config, load_config, parse_config
from slixmpp_push.errors import ConfigError

SCALE = max(1, int(os.environ.get("FUZZ_EXAMPLES", "1")))
FUZZ_DATA = Path(__file__).parent / "data" / "fuzz"
SEEDS = [ET.fromstring(path.read_text()) for path in sorted(FUZZ_DATA.glob("*.xml"))]

COMPONENT_NS = "jabber:component:accept"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
COMMANDS_NS = "http://jabber.org/protocol/commands"
PUBSUB = "http://jabber.org/protocol/pubsub"
PUSH = "urn:xmpp:push:0"
DATA = "jabber:x:data"
SECRET = "s3cr3t-app-token"
MONAL_TOKEN = "0123456789abcdef" * 4

APPS = [
    AppConfig(id="tigase:messenger:apns:1", type="console", topic="org.example.chat",
              include_body=True),
    AppConfig(id="fcm-xmpp-api", type="console", format="fcm"),
    AppConfig(id="monal", type="console", topic="im.monal", monal_modules=("monalProdiOS",)),
]
APNS, FCM, MONAL = (app.id for app in APPS)
POLICY = DeliveryPolicy(reply_within=0.2, retry_base=0.01, retry_max_delay=0.02,
                        rate_interval=0.0)


def fixed_registrations() -> list[Registration]:
    """The nodes the seeds publish to, so that mutations reach delivery."""
    def key(device: str) -> str:
        return hashlib.sha1(f"alice@localhost\0{device}".encode()).hexdigest()

    return [
        Registration(node="testnode", account="alice@localhost", domain="localhost", app=APNS,
                     token="aa" * 32, dialect=Dialect.P2, secret=SECRET, device_id="d1",
                     device_key=key("d1")),
        Registration(node="hibnode", account="alice@localhost", domain="localhost", app=FCM,
                     token="fcm-token", dialect=Dialect.P2, secret=SECRET, device_id="d2",
                     device_key=key("d2")),
        Registration(node="tignode", account="alice@localhost", domain="localhost", app=APNS,
                     token="bb" * 32, voip_token="cc" * 32, dialect=Dialect.TIGASE),
    ]


# -- the component stream ----------------------------------------------------------------
class TracebackRecorder(logging.Handler):
    """Every log record carrying an exception: a handler or the engine blew up."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


def serialize(element: ET.Element) -> str:
    """As a server writes it inside a jabber:component:accept stream."""
    for item in element.iter():
        if not item.tag.startswith("{"):
            item.tag = f"{{{COMPONENT_NS}}}{item.tag}"
    return tostring(element, xmlns=COMPONENT_NS)


def error_of(stanza: ET.Element) -> tuple[str, str, str]:
    """(type, condition, text) of an error stanza's <error/>, any namespace."""
    for child in stanza:
        if child.tag.endswith("}error"):
            condition = text = ""
            for item in child:
                if item.tag == f"{{{STANZAS_NS}}}text":
                    text = item.text or ""
                elif item.tag.startswith(f"{{{STANZAS_NS}}}"):
                    condition = item.tag.rpartition("}")[2]
            return child.get("type", ""), condition, text
    return "", "", ""


class StreamFuzz(SlixTest):
    """push_appserver on a SlixTest component stream; collects what it sends."""

    def setUp(self) -> None:
        self.stream_start(mode="component", jid="push.localhost", server="localhost",
                          plugins=["xep_0030", "xep_0004", "xep_0050"])
        self.store = MemoryStore()
        self.providers = {app.id: ScriptedProvider(app) for app in APPS}
        self.xmpp.register_plugin("push_appserver", {
            "apps": APPS, "store": self.store, "providers": self.providers,
            "delivery": POLICY})
        self.plugin = self.xmpp.plugin["push_appserver"]
        self.plugin.session_bind(self.xmpp.boundjid)
        self.run_coro(self.plugin.start())
        self.tracebacks = TracebackRecorder()
        logging.getLogger().addHandler(self.tracebacks)
        self.sent: list[ET.Element] = []
        self.ids = itertools.count(1)

    def tearDown(self) -> None:
        logging.getLogger().removeHandler(self.tracebacks)
        self.run_coro(self.plugin.stop())
        super().tearDown()

    def collect(self) -> None:
        self.wait_for_send_queue()
        while True:
            data = self.xmpp.socket.next_sent()
            if not data:
                return
            text = data.decode() if isinstance(data, bytes) else data
            wrapped = f"<w xmlns='{COMPONENT_NS}'>{text}</w>"
            try:
                self.sent.extend(ET.fromstring(wrapped))
            except ET.ParseError as exc:
                self.fail(f"the component sent malformed XML ({exc}): {text!r}")

    def replies(self, iq_id: str) -> list[ET.Element]:
        return [s for s in self.sent
                if s.tag == f"{{{COMPONENT_NS}}}iq" and s.get("id") == iq_id
                and s.get("type") in ("result", "error")]

    def exchange(self, stanza: str, iq_id: str, timeout: float = 3.0) -> ET.Element:
        """Feed one IQ and return its (first) reply."""
        self.recv(stanza)
        deadline = time.monotonic() + timeout
        while True:
            self.collect()
            replies = self.replies(iq_id)
            if replies:
                return replies[0]
            if time.monotonic() > deadline:
                self.fail(f"no reply within {timeout} s to {stanza}")
            self.wait_(0.002)

    def settle(self) -> None:
        """Let timers and late replies come out."""
        for _ in range(10):
            self.wait_(0.03)
            self.collect()

    def assert_exactly_one_reply_each(self, ids: list[str]) -> None:
        self.settle()
        if os.environ.get("FUZZ_STATS"):
            outcomes = Counter(
                (r.get("type"), error_of(r)[1]) for i in ids for r in self.replies(i))
            print(f"\n{self.id()}: {len(ids)} IQs: {dict(outcomes)}")
        counts = {iq_id: len(self.replies(iq_id)) for iq_id in ids}
        duplicated = {iq_id: n for iq_id, n in counts.items() if n != 1}
        self.assertEqual(duplicated, {}, "IQs answered more (or less) than once")

    def assert_no_tracebacks(self) -> None:
        self.assertEqual(
            [(r.name, r.getMessage(), r.exc_info and repr(r.exc_info[1]))
             for r in self.tracebacks.records], [])


# -- (a) publish IQs --------------------------------------------------------------------
PUBLISH_CONDITIONS = {"bad-request", "item-not-found", "forbidden", "not-authorized",
                      "internal-server-error"}
#: What slixmpp itself answers when no handler takes an IQ (the mutation broke
#: the iq/pubsub/publish path): not the app server's business, but one reply.
UNHANDLED_CONDITIONS = {"feature-not-implemented", "service-unavailable"}

NAMESPACES = [PUBSUB, PUSH, DATA, "tigase:push:encrypt:0", "tigase:push:priority:0",
              "tigase:push:jingle:0", COMPONENT_NS, "urn:example:junk", ""]
LOCAL_NAMES = ["pubsub", "publish", "item", "notification", "x", "field", "value",
               "publish-options", "encrypted", "priority", "jingle", "media", "error", "junk"]
xml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc"),
                                 blacklist_characters="\ufffe\uffff"), max_size=30)
NUMBERS = ["0", "1", "-1", "007", " 3 ", "1e3", "3.0", "NaN", "99999999999999999999999999",
           "\u0663", "\u00b3", ""]
FORM_TYPES = ["urn:xmpp:push:summary", "http://jabber.org/protocol/pubsub#publish-options",
              "http://jabber.org/protocol/publish-options", "urn:example:other", ""]
FIELD_VARS = ["FORM_TYPE", "message-count", "pending-subscription-count",
              "last-message-sender", "last-message-body", "secret", "pushModule", ""]
texts = st.one_of(
    xml_text, st.sampled_from(NUMBERS), st.sampled_from(FORM_TYPES),
    st.sampled_from([SECRET, "wrong", "monalProdiOS", "monalAlpha", "high", "low", "QkxPQg==",
                     "bob@localhost/rig", "New Message!"]),
    st.integers(1, 6000).map(lambda n: "\u00e9" * n),  # long: payloads must be cut to fit
)
attribute_names = st.sampled_from(
    ["node", "var", "type", "iv", "sid", "action", "jid", "from", "to", "id", "alg"])
attribute_values = st.one_of(
    texts, st.sampled_from(["testnode", "hibnode", "tignode", MONAL_TOKEN, "voip", "form",
                            "submit", "hidden", "localhost", "propose"]))


def tag(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}" if namespace else name


@st.composite
def trees(draw: st.DrawFn, depth: int = 3) -> ET.Element:
    """A random element tree over the vocabulary of publishes."""
    element = ET.Element(tag(draw(st.sampled_from(NAMESPACES)),
                             draw(st.sampled_from(LOCAL_NAMES))))
    for name in draw(st.lists(attribute_names, max_size=3, unique=True)):
        element.set(name, draw(attribute_values))
    if draw(st.booleans()):
        element.text = draw(texts)
    if depth > 0:
        for child in draw(st.lists(trees(depth=depth - 1), max_size=3)):
            element.append(child)
    return element


def _mutate(draw: st.DrawFn, root: ET.Element) -> None:
    elements = list(root.iter())
    target = draw(st.sampled_from(elements))
    parents = {child: parent for parent in root.iter() for child in parent}
    kind = draw(st.sampled_from(["attribute", "drop-attribute", "text", "delete", "duplicate",
                                 "insert", "rename", "clear"]))
    if kind == "attribute":
        target.set(draw(attribute_names), draw(attribute_values))
    elif kind == "drop-attribute" and target.attrib:
        del target.attrib[draw(st.sampled_from(sorted(target.attrib)))]
    elif kind == "text":
        target.text = draw(texts)
    elif kind == "delete" and target in parents:
        parents[target].remove(target)
    elif kind == "duplicate" and target in parents:
        parents[target].append(copy.deepcopy(target))
    elif kind == "insert":
        target.append(draw(trees()))
    elif kind == "rename" and target is not root:
        namespace, _, name = target.tag[1:].partition("}") if target.tag.startswith("{") \
            else ("", "", target.tag)
        if draw(st.booleans()):
            namespace = draw(st.sampled_from(NAMESPACES))
        else:
            name = draw(st.sampled_from(LOCAL_NAMES))
        target.tag = tag(namespace, name)
    elif kind == "clear":
        for child in list(target):
            target.remove(child)


@st.composite
def publish_iqs(draw: st.DrawFn) -> ET.Element:
    """A mutated seed publish, or a publish envelope around a random tree."""
    if draw(st.integers(0, 4)) == 0:
        root = ET.fromstring("<iq type='set' from='localhost' to='push.localhost'/>")
        pubsub = ET.SubElement(root, f"{{{PUBSUB}}}pubsub")
        publish = ET.SubElement(pubsub, f"{{{PUBSUB}}}publish",
                                node=draw(attribute_values))
        item = ET.SubElement(publish, f"{{{PUBSUB}}}item")
        notification = ET.SubElement(item, f"{{{PUSH}}}notification")
        for child in draw(st.lists(trees(), max_size=3)):
            notification.append(child)
        if draw(st.booleans()):
            pubsub.append(draw(trees()))
    else:
        root = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        _mutate(draw, root)
    root.tag = "iq"
    # KNOWN BUG (test_only_a_set_publish_is_handled): the app server answers IQs
    # of type result/error; until fixed, only requests (set, get) are fuzzed.
    root.set("type", draw(st.sampled_from(["set"] * 6 + ["get"])))
    root.set("from", draw(st.sampled_from(["localhost"] * 6 + [
        "elsewhere.example", "alice@localhost", "localhost/res", "push.localhost"])))
    root.set("to", draw(st.sampled_from(["push.localhost"] * 6 + ["push.localhost/x"])))
    return root


PROVIDER_ANSWERS = [DeliveryResult(Outcome.DELIVERED, 200)] * 5 + [
    DeliveryResult(Outcome.RETRY, 503, "ServiceUnavailable", retry_after=0.01),
    DeliveryResult(Outcome.DEAD_TOKEN, 410, "Unregistered"),
    DeliveryResult(Outcome.REJECTED, 400, "BadTopic"),
]


class TestPublishFuzz(StreamFuzz):
    def prepare(self, answer: DeliveryResult) -> None:
        for registration in fixed_registrations():
            if self.store.get(registration.node) is None:  # a dead token removed it
                self.run_coro(self.store.put(registration))
        for provider in self.providers.values():
            provider.script[:] = [answer]

    def test_random_publishes_get_one_reply_each(self) -> None:
        ids: list[str] = []

        @settings(max_examples=300 * SCALE, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(publish_iqs(), st.sampled_from(PROVIDER_ANSWERS))
        def run(iq: ET.Element, answer: DeliveryResult) -> None:
            self.prepare(answer)
            iq_id = f"fuzz-{next(self.ids)}"
            iq.set("id", iq_id)
            ids.append(iq_id)
            handled = iq.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish") is not None
            stanza = serialize(iq)
            reply = self.exchange(stanza, iq_id)
            if reply.get("type") == "error":
                etype, condition, _ = error_of(reply)
                allowed = PUBLISH_CONDITIONS if handled else UNHANDLED_CONDITIONS
                self.assertIn(condition, allowed, stanza)
                self.assertIn(etype, {"modify", "cancel", "auth", "wait"}, stanza)
                # The component stream's namespace (Prosody cannot read jabber:client).
                self.assertIsNotNone(reply.find(f"{{{COMPONENT_NS}}}error"), stanza)
            else:
                self.assertEqual(reply.get("type"), "result")
            self.assertEqual(reply.get("to"), iq.get("from"), stanza)

        run()
        self.assert_exactly_one_reply_each(ids)
        self.assert_no_tracebacks()
        # Still alive and well: a plain publish is delivered.
        self.prepare(PROVIDER_ANSWERS[0])
        reply = self.exchange(serialize(copy.deepcopy(SEEDS[0])).replace(
            SEEDS[0].get("id", ""), "alive"), "alive")
        self.assertEqual(reply.get("type"), "result")

    def test_only_a_set_publish_is_handled(self) -> None:
        self.prepare(PROVIDER_ANSWERS[0])
        for kind in ("result", "error", "get"):
            iq = copy.deepcopy(SEEDS[0])
            iq.set("type", kind)
            iq.set("id", f"response-{kind}")
            self.recv(serialize(iq))
        self.settle()
        self.assertEqual(self.replies("response-result") + self.replies("response-error"), [])
        (reply,) = self.replies("response-get")
        self.assertEqual(error_of(reply)[1], "bad-request")
        self.assertEqual(sum(len(p.sent) for p in self.providers.values()), 0)


# -- (b) ad-hoc command forms ---------------------------------------------------------------
COMMAND_NODES = [command.node for command in COMMANDS]
FIELDS_OF = {command.node: {*command.required, *command.optional} for command in COMMANDS}
KNOWN_FIELDS = sorted({f for fields in FIELDS_OF.values() for f in fields} | {"device-id"})
FIELD_TYPES = ["text-single", "text-multi", "text-private", "hidden", "boolean", "fixed",
               "jid-single", "jid-multi", "list-single", "list-multi", "bogus", None]
FORM_KINDS = ["submit"] * 5 + ["", "form", "cancel", "result", "bogus", None]
# policy-violation: a new device past the account's limit (random android-ids add up).
COMMAND_CONDITIONS = {"bad-request", "item-not-found", "forbidden", "policy-violation"}
command_values = st.one_of(
    st.sampled_from([APNS, FCM, MONAL, "apns", "fcm", "gcm", "", "nope",
                     "room@conference.localhost", "@@", "a@b/c@d", "x" * 3000,
                     "ab" * 32, "true", "1"]),
    xml_text)
senders = st.sampled_from(["alice@localhost/phone"] * 6 + [
    "bob@localhost/dev", "alice@localhost", "localhost", "eve@elsewhere.example/x"])


def field_xml(draw: st.DrawFn) -> str:
    var = draw(st.one_of(st.sampled_from(KNOWN_FIELDS), xml_text))
    ftype = draw(st.sampled_from(FIELD_TYPES))
    values = draw(st.lists(command_values, max_size=3))
    field = ET.Element(f"{{{DATA}}}field", var=var)
    if ftype is not None:
        field.set("type", ftype)
    for value in values:
        ET.SubElement(field, f"{{{DATA}}}value").text = value
    return tostring(field, xmlns=DATA)


@st.composite
def forms(draw: st.DrawFn) -> tuple[str, bool]:
    """(form XML, is it a submitted form)."""
    kind = draw(st.sampled_from(FORM_KINDS))
    fields = "".join(field_xml(draw) for _ in range(draw(st.integers(0, 6))))
    type_attr = "" if kind is None else f" type='{kind}'"
    return f"<x xmlns='{DATA}'{type_attr}>{fields}</x>", kind in ("submit", "", None)


def command_xml(node: str, action: str | None, sessionid: str | None, payload: str) -> str:
    attrs = f" node='{node}'"
    if action is not None:
        attrs += f" action='{action}'"
    if sessionid is not None:
        attrs += f" sessionid='{sessionid}'"
    return f"<command xmlns='{COMMANDS_NS}'{attrs}>{payload}</command>"


def escape_attr(value: str) -> str:
    return (value.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;")
            .replace(">", "&gt;"))


class TestCommandFuzz(StreamFuzz):
    def command(self, sender: str, body: str) -> ET.Element:
        iq_id = f"cmd-{next(self.ids)}"
        self.ids_sent.append(iq_id)
        return self.exchange(f"<iq type='set' from='{sender}' to='push.localhost' "
                             f"id='{iq_id}'>{body}</iq>", iq_id)

    def check(self, reply: ET.Element, node: str, request: str, executing_ok: bool) -> None:
        if reply.get("type") == "result":
            command = reply.find(f"{{{COMMANDS_NS}}}command")
            self.assertIsNotNone(command, request)
            assert command is not None
            allowed = {"completed", "executing"} if executing_ok else {"completed"}
            self.assertIn(command.get("status"), allowed, request)
            return
        _, condition, text = error_of(reply)
        self.assertNotEqual(condition, "undefined-condition", f"{text}: {request}")
        self.assertIn(condition, COMMAND_CONDITIONS, f"{text}: {request}")
        if condition == "bad-request":
            named = re.findall(r"'([^']*)'", text)
            self.assertTrue(named and named[0] in FIELDS_OF.get(node, set()) | {"device-id"},
                            f"bad-request without a field name: {text!r}: {request}")

    def test_random_command_forms(self) -> None:
        self.ids_sent: list[str] = []

        @settings(max_examples=250 * SCALE, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.data())
        def run(data: st.DataObject) -> None:
            node = data.draw(st.one_of(st.sampled_from(COMMAND_NODES), xml_text), "node")
            sender = data.draw(senders, "sender")
            node_attr = escape_attr(node)
            if data.draw(st.integers(0, 3), "two steps") == 0:
                # Two steps: execute without a form, then submit it in the session.
                body = command_xml(node_attr, "execute", None, "")
                first = self.command(sender, body)
                self.check(first, node, body, executing_ok=True)
                command = first.find(f"{{{COMMANDS_NS}}}command")
                if first.get("type") != "result" or command is None \
                        or command.get("status") != "executing":
                    return
                form, _ = data.draw(forms(), "form")
                action = data.draw(st.sampled_from(["complete", "execute", "next"]), "action")
                # KNOWN BUG (test_second_step_without_a_form_is_a_bad_request): the
                # second step always carries exactly one form until fixed.
                body = command_xml(node_attr, action, command.get("sessionid"), form)
                self.check(self.command(sender, body), node, body, executing_ok=False)
                return
            form, submitted = data.draw(forms(), "form")
            with_form = data.draw(st.integers(0, 5), "with form") > 0
            action = data.draw(st.sampled_from(["execute"] * 5 + [None]), "action")
            body = command_xml(node_attr, action, None, form if with_form else "")
            reply = self.command(sender, body)
            self.check(reply, node, body, executing_ok=not (with_form and submitted))

        run()
        self.assert_exactly_one_reply_each(self.ids_sent)
        self.assert_no_tracebacks()

    def test_second_step_without_a_form_is_a_bad_request(self) -> None:
        self.ids_sent = []
        first = self.command("alice@localhost/phone",
                             command_xml("register-device", "execute", None, ""))
        command = first.find(f"{{{COMMANDS_NS}}}command")
        assert command is not None
        reply = self.command("alice@localhost/phone", command_xml(
            "register-device", "complete", command.get("sessionid"), ""))
        _, condition, text = error_of(reply)
        self.assertEqual(condition, "bad-request", text)
        self.assertIn("'provider'", text)


class SlowStore(MemoryStore):
    """A store whose writes take 1.2 s (a busy disk, a big group commit)."""

    async def _persist(self, ops: Any) -> None:
        await asyncio.sleep(1.2)


class TestSlowRegistration(StreamFuzz):
    def setUp(self) -> None:
        super().setUp()
        self.plugin.store = self.plugin.registrations.store = SlowStore()
        self.ids_sent: list[str] = []

    command = TestCommandFuzz.command

    def test_registration_slower_than_a_second(self) -> None:
        form = (f"<x xmlns='{DATA}' type='submit'><field var='provider'><value>{APNS}</value>"
                f"</field><field var='device-token'><value>{apns_token(1)}</value></field></x>")
        reply = self.command("alice@localhost/phone",
                             command_xml("register-device", "execute", None, form))
        self.assertEqual(reply.get("type"), "result")
        first = self.command("alice@localhost/phone",
                             command_xml("register-device", "execute", None, ""))
        session = first.find(f"{{{COMMANDS_NS}}}command")
        assert session is not None
        reply = self.command("alice@localhost/phone", command_xml(
            "register-device", "complete", session.get("sessionid"),
            form.replace(apns_token(1), apns_token(2))))
        self.assertEqual(error_of(reply)[1], "", "a stored registration answered with an error")
        self.wait_(1.5)
        self.assertEqual(self.xmpp.plugin["xep_0050"].sessions, {}, "sessions leaked")


# -- (c) configs ------------------------------------------------------------------------
SECTION_KEYS: dict[str, list[str]] = {
    "xmpp": ["mode", "jid", "host", "port", "secret", "secret_file", "secret_env", "password",
             "password_file", "password_env"],
    "appserver": ["store", "allowed_domains", "remote_disable", "max_registrations_per_account",
                  "max_group_chats_per_device"],
    "delivery": ["reply_within", "retry_base", "retry_max_delay", "give_up_after",
                 "max_pending", "rate_burst", "rate_interval"],
    "logging": ["level", "format"],
    "metrics": ["listen"],
}
APP_KEYS = ["type", "include_body", "timeout", "ttl", "call_ttl", "monal_modules", "endpoint",
            "ca_file", "topic", "format", "environment", "max_connections", "key_file",
            "cert_file", "key_id", "team_id", "service_account_file", "project_id",
            "android_channel"]
# KNOWN BUG (test_error_keys_quote_keys_that_need_it): no id with both '.' and '"'.
APP_IDS = ["ios", "tigase:messenger:apns:1", "org.example.app", "we\"ird", "a b", ""]
FILE_NAMES = ["secret.txt", "key.p8", "empty.txt", "folder", "missing.txt", "/nonexistent/x",
              "account.json", "binary.bin"]
SECRET_ENV = "SLIXMPP_PUSH_FUZZ_SECRET"
GOOD_VALUES: dict[str, list[Any]] = {
    "mode": ["component", "client"], "jid": ["push.localhost", "bot@localhost"],
    "host": ["127.0.0.1", "::1"], "port": [5347, 0, 65536, -1],
    "type": ["apns", "fcm", "console"], "environment": ["production", "sandbox"],
    "format": ["apns", "fcm", "text", "json"], "level": ["debug", "INFO", "warning", "TRACE"],
    "listen": ["127.0.0.1:9100", "[::1]:9100", "::1:9100", ":80", "h:99999", "h:0x10",
               "h:\uff11", "h:\u00b2", "[:80"],
    "topic": ["org.example.chat"], "key_id": ["KEY123"], "team_id": ["TEAM123"],
    "store": ["data/store.json", "/tmp/x.json"], "allowed_domains": [["localhost"], [""], []],
    "monal_modules": [["monalProdiOS"], [""], [1]],
    "endpoint": ["127.0.0.1:1", "https://127.0.0.1:1"],
    "secret_env": [SECRET_ENV, "SLIXMPP_PUSH_FUZZ_UNSET", ""],
    "password_env": [SECRET_ENV],
}
for _name in ("secret_file", "password_file", "key_file", "cert_file", "ca_file",
              "service_account_file"):
    GOOD_VALUES[_name] = FILE_NAMES
for _name in SECTION_KEYS["delivery"] + ["timeout", "ttl", "call_ttl", "max_connections",
                                         "max_registrations_per_account",
                                         "max_group_chats_per_device"]:
    GOOD_VALUES[_name] = [0, 1, -1, 0.5, 2, 10**20, math.inf, -math.inf, math.nan, True]
GOOD_VALUES["port"] += [True, 5347.0]

# KNOWN BUG (test_error_keys_quote_keys_that_need_it): keys needing quotes in a
# dotted path (empty, with '.' or '"') are left out of the random keys.
toml_keys = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters='."'),
                    min_size=1, max_size=8)
toml_scalars = st.one_of(
    st.text(max_size=12), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(), st.booleans(), st.datetimes(), st.dates(), st.times())
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(toml_keys, inner, max_size=3),
    max_leaves=6)


def value_for(key: str) -> st.SearchStrategy[Any]:
    good = GOOD_VALUES.get(key)
    return st.one_of(st.sampled_from(good), toml_values) if good else toml_values


@st.composite
def sections(draw: st.DrawFn, keys: list[str]) -> dict[str, Any]:
    chosen = draw(st.lists(st.sampled_from(keys), max_size=len(keys), unique=True))
    table = {key: draw(value_for(key)) for key in chosen}
    if draw(st.integers(0, 5)) == 0:
        table[draw(toml_keys)] = draw(toml_values)
    return table


@st.composite
def config_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly a valid config with a few keys changed; sometimes anything at all."""
    document: dict[str, Any] = {
        "xmpp": {"jid": "push.localhost", "secret_file": "secret.txt"},
        "apps": {"ios": {"type": "apns", "topic": "org.example.chat", "key_file": "key.p8",
                         "key_id": "KEY123", "team_id": "TEAM123"}},
    }
    for section, keys in SECTION_KEYS.items():
        if draw(st.booleans()):
            table = draw(sections(keys))
            if draw(st.booleans()) and isinstance(document.get(section), dict):
                document[section].update(table)
            else:
                document[section] = table
    if draw(st.booleans()):
        apps = draw(st.dictionaries(st.sampled_from(APP_IDS), sections(APP_KEYS), max_size=3))
        document["apps"] = apps if draw(st.booleans()) else {**document["apps"], **apps}
    for _ in range(draw(st.integers(0, 2))):
        where = draw(st.sampled_from([*SECTION_KEYS, "apps", "extra", ""]))
        value = draw(toml_values)
        if where == "":
            document = value if isinstance(value, dict) else document
        else:
            document[where] = value
    return document


@pytest.fixture(scope="module")
def config_folder(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("fuzzconfig")
    (folder / "secret.txt").write_text("s3cret\n")
    (folder / "key.p8").write_text("-----BEGIN PRIVATE KEY-----\nMIG\n-----END PRIVATE KEY-----\n")
    (folder / "empty.txt").write_text("")
    (folder / "folder").mkdir()
    (folder / "account.json").write_text('{"type": "service_account"}')
    # KNOWN BUG (test_secret_file_that_is_not_text_is_a_config_error): binary.bin
    # is not created for the fuzzer; the pinned test creates its own.
    os.environ[SECRET_ENV] = "from-the-environment"
    yield folder
    os.environ.pop(SECRET_ENV, None)


def split_key(key: str) -> list[str]:
    """``apps."a.b".type`` → ``["apps", "a.b", "type"]``."""
    parts: list[str] = []
    rest = key
    while rest:
        if rest.startswith('"'):
            value, end = json.JSONDecoder().raw_decode(rest)  # quoted with escapes
            parts.append(value)
            rest = rest[end:]
        else:
            part, _, rest = rest.partition(".")
            parts.append(part)
            continue
        rest = rest.removeprefix(".")
    return parts


def assert_names_a_path(error: ConfigError, document: dict[str, Any]) -> None:
    """The key is a dotted path through the document; only a missing last key,
    or a section left out (read as an empty table), may be absent."""
    assert isinstance(error.key, str) and error.key, error
    parts = split_key(error.key)
    sections = {*SECTION_KEYS, "apps"}
    if error.problem == "is not a known key":
        node: Any = document
        for part in parts:
            assert isinstance(node, dict) and part in node, f"{error.key!r} is not in the doc"
            node = node[part]
        return
    assert parts[0] in sections, error  # only unknown keys live outside the sections
    node = document
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif node is document and part in sections:
            node = {}
        else:
            raise AssertionError(f"{error.key!r} does not name a path in {document!r}")


def known_bug(exc: Exception, document: dict[str, Any]) -> bool:
    """KNOWN BUG (test_metrics_listen_with_a_non_ascii_digit_port_is_a_config_error):
    a port of Unicode digits passes str.isdigit() but not int()."""
    listen = document.get("metrics", {}).get("listen") if isinstance(
        document.get("metrics"), dict) else None
    return (isinstance(exc, ValueError) and isinstance(listen, str)
            and not listen.rpartition(":")[2].isascii())


@settings(max_examples=300 * SCALE, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(document=config_documents())
def test_parse_config_raises_only_config_errors(document: dict[str, Any],
                                                config_folder: Path) -> None:
    try:
        config = parse_config(document, config_folder)
    except ConfigError as error:
        assert_names_a_path(error, document)
        return
    except Exception as exc:
        if known_bug(exc, document):
            return
        raise
    assert isinstance(config, Config) and config.apps


@pytest.mark.parametrize("listen", ["127.0.0.1:\u00b2", "127.0.0.1:1\u00b3"])
def test_metrics_listen_with_a_non_ascii_digit_port_is_a_config_error(
        listen: str, config_folder: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(valid_document(metrics={"listen": listen}), config_folder)
    assert raised.value.key == "metrics.listen"


@pytest.mark.parametrize("listen", ["[:9100", "[]:9100"])
def test_metrics_listen_with_a_broken_host_is_refused(listen: str, config_folder: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(valid_document(metrics={"listen": listen}), config_folder)
    assert raised.value.key == "metrics.listen"


def test_secret_file_that_is_not_text_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "binary.bin").write_bytes(b"\xff\xfe\x00\x9c secret")
    document = valid_document()
    document["xmpp"] = {"jid": "push.localhost", "secret_file": "binary.bin"}
    with pytest.raises(ConfigError) as raised:
        parse_config(document, tmp_path)
    assert raised.value.key == "xmpp.secret_file"


@pytest.mark.parametrize("section, key", [
    ("delivery", "retry_base"), ("delivery", "retry_max_delay"), ("delivery", "reply_within"),
    ("delivery", "rate_interval"), ("delivery", "give_up_after"), ("apps", "timeout")])
def test_nan_is_refused(section: str, key: str, config_folder: Path) -> None:
    document = valid_document()
    if section == "apps":
        document["apps"]["ios"][key] = math.nan
        where = f"apps.ios.{key}"
    else:
        document[section] = {key: math.nan}
        where = f"{section}.{key}"
    with pytest.raises(ConfigError) as raised:
        parse_config(document, config_folder)
    assert raised.value.key == where


@pytest.mark.parametrize("document, path", [
    ({"apps": {'a.b"c': {"type": "bogus"}}}, ["apps", 'a.b"c', "type"]),
    ({"a.b": 1}, ["a.b"]),
    ({"": 1}, [""]),
    ({"delivery": {"x.y": 1}}, ["delivery", "x.y"]),
])
def test_error_keys_quote_keys_that_need_it(document: dict[str, Any], path: list[str],
                                            config_folder: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({**valid_document(), **document}, config_folder)
    assert split_key(raised.value.key) == path


@pytest.mark.parametrize("kind", ["binary", "folder"])
def test_unreadable_config_file_is_a_config_error(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "push.toml"
    if kind == "binary":
        path.write_bytes(b"\xff\xfe[xmpp]\n")
    else:
        path.mkdir()
    with pytest.raises(ConfigError):
        load_config(path)


def valid_document(**extra: Any) -> dict[str, Any]:
    return {
        "xmpp": {"jid": "push.localhost", "secret_file": "secret.txt"},
        "apps": {"ios": {"type": "console", "topic": "org.example.chat"}},
        **extra,
    }


if __name__ == "__main__":
    unittest.main()
