"""The publish fast path (issue 11, item 1) over a mock component stream, and the slixmpp
internals it relies on.

A publish IQ goes from slixmpp's parser straight to the plugin, without stanza objects,
incoming filters or handler matching, and its result is written as raw XML together
with the others of the same moment. Everything else, and publishes while someone has
an incoming filter, goes through slixmpp as before. The tests observe the replies on
the wire and :attr:`PublishFastPath.taken`; the last ones pin the two slixmpp internals,
so that an upgrade that moves them fails here by name.
"""

from __future__ import annotations

import inspect
import re
from typing import Any
from xml.etree.ElementTree import fromstring

from fakes.scripted import ScriptedProvider
from slixmpp import ClientXMPP, ComponentXMPP
from slixmpp.xmlstream import XMLStream
from stream_support import AppServerStreamTest
from test_stream_appserver import APPS, TOKEN, command, publish

from slixmpp_push.appserver.fastpath import PublishFastPath, is_publish
from slixmpp_push.config import XmppConfig
from slixmpp_push.connection import StreamKeeper
from slixmpp_push.metrics import Metrics


class TestFastPath(AppServerStreamTest):
    def setUp(self) -> None:
        self.scripted = ScriptedProvider(APPS[0])
        self.start_appserver(APPS, self.scripted)
        self.recv(command("register-push-apns", {"token": TOKEN, "android-id": "d"}))
        reply = self.sent_raw()
        self.node = re.search(r'var="node"[^>]*><value>([^<]*)<', reply).group(1)  # type: ignore[union-attr]
        self.secret = re.search(r'var="secret"[^>]*><value>([^<]*)<', reply).group(1)  # type: ignore[union-attr]

    @property
    def fast_path(self) -> PublishFastPath:
        assert self.plugin.fast_path is not None
        return self.plugin.fast_path

    def test_a_publish_takes_the_fast_path_and_is_answered_result(self) -> None:
        self.recv(publish(self.node, self.secret, iq_id="fast1"))
        raw = self.sent_raw()
        self.assertEqual(raw, '<iq type="result" id="fast1" to="localhost" '
                              'from="push.localhost"/>')
        self.assertEqual(self.fast_path.taken, 1)
        self.assertEqual(len(self.scripted.sent), 1)

    def test_attributes_of_the_result_are_escaped(self) -> None:
        self.recv(publish(self.node, self.secret, iq_id="a&amp;b&lt;&quot;c&gt;&apos;"))
        raw = self.sent_raw()
        self.assertIn('id="a&amp;b&lt;&quot;c&gt;\'"', raw)
        fromstring(raw)  # well-formed

    def test_results_of_one_moment_share_one_write(self) -> None:
        self.recv("".join(publish(self.node, self.secret, iq_id=f"b{i}") for i in range(5)))
        writes = [self.sent_raw()]
        while len(re.findall(r'id="b\d"', "".join(writes))) < 5:
            writes.append(self.sent_raw())
        # The first may go at once (the last write was long ago); the rest wait for the
        # write interval and go together.
        self.assertLessEqual(len(writes), 2, writes)
        self.assertEqual(sorted(re.findall(r'id="(b\d)"', "".join(writes))),
                         [f"b{i}" for i in range(5)])  # each answered once
        self.assertEqual(self.fast_path.taken, 5)

    def test_refusals_on_the_fast_path_keep_their_precise_errors(self) -> None:
        self.recv(publish(self.node, "wrong", iq_id="w1"))
        raw = self.sent_raw()
        self.assertIn('id="w1"', raw)
        self.assertRegex(raw, r'<error type="auth"><not-authorized ')
        self.assertNotIn("jabber:client", raw)
        self.assertEqual(self.fast_path.taken, 1)

    def test_a_jabber_client_namespaced_publish_is_taken_too(self) -> None:
        # ComponentXMPP maps jabber:client stanzas to its own namespace first.
        self.recv(publish(self.node, self.secret, iq_id="ns1").replace(
            "<iq ", "<iq xmlns='jabber:client' ", 1))
        self.assertIn('type="result"', self.sent_raw())
        self.assertEqual(self.fast_path.taken, 1)

    def test_other_stanzas_still_go_through_slixmpp(self) -> None:
        self.recv("<iq type='get' from='alice@localhost/phone' to='push.localhost' id='d1'>"
                  "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        self.assertIn("urn:xmpp:push:0", self.sent_raw())
        # A publish of the wrong type is the plugin's to refuse, through slixmpp's handler.
        self.recv(publish(self.node, self.secret, iq_id="g1").replace("type='set'",
                                                                      "type='get'", 1))
        raw = self.sent_raw()
        self.assertIn('id="g1"', raw)
        self.assertIn("bad-request", raw)
        self.assertEqual(self.fast_path.taken, 0)

    def test_an_incoming_filter_sees_publishes_again(self) -> None:
        seen: list[str] = []

        def watch(stanza: Any) -> Any:
            seen.append(stanza["id"])
            return stanza

        self.xmpp.add_filter("in", watch)
        self.recv(publish(self.node, self.secret, iq_id="f1"))
        self.assertIn('type="result"', self.sent_raw())
        self.assertEqual(seen, ["f1"])
        self.assertEqual(self.fast_path.taken, 0)
        self.xmpp.del_filter("in", watch)
        self.recv(publish(self.node, self.secret, iq_id="f2"))
        self.assertIn('type="result"', self.sent_raw())
        self.assertEqual(self.fast_path.taken, 1)

    def test_the_all_active_keepalive_counts_a_fast_path_publish_as_arrived(self) -> None:
        """It watches the stream's data, not incoming filters, which would turn the fast
        path off (connection.py)."""
        settings = XmppConfig(mode="component", jid="push.localhost", host="127.0.0.1",
                              port=5347, secret="s")
        keeper = StreamKeeper(self.xmpp, settings, Metrics(), all_active=True)
        try:
            keeper._arrived.clear()
            self.recv(publish(self.node, self.secret, iq_id="k1"))
            self.assertIn('type="result"', self.sent_raw())
            self.assertTrue(keeper._arrived.is_set())
            self.assertEqual(self.fast_path.taken, 1)
        finally:
            keeper.close()
        self.assertNotIn("data_received", vars(self.xmpp))

    def test_removing_the_plugin_removes_the_fast_path(self) -> None:
        self.assertIn("_spawn_event", vars(self.xmpp))
        self.fast_path.uninstall()
        self.assertEqual(self.xmpp._spawn_event, self.xmpp.__class__._spawn_event.__get__(
            self.xmpp))
        self.recv(publish(self.node, self.secret, iq_id="u1"))
        self.assertIn('type="result"', self.sent_raw())  # slixmpp's handler answers
        self.assertEqual(self.fast_path.taken, 0)


def test_a_client_stream_keeps_slixmpp_dispatch() -> None:
    """XEP-0198 counts incoming stanzas in a filter: a client never bypasses it."""
    import slixmpp_push  # noqa: F401  (registers the plugin)
    from slixmpp_push import MemoryStore

    xmpp = ClientXMPP("push@localhost", "secret")
    xmpp.register_plugin("push_appserver", {"apps": APPS, "store": MemoryStore()})
    assert xmpp["push_appserver"].fast_path is None
    assert "_spawn_event" not in vars(xmpp)


def test_is_publish() -> None:
    tag = "{jabber:component:accept}iq"
    assert is_publish(fromstring(publish("n").replace(
        "<iq ", "<iq xmlns='jabber:component:accept' ", 1)), tag)
    assert not is_publish(fromstring(publish("n").replace(
        "<iq ", "<iq xmlns='jabber:component:accept' ", 1).replace("type='set'", "type='get'")),
        tag)
    assert not is_publish(fromstring(
        "<iq xmlns='jabber:component:accept' type='set'><pubsub "
        "xmlns='http://jabber.org/protocol/pubsub'><subscribe node='n'/></pubsub></iq>"), tag)


# -- the slixmpp internals the fast path relies on ------------------------------------------
def test_slixmpp_hands_each_stanza_to_spawn_event() -> None:
    """``data_received`` gives every top-level element to ``self._spawn_event(xml)``,
    looked up on the instance (so that an instance attribute replaces it)."""
    source = inspect.getsource(XMLStream.data_received)
    assert "self._spawn_event(xml)" in source, "slixmpp's data_received changed"
    assert list(inspect.signature(XMLStream._spawn_event).parameters) == ["self", "xml"]
    xmpp = XMLStream()
    xmpp.init_parser()
    xmpp.start_stream_handler = lambda xml: None  # type: ignore[method-assign]
    received: list[str] = []
    xmpp._spawn_event = lambda xml: received.append(xml.get("id"))  # type: ignore[method-assign]
    xmpp.data_received(b"<stream:stream xmlns='jabber:component:accept' "
                       b"xmlns:stream='http://etherx.jabber.org/streams'>")
    xmpp.data_received(b"<iq type='set' id='x1'/><message id='x2'/>")
    assert received == ["x1", "x2"]


def test_slixmpp_keeps_incoming_filters_in_a_name_mangled_dict() -> None:
    xmpp = ComponentXMPP("push.localhost", "secret", "localhost", 5347)
    filters = xmpp._XMLStream__filters  # type: ignore[attr-defined]
    assert filters["in"] == []

    def keep(stanza: Any) -> Any:
        return stanza

    xmpp.add_filter("in", keep)
    assert filters["in"] == [keep], "slixmpp's add_filter changed"
    xmpp.del_filter("in", keep)
    assert filters["in"] == []
