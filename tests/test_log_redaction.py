"""A Monal node is its APNs token: no log line carries it in full, neither ours
(``loggable_node``) nor slixmpp's stanza logs (``redact`` in the logging filter)."""

from __future__ import annotations

import logging

import pytest
from fakes.scripted import ScriptedProvider
from stream_support import AppServerStreamTest

import slixmpp_push  # noqa: F401  (registers the plugin)
from slixmpp_push import AppConfig, DeliveryResult, Outcome
from slixmpp_push.logs import RedactingFilter, loggable_node, redact, short_token

TOKEN = "0f1e2d3c4b5a6978" * 4  # 64 hex digits, as Monal enables with
SHORT = "0f1e2d3c…"


# -- the helpers ---------------------------------------------------------------------
def test_loggable_node_shortens_only_token_shaped_nodes() -> None:
    assert loggable_node(TOKEN) == SHORT
    assert loggable_node(TOKEN.upper()) == "0F1E2D3C…"
    assert loggable_node("ab" * 16) == "abababab…"  # 32 hex: a token
    assert loggable_node("ab" * 15 + "a") == "ab" * 15 + "a"  # 31: not one
    assert loggable_node("fkdvIRucGHZ_") == "fkdvIRucGHZ_"  # our own 12-character nodes
    assert loggable_node("x" + TOKEN) == "x" + TOKEN  # not all hex
    assert loggable_node("") == ""
    assert short_token(TOKEN) == SHORT


@pytest.mark.parametrize("stanza", [
    f"<iq><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{TOKEN}'>",
    f'<iq><enable xmlns="urn:xmpp:push:0" jid="push.example.org" node="{TOKEN}"/></iq>',
    f"<query xmlns='http://jabber.org/protocol/disco#items'><item jid='a' node='{TOKEN}'/>",
    f'<message><pubsub xmlns="http://jabber.org/protocol/pubsub" node="{TOKEN}">',
    f"<disable xmlns='urn:xmpp:push:0' jid='push.example.org' node = '{TOKEN}'/>",
    f'<x xmlns="jabber:x:data"><field var="node"><value>{TOKEN}</value></field></x>',
    f"<x xmlns='jabber:x:data'><field type='text-single' var='node'>\n<value>{TOKEN}</value>",
])
def test_redact_shortens_token_shaped_nodes_in_stanzas(stanza: str) -> None:
    redacted = redact(stanza)
    assert TOKEN not in redacted
    assert SHORT in redacted
    assert redacted == stanza.replace(TOKEN, SHORT)  # nothing else changes


def test_redact_leaves_other_nodes_and_attributes_alone() -> None:
    for stanza in ("<publish node='fkdvIRucGHZ_'>",
                   f"<publish node='{'ab' * 15}'>",  # 30 hex: not a token
                   f"<publish node='{TOKEN}-x'>",  # not all hex
                   f"<item jid='{TOKEN}@example.org'/>",
                   f"<iq id='{TOKEN}' xmlns:inode='{TOKEN}'/>",
                   f"<field var='android-id'><value>{TOKEN}</value></field>"):
        assert redact(stanza) == stanza


def test_redact_still_masks_secrets_beside_a_node() -> None:
    stanza = (f"<enable node='{TOKEN}'><x><field var='secret'><value>hunter2</value></field>"
              "</x></enable>")
    assert redact(stanza) == (f"<enable node='{SHORT}'><x><field var='secret'>"
                              "<value>[redacted]</value></field></x></enable>")


# -- a Monal publish, accepted and refused, logged at DEBUG -----------------------------
APPS = [AppConfig(id="monal", type="console", topic="im.monal",
                  monal_modules=("monalProdiOS",))]


def monal_publish(node: str, module: str, iq_id: str) -> str:
    return (f"<iq type='set' from='localhost' to='push.localhost' id='{iq_id}'>"
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'>"
            f"<publish node='{node}'><item><notification xmlns='urn:xmpp:push:0'/></item>"
            "</publish><publish-options><x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options"
            f"</value></field><field var='pushModule'><value>{module}</value></field>"
            "</x></publish-options></pubsub></iq>")


class TestMonalTokenNeverLogged(AppServerStreamTest):
    @pytest.fixture(autouse=True)
    def _logs(self, caplog: pytest.LogCaptureFixture) -> None:
        # As setup_logging installs it: the filter on the handler, everything at DEBUG.
        caplog.handler.addFilter(RedactingFilter())
        caplog.set_level(logging.DEBUG)
        caplog.set_level(logging.DEBUG, logger="slixmpp")
        self.caplog = caplog

    def setUp(self) -> None:
        self.scripted = ScriptedProvider(APPS[0])
        self.start_appserver(APPS, self.scripted)

    def test_accepted_refused_and_dead_monal_publishes(self) -> None:
        self.recv(monal_publish(TOKEN, "monalProdiOS", "p1"))  # accepted
        self.assertIn('type="result"', self.sent_raw())
        self.recv(monal_publish(TOKEN, "unknownModule", "p2"))  # refused: bad-request
        self.assertIn("bad-request", self.sent_raw())
        self.scripted.script = [DeliveryResult(Outcome.DEAD_TOKEN, 410, "Unregistered")]
        self.recv(monal_publish(TOKEN, "monalProdiOS", "p3"))  # dead: dropped
        self.assertIn("item-not-found", self.sent_raw())
        self.recv(monal_publish(TOKEN, "monalProdiOS", "p4"))  # refused: expired token
        self.assertIn("device token expired", self.sent_raw())
        self.assertEqual([r.token for r in self.scripted.sent], [TOKEN, TOKEN])

        messages = [record.getMessage() for record in self.caplog.records]
        self.assertTrue(messages)
        leaks = [m for m in messages if TOKEN in m or TOKEN.upper() in m]
        self.assertEqual(leaks, [])
        self.assertNotIn(TOKEN, self.caplog.text)
        # The lines are there, with the shortened token.
        self.assertTrue(any(m.startswith("RECV:") and f'node="{SHORT}"' in m
                            for m in messages), messages)
        for line in (f"publish to node {SHORT} from localhost refused: bad-request",
                     f"dropping node {SHORT} of localhost: the provider says 410 Unregistered",
                     f"publish to node {SHORT} from localhost refused: item-not-found "
                     "(device token expired)"):
            self.assertTrue(any(line in m for m in messages), (line, messages))
