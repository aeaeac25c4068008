"""push_registrar over a mock client stream (SlixTest): the exact stanzas it
sends for each dialect, enable/disable, discovery, re-enable, remote disable
and the error mapping. Command forms are also fed to our app server's own
parser, so a dialect cannot drift from what push_appserver reads."""

from __future__ import annotations

import asyncio
import unittest
from collections.abc import Coroutine
from typing import Any

from slixmpp import Iq
from slixmpp.exceptions import IqError, IqTimeout, XMPPError
from slixmpp.test import SlixTest

import slixmpp_push  # noqa: F401  (registers the plugins)
from slixmpp_push import MemoryStore, PushError
from slixmpp_push.appserver.dialects import COMMANDS, submitted_values
from slixmpp_push.registrar import (
    DIALECTS,
    AppServerNotFound,
    ClientRegistration,
    EnableExtensions,
    NotAuthorized,
    PushNotSupported,
    PushRegistrar,
    PushTimeout,
    RegistrationFailed,
)
from slixmpp_push.registrar.errors import from_xmpp_error
from slixmpp_push.store import CLIENT_REGISTRATIONS

ME = "alice@localhost/phone"
APP = "push.localhost"
OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
ADHOC = "http://jabber.org/protocol/commands"
TIGASE_APP = "tigase:messenger:apns:1"


def fields(**values: str) -> str:
    return "".join(f"<field var='{k.replace('_', '-')}'><value>{v}</value></field>"
                   for k, v in values.items())


def command_set(iq_id: str, node: str, form: str) -> str:
    return (f"<iq type='set' to='{APP}' id='{iq_id}'><command xmlns='{ADHOC}' node='{node}' "
            f"action='execute'><x xmlns='jabber:x:data' type='submit'>{form}</x></command></iq>")


def command_result(iq_id: str, node: str, form: str = "") -> str:
    x = f"<x xmlns='jabber:x:data' type='result'>{form}</x>" if form else ""
    return (f"<iq type='result' from='{APP}' to='{ME}' id='{iq_id}'><command xmlns='{ADHOC}' "
            f"node='{node}' sessionid='s1' status='completed'>{x}</command></iq>")


def enable_set(iq_id: str, node: str, options: str = "", inner: str = "", jid: str = APP,
               away: str = "") -> str:
    form = ""
    if options:
        form = (f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
                f"<value>{OPTIONS}</value></field>{options}</x>")
    return (f"<iq type='set' id='{iq_id}'><enable xmlns='urn:xmpp:push:0' jid='{jid}' "
            f"node='{node}'{away}>{form}{inner}</enable></iq>")


def result(iq_id: str, frm: str = "") -> str:
    sender = f" from='{frm}'" if frm else ""
    return f"<iq type='result'{sender} to='{ME}' id='{iq_id}'/>"


def error(iq_id: str, condition: str, etype: str = "cancel", text: str = "",
          frm: str = "") -> str:
    sender = f" from='{frm}'" if frm else ""
    said = (f"<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>{text}</text>" if text else "")
    return (f"<iq type='error'{sender} to='{ME}' id='{iq_id}'><error type='{etype}'>"
            f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>{said}</error></iq>")


SUPPORT_GET = ("<iq type='get' to='alice@localhost' id='{id}'>"
               "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
SUPPORT_RESULT = ("<iq type='result' from='alice@localhost' to='" + ME + "' id='{id}'>"
                  "<query xmlns='http://jabber.org/protocol/disco#info'>"
                  "<identity category='account' type='registered'/>"
                  "<feature var='urn:xmpp:push:0'/></query></iq>")


class RegistrarStreamTest(SlixTest):
    def setUp(self) -> None:
        self.store = MemoryStore()
        self.stream_start(mode="client", jid=ME,
                          plugins=["xep_0030", "xep_0004", "xep_0050", "push_registrar"],
                          plugin_config={"push_registrar": {"store": self.store,
                                                            "timeout": 2.0}})
        self.registrar: PushRegistrar = self.xmpp["push_registrar"]
        self.events: list[tuple[str, Any]] = []
        for name in ("push_enabled", "push_registrar_registered", "push_remote_disabled",
                     "push_registrar_unregistered", "push_reenabled", "push_enable_failed"):
            self.xmpp.add_event_handler(name, lambda data, n=name: self.events.append((n, data)))
        self.run_coro(self.registrar.start())

    def start(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self.wait_()
        return task

    def finish(self, task: asyncio.Future[Any]) -> Any:
        return self.run_coro(asyncio.wait_for(task, 3))

    def sent_stanza(self, expected: str, method: str = "exact") -> Iq:
        """The next stanza sent, checked element for element against ``expected``."""
        self.wait_for_send_queue()
        raw = self.xmpp.socket.next_sent(1.0)
        self.assertIsNotNone(raw, "nothing was sent")
        xml = self.parse_xml(raw)  # type: ignore[arg-type]
        self.fix_namespaces(xml)
        stanza = self.xmpp._build_stanza(xml)
        self.check(stanza, expected, use_values=False, method=method)  # type: ignore[arg-type]
        return stanza  # type: ignore[return-value]

    def support(self, iq_id: str = "1") -> None:
        self.sent_stanza(SUPPORT_GET.format(id=iq_id))
        self.recv(SUPPORT_RESULT.format(id=iq_id))

    def assert_app_server_reads(self, iq: Iq, node: str) -> None:
        """Our own push_appserver finds every field it requires in the command."""
        spec = {c.node: c for c in COMMANDS}[node]
        values = submitted_values(iq)
        assert values is not None
        for name in spec.required:
            self.assertTrue(values.get(name), f"{node}: field {name} missing")
        self.assertLessEqual(set(values) - {"android-id"},
                             set(spec.required) | set(spec.optional))

    def stored(self) -> list[ClientRegistration]:
        return [ClientRegistration.from_doc(d)
                for d in self.store.table(CLIENT_REGISTRATIONS).values()]

    # -- enable / disable ----------------------------------------------------------------
    def test_enable_sends_the_standard_publish_options_form(self) -> None:
        task = self.start(self.registrar.enable(APP, "n0de", {"secret": "s3cr3t"}))
        self.sent_stanza(enable_set("1", "n0de", fields(secret="s3cr3t")))
        self.recv(result("1"))
        self.finish(task)
        self.assertEqual((self.registrar.enables, self.registrar.session_enables), (1, 1))

    def test_enable_without_options_has_no_form(self) -> None:
        task = self.start(self.registrar.enable(APP, "n0de"))
        self.sent_stanza(enable_set("1", "n0de"))
        self.recv(result("1"))
        self.finish(task)

    def test_enable_with_tigase_extensions(self) -> None:
        extensions = EnableExtensions(encrypt_key="a2V5", max_size=3000, priority=True,
                                      jingle=True, groupchat="mentioned",
                                      muted=("room@muc.localhost", "bob@localhost"),
                                      ignore_unknown=True, away=True)
        task = self.start(self.registrar.enable(APP, "n0de", None, extensions))
        self.sent_stanza(enable_set("1", "n0de", away=" away='true'", inner=(
            "<encrypt xmlns='tigase:push:encrypt:0' alg='aes-128-gcm' max-size='3000'>a2V5"
            "</encrypt><priority xmlns='tigase:push:priority:0'/>"
            "<jingle xmlns='tigase:push:jingle:0'/>"
            "<groupchat xmlns='tigase:push:filter:groupchat:0' policy='mentioned'/>"
            "<muted xmlns='tigase:push:filter:muted:0'><item jid='room@muc.localhost'/>"
            "<item jid='bob@localhost'/></muted>"
            "<ignore-unknown xmlns='tigase:push:filter:ignore-unknown:0'/>")))
        self.recv(result("1"))
        self.finish(task)

    def test_disable_one_node_or_all(self) -> None:
        task = self.start(self.registrar.disable(APP, "n0de"))
        self.sent_stanza("<iq type='set' id='1'><disable xmlns='urn:xmpp:push:0' "
                         f"jid='{APP}' node='n0de'/></iq>")
        self.recv(result("1"))
        self.finish(task)
        task = self.start(self.registrar.disable(APP))
        self.sent_stanza(f"<iq type='set' id='2'><disable xmlns='urn:xmpp:push:0' jid='{APP}'/>"
                         "</iq>")
        self.recv(result("2"))
        self.finish(task)

    def test_supported_reads_the_account_features(self) -> None:
        task = self.start(self.registrar.supported())
        self.sent_stanza(SUPPORT_GET.format(id="1"))
        self.recv("<iq type='result' from='alice@localhost' to='" + ME + "' id='1'>"
                  "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        self.assertFalse(self.finish(task))
        with self.assertRaises(PushNotSupported) as caught:
            self.run_coro(self.registrar.require_support())  # cached: no second query
        self.assertIn("urn:xmpp:push:0", str(caught.exception))

    # -- errors ---------------------------------------------------------------------
    def enable_error(self, reply: str) -> Exception:
        task = self.start(self.registrar.enable(APP, "n0de"))
        self.sent_stanza(enable_set("1", "n0de"))
        self.recv(reply)
        with self.assertRaises(PushError) as caught:
            self.finish(task)
        self.assertEqual(self.registrar.enables, 0)
        return caught.exception

    def test_server_without_push(self) -> None:
        exc = self.enable_error(error("1", "feature-not-implemented"))
        self.assertIsInstance(exc, PushNotSupported)
        exc2 = from_xmpp_error(XMPPError("service-unavailable"), "x")
        self.assertIsInstance(exc2, PushNotSupported)

    def test_not_authorised(self) -> None:
        exc = self.enable_error(error("1", "forbidden", "auth", "no push for guests"))
        self.assertIsInstance(exc, NotAuthorized)
        assert isinstance(exc, NotAuthorized)
        self.assertEqual((exc.condition, exc.text, exc.etype),
                         ("forbidden", "no push for guests", "auth"))
        self.assertIn("forbidden: no push for guests", str(exc))

    def test_other_errors_keep_condition_and_text(self) -> None:
        exc = self.enable_error(error("1", "resource-constraint", "wait", "too many"))
        self.assertIsInstance(exc, RegistrationFailed)
        self.assertIn("resource-constraint: too many", str(exc))

    def test_timeout(self) -> None:
        self.registrar.config["timeout"] = 0.05
        task = self.start(self.registrar.enable(APP, "n0de"))
        self.sent_stanza(enable_set("1", "n0de"))
        self.wait_(0.2)
        with self.assertRaises(PushTimeout):
            self.finish(task)

    def test_error_mapping_table(self) -> None:
        iq = self.xmpp.Iq()
        iq["error"]["condition"] = "not-authorized"
        self.assertIsInstance(from_xmpp_error(IqError(iq), "x"), NotAuthorized)
        self.assertIsInstance(from_xmpp_error(IqTimeout(iq), "x"), PushTimeout)
        for cls in (PushNotSupported, NotAuthorized, PushTimeout, RegistrationFailed,
                    AppServerNotFound):
            self.assertTrue(issubclass(cls, PushError))

    # -- each dialect's exchange --------------------------------------------------------
    def test_tigase_register_and_enable(self) -> None:
        task = self.start(self.registrar.register(
            "aabbcc", dialect="tigase", app_server=APP, provider=TIGASE_APP,
            voip_token="ddeeff"))
        self.support()
        iq = self.sent_stanza(command_set("2", "register-device", fields(
            provider=TIGASE_APP, device_token="aabbcc", device_second_token="ddeeff")))
        self.assert_app_server_reads(iq, "register-device")
        self.recv(command_result("2", "register-device", fields(node="n0de") + (
            "<field var='features' type='list-multi'><value>tigase:push:encrypt:0</value>"
            "<value>tigase:push:priority:0</value></field>") + fields(max_payload_size="3000")))
        self.sent_stanza(enable_set("3", "n0de"))
        self.recv(result("3"))
        registration: ClientRegistration = self.finish(task)
        self.assertEqual((registration.node, registration.secret, registration.max_payload_size),
                         ("n0de", None, 3000))
        self.assertIn("tigase:push:encrypt:0", registration.features)
        self.assertEqual(self.stored(), [registration])
        self.assertEqual([name for name, _ in self.events],
                         ["push_enabled", "push_registrar_registered"])

    def p2_or_v1(self, dialect: str, command: str, sent: str, device_id: str) -> None:
        task = self.start(self.registrar.register("tok1", dialect=dialect, app_server=APP,
                                                  device_id=device_id))
        self.support()
        iq = self.sent_stanza(command_set("2", command, sent))
        self.assert_app_server_reads(iq, command)
        self.recv(command_result("2", command, fields(jid=APP, node="n0de", secret="s3")))
        self.sent_stanza(enable_set("3", "n0de", fields(secret="s3")))
        self.recv(result("3"))
        registration: ClientRegistration = self.finish(task)
        self.assertEqual((registration.push_jid, registration.secret, registration.device_id),
                         (APP, "s3", device_id))

    def test_p2_fcm(self) -> None:
        self.p2_or_v1("p2-fcm", "register-push-fcm",
                      "<field var='token'><value>tok1</value></field>"
                      "<field var='android-id'><value>0123abcd</value></field>", "0123abcd")

    def test_p2_apns(self) -> None:
        self.p2_or_v1("p2-apns", "register-push-apns",
                      "<field var='token'><value>tok1</value></field>"
                      "<field var='android-id'><value>0123abcd</value></field>", "0123abcd")

    def test_v1_apns(self) -> None:
        self.p2_or_v1("v1-apns", "v1-register-push",
                      fields(type="apns", node="dev-1", token="tok1"), "dev-1")

    def test_v1_fcm(self) -> None:
        self.p2_or_v1("v1-fcm", "v1-register-push",
                      fields(type="fcm", node="dev-1", token="tok1"), "dev-1")

    def made_up_id(self, iq_id: str, command: str, var: str) -> str:
        values = submitted_values(self.sent_stanza(
            f"<iq type='set' to='{APP}' id='{iq_id}'><command xmlns='{ADHOC}' "
            f"node='{command}'/></iq>", method="mask"))
        assert values is not None
        self.recv(command_result(iq_id, command, fields(jid=APP, node="n0de", secret="s")))
        return values[var]

    def test_p2_and_v1_make_up_a_device_id_and_keep_it(self) -> None:
        task = self.start(self.registrar.register("tok1", dialect="p2-fcm", app_server=APP))
        self.support("1")
        android_id = self.made_up_id("2", "register-push-fcm", "android-id")
        self.assertRegex(android_id, "^[0-9a-f]{16}$")
        self.sent_stanza(enable_set("3", "n0de", fields(secret="s")))
        self.recv(result("3"))
        self.finish(task)
        task = self.start(self.registrar.register("tok1", dialect="v1-apns", app_server=APP))
        v1_node = self.made_up_id("4", "v1-register-push", "node")  # support: cached
        self.assertRegex(v1_node, "^[0-9a-f]{8}-[0-9a-f-]{27}$")
        self.sent_stanza(enable_set("5", "n0de", fields(secret="s")))
        self.recv(result("5"))
        self.finish(task)
        # A new token: both register again with the ids they made up.
        task = self.start(self.registrar.update_token("tok2"))
        self.assertEqual(self.made_up_id("6", "register-push-fcm", "android-id"), android_id)
        self.sent_stanza(enable_set("7", "n0de", fields(secret="s")))
        self.recv(result("7"))
        self.assertEqual(self.made_up_id("8", "v1-register-push", "node"), v1_node)
        self.sent_stanza(enable_set("9", "n0de", fields(secret="s")))
        self.recv(result("9"))
        self.assertEqual([r.token for r in self.finish(task)], ["tok2", "tok2"])
        self.send(None)

    def test_stateless_is_enable_only(self) -> None:
        task = self.start(self.registrar.register(
            "c0ffee", dialect="stateless", app_server=APP, push_module="monalProdiOS"))
        self.support()
        self.sent_stanza(enable_set("2", "c0ffee", fields(pushModule="monalProdiOS")))
        self.recv(result("2"))
        registration: ClientRegistration = self.finish(task)
        self.assertEqual((registration.node, registration.provider), ("c0ffee", "monalProdiOS"))

    def test_a_missing_answer_field_is_a_failure(self) -> None:
        task = self.start(self.registrar.register("tok1", dialect="p2-fcm", app_server=APP,
                                                  device_id="d"))
        self.support()
        self.sent_stanza(command_set("2", "register-push-fcm", fields(token="tok1") +
                                     "<field var='android-id'><value>d</value></field>"))
        self.recv(command_result("2", "register-push-fcm", fields(jid=APP, node="n0de")))
        with self.assertRaises(RegistrationFailed) as caught:
            self.finish(task)
        self.assertIn("'secret'", str(caught.exception))
        self.assertEqual(self.stored(), [])

    def test_app_server_error_is_mapped(self) -> None:
        task = self.start(self.registrar.register(
            "aabbcc", dialect="tigase", app_server=APP, provider="nope"))
        self.support()
        self.sent_stanza(command_set("2", "register-device",
                                     fields(provider="nope", device_token="aabbcc")))
        self.recv(error("2", "item-not-found", text="no app with provider id 'nope'", frm=APP))
        with self.assertRaises(RegistrationFailed) as caught:
            self.finish(task)
        self.assertEqual(caught.exception.condition, "item-not-found")
        self.assertIn("nope", str(caught.exception))

    def test_every_dialect_is_covered(self) -> None:
        self.assertEqual(set(DIALECTS),
                         {"tigase", "p2-fcm", "p2-apns", "v1-apns", "v1-fcm", "stateless"})

    # -- unregister ------------------------------------------------------------------
    def registered(self, dialect: str, **extra: Any) -> ClientRegistration:
        registration = ClientRegistration(
            account="alice@localhost", app_server=APP, dialect=dialect, node="n0de",
            token="tok1", push_jid=APP, **extra)
        self.run_coro(self.store.set_doc(CLIENT_REGISTRATIONS, registration.key,
                                         registration.to_doc()))
        return registration

    def unregister(self, registration: ClientRegistration, command: str | None,
                   form: str) -> None:
        task = self.start(self.registrar.unregister(registration))
        self.sent_stanza("<iq type='set' id='1'><disable xmlns='urn:xmpp:push:0' "
                         f"jid='{APP}' node='n0de'/></iq>")
        self.recv(result("1"))
        if command:
            iq = self.sent_stanza(command_set("2", command, form))
            self.assert_app_server_reads(iq, command)
            self.recv(command_result("2", command))
        self.finish(task)
        self.assertEqual(self.stored(), [])
        self.assertEqual(self.events[-1][0], "push_registrar_unregistered")

    def test_unregister_tigase(self) -> None:
        self.unregister(self.registered("tigase", provider=TIGASE_APP), "unregister-device",
                        fields(provider=TIGASE_APP, device_token="tok1"))

    def test_unregister_p2(self) -> None:
        self.unregister(self.registered("p2-fcm", device_id="0123abcd"), "unregister-push-fcm",
                        "<field var='android-id'><value>0123abcd</value></field>")

    def test_unregister_v1(self) -> None:
        self.unregister(self.registered("v1-apns", device_id="dev-1"), "v1-unregister-push",
                        fields(type="apns", node="dev-1"))

    def test_unregister_stateless(self) -> None:
        self.unregister(self.registered("stateless", push_module="m"), None, "")

    def test_failed_unregister_keeps_the_record(self) -> None:
        registration = self.registered("v1-apns", device_id="dev-1")
        task = self.start(self.registrar.unregister(registration))
        self.sent_stanza("<iq type='set' id='1'><disable xmlns='urn:xmpp:push:0' "
                         f"jid='{APP}' node='n0de'/></iq>")
        self.recv(result("1"))
        self.sent_stanza(command_set("2", "v1-unregister-push", fields(type="apns", node="dev-1")))
        self.recv(error("2", "internal-server-error", "wait", frm=APP))
        with self.assertRaises(RegistrationFailed):
            self.finish(task)
        self.assertEqual(self.stored(), [registration])

    # -- discovery ----------------------------------------------------------------------
    def test_discovery_matches_identity_and_provider(self) -> None:
        task = self.start(self.registrar.discover(TIGASE_APP))
        self.sent_stanza("<iq type='get' to='localhost' id='1'>"
                         "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        self.recv("<iq type='result' from='localhost' to='" + ME + "' id='1'>"
                  "<query xmlns='http://jabber.org/protocol/disco#items'>"
                  "<item jid='conference.localhost'/><item jid='fcm.localhost'/>"
                  "<item jid='push.localhost'/></query></iq>")
        infos = {
            "conference.localhost": "<identity category='conference' type='text'/>",
            "fcm.localhost": "<identity category='pubsub' type='push'/>"
                             "<feature var='urn:xmpp:push:0'/><feature var='fcm-xmpp-api'/>",
            APP: "<identity category='pubsub' type='push'/><feature var='urn:xmpp:push:0'/>"
                 f"<feature var='{TIGASE_APP}'/>",
        }
        for n, jid in enumerate(infos, start=2):
            self.sent_stanza(f"<iq type='get' to='{jid}' id='{n}'>"
                             "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        for n, (jid, info) in enumerate(infos.items(), start=2):
            self.recv(f"<iq type='result' from='{jid}' to='{ME}' id='{n}'>"
                      f"<query xmlns='http://jabber.org/protocol/disco#info'>{info}</query></iq>")
        self.assertEqual(str(self.finish(task)), APP)

    def test_discovery_finds_nothing(self) -> None:
        task = self.start(self.registrar.discover())
        self.sent_stanza("<iq type='get' to='localhost' id='1'>"
                         "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        self.recv("<iq type='result' from='localhost' to='" + ME + "' id='1'>"
                  "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        with self.assertRaises(AppServerNotFound):
            self.finish(task)

    # -- sessions ----------------------------------------------------------------------------
    def test_session_start_reenables_each_registration_once(self) -> None:
        registration = self.registered("v1-apns", device_id="dev-1", secret="s3")
        self.xmpp.event("session_start")
        self.wait_()
        self.sent_stanza(enable_set("1", "n0de", fields(secret="s3")))
        self.recv(result("1"))
        enabled = self.run_coro(self.registrar.resumed())
        self.assertEqual([r.node for r in enabled], [registration.node])
        self.assertEqual(self.registrar.session_enables, 1)
        self.send(None)  # nothing more
        self.assertIsNotNone(self.stored()[0].enabled_at)

    def test_session_start_reregisters_a_changed_token_first(self) -> None:
        self.registered("v1-apns", device_id="dev-1", secret="s3")
        self.registrar.config["token"] = "tok2"
        self.xmpp.event("session_start")
        self.wait_()
        self.support()
        self.sent_stanza(command_set("2", "v1-register-push",
                                     fields(type="apns", node="dev-1", token="tok2")))
        self.recv(command_result("2", "v1-register-push", fields(jid=APP, node="n0de",
                                                                 secret="s3")))
        self.sent_stanza(enable_set("3", "n0de", fields(secret="s3")))
        self.recv(result("3"))
        (again,) = self.run_coro(self.registrar.resumed())
        self.assertEqual((again.token, again.node), ("tok2", "n0de"))
        self.assertEqual(self.registrar.session_enables, 1)
        self.send(None)  # same node: nothing to retire

    def test_tigase_token_change_retires_the_old_node(self) -> None:
        self.registered("tigase", provider=TIGASE_APP)
        task = self.start(self.registrar.update_token("tok2"))
        self.support()
        self.sent_stanza(command_set("2", "register-device",
                                     fields(provider=TIGASE_APP, device_token="tok2")))
        self.recv(command_result("2", "register-device", fields(node="n3w")))
        self.sent_stanza(enable_set("3", "n3w"))
        self.recv(result("3"))
        self.sent_stanza("<iq type='set' id='4'><disable xmlns='urn:xmpp:push:0' "
                         f"jid='{APP}' node='n0de'/></iq>")
        self.recv(result("4"))
        self.sent_stanza(command_set("5", "unregister-device",
                                     fields(provider=TIGASE_APP, device_token="tok1")))
        self.recv(command_result("5", "unregister-device"))
        (updated,) = self.finish(task)
        self.assertEqual(self.stored(), [updated])
        self.assertEqual(updated.node, "n3w")

    def test_failed_reenable_is_reported_not_raised(self) -> None:
        registration = self.registered("stateless", push_module="m")
        self.xmpp.event("session_start")
        self.wait_()
        self.sent_stanza(enable_set("1", "n0de", fields(pushModule="m")))
        self.recv(error("1", "not-allowed"))
        self.assertEqual(self.run_coro(self.registrar.resumed()), [])
        failed = [data for name, data in self.events if name == "push_enable_failed"]
        self.assertEqual(failed[0][0], registration)
        self.assertEqual(self.stored(), [registration])  # kept: tried again next session

    # -- remote disable ----------------------------------------------------------------------
    def remote_disable(self, frm: str, about: str = "alice@localhost",
                       affiliation: str = "none") -> None:
        self.recv(f"<message from='{frm}' to='alice@localhost'>"
                  "<pubsub xmlns='http://jabber.org/protocol/pubsub' node='n0de'>"
                  f"<affiliation jid='{about}' affiliation='{affiliation}'/></pubsub></message>")

    def test_remote_disable_from_the_app_server(self) -> None:
        registration = self.registered("tigase", provider=TIGASE_APP)
        self.remote_disable(APP)
        self.sent_stanza("<iq type='set' id='1'><disable xmlns='urn:xmpp:push:0' "
                         f"jid='{APP}' node='n0de'/></iq>")
        self.recv(result("1"))
        self.wait_()
        self.assertEqual(self.stored(), [])
        self.assertEqual(self.events, [("push_remote_disabled", registration)])

    def test_remote_disable_from_anyone_else_is_ignored(self) -> None:
        registration = self.registered("tigase", provider=TIGASE_APP)
        self.remote_disable("evil.localhost")
        self.remote_disable("mallory@localhost/x")
        self.remote_disable(APP, about="bob@localhost")
        self.remote_disable(APP, affiliation="member")
        self.send(None)
        self.assertEqual(self.stored(), [registration])
        self.assertEqual(self.events, [])

    # -- life cycle --------------------------------------------------------------------------
    def test_plugin_end_removes_every_handler(self) -> None:
        before = len(self.xmpp._XMLStream__event_handlers.get("session_start", []))  # type: ignore[attr-defined]
        self.xmpp.plugin.disable("push_registrar")
        after = len(self.xmpp._XMLStream__event_handlers.get("session_start", []))  # type: ignore[attr-defined]
        self.assertEqual(before - after, 1)
        self.assertFalse(self.xmpp.remove_handler("push_registrar remote disable"))

    def test_registration_documents_round_trip(self) -> None:
        registration = ClientRegistration(
            account="alice@localhost", app_server=APP, dialect="tigase", node="n", token="t",
            provider=TIGASE_APP, features=("a", "b"),
            extensions=EnableExtensions(encrypt_key="k", muted=("x@y",)))
        self.assertEqual(ClientRegistration.from_doc(registration.to_doc()), registration)


if __name__ == "__main__":
    unittest.main()
