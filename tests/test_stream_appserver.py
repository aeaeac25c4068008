"""push_appserver over a mock component stream (SlixTest): the dialects' wire
exchanges, publish checks and the exact replies a server sees."""

from __future__ import annotations

import re
import unittest

from fakes.scripted import ScriptedProvider
from slixmpp.test import SlixTest
from stream_support import AppServerStreamTest
from tokens import apns_token, fcm_token

import slixmpp_push  # noqa: F401  (registers the plugin)
from slixmpp_push import AppConfig, DeliveryResult, MemoryStore, Outcome

TOKEN = apns_token("alice's phone")
APPS = [
    AppConfig(id="tigase:messenger:apns:1", type="console", topic="org.tigase.messenger"),
    AppConfig(id="fcm-xmpp-api", type="console", format="fcm"),
    AppConfig(id="monal", type="console", topic="im.monal", monal_modules=("monalProdiOS",)),
]


def publish(
    node: str,
    secret: str | None = None,
    frm: str = "localhost",
    extra: str = "",
    iq_id: str = "pub1",
) -> str:
    options = ""
    if secret is not None:
        options = (
            "<publish-options><x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE' type='hidden'>"
            "<value>http://jabber.org/protocol/publish-options</value></field>"
            f"<field var='secret'><value>{secret}</value></field></x></publish-options>"
        )
    return (
        f"<iq type='set' from='{frm}' to='push.localhost' id='{iq_id}'>"
        "<pubsub xmlns='http://jabber.org/protocol/pubsub'>"
        f"<publish node='{node}'><item><notification xmlns='urn:xmpp:push:0'>"
        "<x xmlns='jabber:x:data' type='form'>"
        "<field type='hidden' var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>"
        "<field type='text-single' var='message-count'><value>1</value></field>"
        "<field type='text-single' var='pending-subscription-count'/>"
        "<field type='jid-single' var='last-message-sender'><value>bob@localhost/rig</value>"
        "</field><field type='text-single' var='last-message-body'><value>secret text</value>"
        f"</field></x>{extra}</notification></item></publish>{options}</pubsub></iq>"
    )


def command(
    node: str, fields: dict[str, str], frm: str = "alice@localhost/phone", iq_id: str = "reg1"
) -> str:
    body = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    return (
        f"<iq type='set' from='{frm}' to='push.localhost' id='{iq_id}'>"
        f"<command xmlns='http://jabber.org/protocol/commands' node='{node}' "
        "action='execute'><x xmlns='jabber:x:data' type='submit'>"
        f"{body}</x></command></iq>"
    )


class TestAppServerStream(AppServerStreamTest):
    def setUp(self) -> None:
        self.scripted = ScriptedProvider(APPS[0])
        self.start_appserver(APPS, self.scripted)

    def form_values(self, raw: str) -> dict[str, str]:
        return dict(re.findall(r"var=\"([^\"]+)\"[^>]*><value>([^<]*)</value>", raw))

    def register_tigase(
        self,
        token: str = TOKEN,
        frm: str = "alice@localhost/phone",
    ) -> str:
        self.recv(
            command(
                "register-device",
                {
                    "provider": APPS[0].id,
                    "device-token": token,
                    "device-second-token": apns_token("voip " + token),
                },
                frm,
            )
        )
        raw = self.sent_raw()
        self.assertIn('status="completed"', raw)
        return self.form_values(raw)["node"]

    # -- disco ---------------------------------------------------------------------
    def test_disco_identity_and_provider_features(self) -> None:
        self.recv(
            "<iq type='get' from='alice@localhost/phone' to='push.localhost' id='d1'>"
            "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
        )
        raw = self.sent_raw()
        self.assertIn('category="pubsub"', raw)
        self.assertIn('type="push"', raw)
        for feature in (
            "urn:xmpp:push:0",
            "tigase:messenger:apns:1",
            "fcm-xmpp-api",
            "http://jabber.org/protocol/commands",
        ):
            self.assertIn(f'var="{feature}"', raw)

    # -- Tigase dialect --------------------------------------------------------------
    def test_tigase_register_answers_node_and_features(self) -> None:
        self.recv(command("register-device", {"provider": APPS[0].id, "device-token": TOKEN}))
        raw = self.sent_raw()
        values = self.form_values(raw)
        self.assertGreaterEqual(len(values["node"]), 12)
        self.assertIn("tigase:push:encrypt:0", raw)
        self.assertIn('var="max-payload-size"', raw)
        self.assertNotIn('var="secret"', raw)
        registration = self.store.get(values["node"])
        assert registration is not None
        self.assertEqual(registration.account, "alice@localhost")
        self.assertEqual(registration.domain, "localhost")
        self.assertIsNone(registration.secret)

    def test_same_device_keeps_node_other_account_gets_its_own(self) -> None:
        first = self.register_tigase(TOKEN)
        again = self.register_tigase(TOKEN)
        other = self.register_tigase(TOKEN, frm="mallory@localhost/x")
        self.assertEqual(first, again)
        self.assertNotEqual(first, other)
        self.assertEqual(self.store.get(first).account, "alice@localhost")  # type: ignore

    def test_missing_field_is_a_bad_request_naming_it(self) -> None:
        self.recv(command("register-device", {"provider": APPS[0].id}))
        raw = self.sent_raw()
        self.assertIn('type="error"', raw)
        self.assertIn("bad-request", raw)
        self.assertIn("device-token", raw)

    def test_unknown_provider_is_refused(self) -> None:
        self.recv(command("register-device", {"provider": "nope", "device-token": TOKEN}))
        raw = self.sent_raw()
        self.assertIn("item-not-found", raw)
        self.assertIn("nope", raw)

    def test_foreign_domain_may_not_register(self) -> None:
        self.recv(
            command(
                "register-device",
                {"provider": APPS[0].id, "device-token": TOKEN},
                frm="eve@elsewhere.example/x",
            )
        )
        raw = self.sent_raw()
        self.assertIn("forbidden", raw)
        self.assertEqual(len(self.store), 0)

    def test_only_the_owner_may_unregister(self) -> None:
        node = self.register_tigase(TOKEN)
        self.recv(
            command(
                "unregister-device",
                {"provider": APPS[0].id, "device-token": TOKEN},
                frm="mallory@localhost/x",
                iq_id="u1",
            )
        )
        self.assertIn("item-not-found", self.sent_raw())
        self.assertIsNotNone(self.store.get(node))
        self.recv(
            command(
                "unregister-device", {"provider": APPS[0].id, "device-token": TOKEN}, iq_id="u2"
            )
        )
        self.assertIn('status="completed"', self.sent_raw())
        self.assertIsNone(self.store.get(node))

    def test_command_without_form_returns_the_form(self) -> None:
        self.recv(
            "<iq type='set' from='alice@localhost/phone' to='push.localhost' id='c1'>"
            "<command xmlns='http://jabber.org/protocol/commands' "
            "node='register-device' action='execute'/></iq>"
        )
        raw = self.sent_raw()
        self.assertIn('status="executing"', raw)
        self.assertIn('var="device-token"', raw)

    def test_completed_sessions_are_not_kept(self) -> None:
        self.register_tigase()
        self.wait_(1.2)
        self.assertEqual(self.xmpp["xep_0050"].sessions, {})

    # -- p2 dialect -----------------------------------------------------------------
    def test_p2_register_answers_jid_node_secret(self) -> None:
        self.recv(command("register-push-fcm", {"token": fcm_token(1), "android-id": "dev1"}))
        values = self.form_values(self.sent_raw())
        self.assertEqual(values["jid"], "push.localhost")
        self.assertGreaterEqual(len(values["node"]), 12)
        self.assertGreaterEqual(len(values["secret"]), 22)  # >= 128 bits
        registration = self.store.get(values["node"])
        assert registration is not None
        self.assertEqual(registration.app, "fcm-xmpp-api")
        self.assertEqual(len(registration.device_key or ""), 40)
        # Same device, new token: same node and secret, token updated.
        self.recv(
            command("register-push-fcm", {"token": fcm_token(2), "android-id": "dev1"},
                    iq_id="reg2")
        )
        again = self.form_values(self.sent_raw())
        self.assertEqual((again["node"], again["secret"]), (values["node"], values["secret"]))
        self.assertEqual(self.store.get(values["node"]).token, fcm_token(2))  # type: ignore

    def test_p2_unregister_by_android_id_and_channel(self) -> None:
        self.recv(
            command(
                "register-push-fcm",
                {"token": fcm_token(1), "android-id": "dev1", "muc": "room@conference.localhost"},
            )
        )
        node = self.form_values(self.sent_raw())["node"]
        self.assertIsNotNone(self.store.get(node).channel_key)  # type: ignore[union-attr]
        self.recv(
            command(
                "unregister-push-fcm",
                {"android-id": "dev1", "channel": "room@conference.localhost"},
                iq_id="u1",
            )
        )
        self.assertIn('status="completed"', self.sent_raw())
        self.assertIsNone(self.store.get(node))

    # -- v1 dialect -----------------------------------------------------------------
    def test_v1_register_and_unregister(self) -> None:
        self.recv(command("v1-register-push",
                          {"type": "fcm", "node": "my-device", "token": fcm_token(1)}))
        values = self.form_values(self.sent_raw())
        self.assertEqual(set(values), {"jid", "node", "secret"})
        self.recv(
            command("v1-register-push", {"type": "gcm", "node": "d", "token": "t"}, iq_id="bad")
        )
        raw = self.sent_raw()
        self.assertIn("bad-request", raw)
        self.assertIn("type", raw)
        self.recv(command("v1-unregister-push", {"type": "fcm", "node": "my-device"}, iq_id="u1"))
        self.assertIn('status="completed"', self.sent_raw())
        self.assertIsNone(self.store.get(values["node"]))

    # -- publish ----------------------------------------------------------------------
    def test_publish_delivers_and_answers_result(self) -> None:
        node = self.register_tigase()
        self.recv(publish(node))
        raw = self.sent_raw()
        self.assertIn('type="result"', raw)
        self.assertIn('id="pub1"', raw)
        self.assertEqual(len(self.scripted.sent), 1)
        request = self.scripted.sent[0]
        self.assertEqual(request.payload["account"], "alice@localhost")  # type: ignore
        # Bodies and senders stay home unless the operator opts in.
        self.assertNotIn("secret text", str(request))
        self.assertNotIn("bob@localhost", str(request))

    def test_unknown_node_is_item_not_found_cancel(self) -> None:
        self.recv(publish("nosuchnode"))
        raw = self.sent_raw()
        self.assertIn('type="cancel"', raw)
        self.assertIn("item-not-found", raw)

    def test_publisher_must_be_the_registration_domain(self) -> None:
        node = self.register_tigase()
        for frm in ("elsewhere.example", "alice@localhost", "localhost/res"):
            self.recv(publish(node, frm=frm))
            raw = self.sent_raw()
            self.assertIn('type="auth"', raw, frm)
        self.assertEqual(self.scripted.sent, [])

    def test_wrong_secret_is_not_authorized(self) -> None:
        self.recv(command("register-push-apns", {"token": TOKEN, "android-id": "d"}))
        values = self.form_values(self.sent_raw())
        self.recv(publish(values["node"], secret="wrong"))
        raw = self.sent_raw()
        self.assertIn('type="auth"', raw)
        self.assertIn("not-authorized", raw)
        self.recv(publish(values["node"], secret=None, iq_id="p2"))
        self.assertIn("not-authorized", self.sent_raw())
        self.recv(publish(values["node"], secret=values["secret"], iq_id="p3"))
        self.assertIn('type="result"', self.sent_raw())

    def test_error_reply_uses_the_component_namespace(self) -> None:
        self.recv(publish("nosuchnode"))
        raw = self.sent_raw()
        self.assertNotIn("jabber:client", raw)
        self.assertRegex(raw, r"<error type=\"cancel\"><item-not-found ")

    def test_malformed_publish_is_bad_request(self) -> None:
        self.recv(
            "<iq type='set' from='localhost' to='push.localhost' id='m1'>"
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='x'>"
            "<item><nothing/></item></publish></pubsub></iq>"
        )
        raw = self.sent_raw()
        self.assertIn('type="modify"', raw)
        self.assertIn("bad-request", raw)

    def test_dead_token_drops_registration_and_disables_remotely(self) -> None:
        node = self.register_tigase()
        self.scripted.script.append(DeliveryResult(Outcome.DEAD_TOKEN, 410, "Unregistered"))
        self.recv(publish(node))
        sent = self.sent_raw() + self.sent_raw()
        self.assertIn("item-not-found", sent)
        self.assertIn('affiliation="none"', sent)
        # Named node, explicit from (ejabberd demands it), headline (never stored offline).
        self.assertRegex(sent, r'<message [^>]*type="headline"')
        self.assertRegex(sent, r'<message [^>]*from="push.localhost"')
        self.assertIn(f'node="{node}"', sent.split("<message", 1)[1])
        self.assertIsNone(self.store.get(node))
        self.recv(publish(node, iq_id="again"))
        self.assertIn("item-not-found", self.sent_raw())

    def test_transient_failure_is_queued_and_answered_result(self) -> None:
        node = self.register_tigase()
        self.scripted.script.append(
            DeliveryResult(Outcome.RETRY, 503, "ServiceUnavailable", retry_after=0.2)
        )
        self.recv(publish(node))
        self.assertIn('type="result"', self.sent_raw())
        self.assertEqual(self.plugin.delivery.pending_count, 1)
        self.assertIn(node, self.store.table("pending"))
        self.wait_(1.5)
        self.assertEqual(len(self.scripted.sent), 2)
        self.assertEqual(self.plugin.delivery.pending_count, 0)
        self.assertNotIn(node, self.store.table("pending"))

    def test_call_goes_to_the_voip_token(self) -> None:
        node = self.register_tigase(TOKEN)
        self.recv(
            publish(
                node,
                extra=(
                    "<encrypted xmlns='tigase:push:encrypt:0' iv='SVY=' type='voip'>"
                    "QkxPQg==</encrypted>"
                    "<jingle xmlns='tigase:push:jingle:0' action='propose' sid='s1'>"
                    "<media>audio</media></jingle>"
                ),
            )
        )
        self.assertIn('type="result"', self.sent_raw())
        request = self.scripted.sent[0]
        self.assertEqual(request.token, apns_token("voip " + TOKEN))
        self.assertEqual(request.topic, "org.tigase.messenger.voip")  # type: ignore
        self.assertEqual(request.push_type, "voip")  # type: ignore
        self.assertEqual(
            request.payload,
            {
                "account": "alice@localhost",  # type: ignore
                "encrypted": "QkxPQg==",
                "iv": "SVY=",
            },
        )

    # -- Monal stateless ---------------------------------------------------------------
    def test_monal_stateless_publish(self) -> None:
        token = "ab" * 32
        self.recv(
            publish(token, secret=None).replace(
                "</pubsub>",
                "<publish-options><x xmlns='jabber:x:data' type='submit'>"
                "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options"
                "</value></field><field var='pushModule'><value>monalProdiOS</value></field>"
                "</x></publish-options></pubsub>",
            )
        )
        self.assertIn('type="result"', self.sent_raw())
        self.recv(
            publish(token, secret=None, iq_id="p2").replace(
                "</pubsub>",
                "<publish-options><x xmlns='jabber:x:data' type='submit'>"
                "<field var='pushModule'><value>unknownModule</value></field>"
                "</x></publish-options></pubsub>",
            )
        )
        raw = self.sent_raw()
        self.assertIn("bad-request", raw)
        self.assertIn('type="cancel"', raw)


if __name__ == "__main__":
    unittest.main()


class TestPluginEnd(SlixTest):
    def test_plugin_end_removes_everything_it_added(self) -> None:
        self.stream_start(mode="component", jid="push.localhost", server="localhost",
                          plugins=["xep_0030", "xep_0004", "xep_0050"])
        before_handlers = {h.name for h in self.xmpp._XMLStream__handlers}
        before_filters = len(self.xmpp._XMLStream__filters["out"])
        self.xmpp.register_plugin("push_appserver", {"apps": APPS, "store": MemoryStore()})
        self.assertIn("push_appserver publish", {h.name for h in self.xmpp._XMLStream__handlers})
        self.wait_()  # xep_0050 adds commands from a task
        # The eight registration commands and test-push (send-notification needs admins).
        self.assertEqual(len(self.xmpp["xep_0050"].commands), 9)
        self.assertIn("test-push", {node for _, node in self.xmpp["xep_0050"].commands})
        self.xmpp.plugin.disable("push_appserver")
        self.assertEqual({h.name for h in self.xmpp._XMLStream__handlers}, before_handlers)
        self.assertEqual(len(self.xmpp._XMLStream__filters["out"]), before_filters)
        self.recv("<iq type='get' from='alice@localhost/phone' to='push.localhost' id='d1'>"
                  "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        self.wait_for_send_queue()
        raw = self.xmpp.socket.next_sent(timeout=1)
        raw = raw.decode() if isinstance(raw, bytes) else str(raw)
        self.assertNotIn("urn:xmpp:push:0", raw)
        self.assertNotIn('type="push"', raw)
        self.assertEqual(self.xmpp["xep_0050"].commands, {})
        items = self.xmpp["xep_0030"].static.get_node(
            self.xmpp.boundjid.full, "http://jabber.org/protocol/commands")
        self.assertNotIn("test-push", str(items["items"]))
        info = self.xmpp["xep_0030"].static.get_node(self.xmpp.boundjid.full, "test-push")
        self.assertNotIn("command-node", str(info["info"]))
