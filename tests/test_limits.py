"""Issue 9, item 1: every bound enforced on every path, each refusal precise.

- ``[delivery] max_pending`` holds on the retry path too: with the provider
  answering 503 and 300 devices publishing, exactly ``max_pending`` publishes
  are answered ``result`` (kept, and delivered once the provider is back), the
  rest ``wait`` (their servers keep the registration), counted in
  ``slixmpp_push_queue_full_total``, with one log line, not one per publish;
- an account may register a bounded number of devices (a device's group-chat
  registrations count once, and are bounded per device); the one too many is
  refused with ``cancel/policy-violation`` naming the limit, and a log line;
  re-registering a known device always works;
- device tokens must have their provider's shape in every dialect (Tigase
  ``device-token`` and ``device-second-token``, p2 ``token``, v1 ``token``,
  Monal's stateless node), console apps as the format they render; any
  registration field is at most 4096 bytes; publish fields no server sends
  that long are refused naming them, and a long body is cut to what a push
  carries (refusing it would make ejabberd drop the registration).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

import pytest
from fakes.scripted import ScriptedProvider
from fakes.xmpp_server import error_of, publish_iq
from peer_support import COMPONENT, appserver_on_fake_server
from stream_support import AppServerStreamTest
from test_stream_appserver import command, publish
from tokens import apns_token, fcm_token

from slixmpp_push import (
    AppConfig,
    DeliveryPolicy,
    DeliveryResult,
    Dialect,
    MemoryStore,
    Outcome,
    Registration,
)
from slixmpp_push.config import RegistrationLimits, parse_config
from slixmpp_push.errors import ConfigError
from slixmpp_push.limits import quoted, token_problem
from slixmpp_push.providers.fcm import FcmProvider

APNS = AppConfig(id="tigase:messenger:apns:1", type="console", topic="org.example.chat",
                 monal_modules=("monalProdiOS",))
FCM = AppConfig(id="fcm-xmpp-api", type="console", format="fcm")
APPS = [APNS, FCM]
UNAVAILABLE = DeliveryResult(Outcome.RETRY, 503, "ServiceUnavailable")


# -- token shapes -------------------------------------------------------------------------
@pytest.mark.parametrize("token", [
    apns_token(), apns_token().upper(), "ab" * 100,  # 64 today; up to 100 bytes tomorrow
])
def test_apns_tokens_of_apples_shape_are_accepted(token: str) -> None:
    assert token_problem("apns", token) is None


@pytest.mark.parametrize("token", [
    "ab" * 31, "ab" * 32 + "a", "ab" * 101, "a" * 100_000, "not-a-token",
    "ab" * 16 + "\n" + "cd" * 16, "ab" * 32 + "\n", " " + "ab" * 32, "", fcm_token(),
])
def test_apns_tokens_of_any_other_shape_are_refused(token: str) -> None:
    assert token_problem("apns", token) == "not an APNs token (hex, 64 to 200 characters)"


@pytest.mark.parametrize("token", [
    fcm_token(), FcmProvider.PROBE_TOKEN, "x" * 100, "aZ09_-:" * 585,  # 4095 characters
])
def test_fcm_tokens_of_googles_shape_are_accepted(token: str) -> None:
    assert token_problem("fcm", token) is None


@pytest.mark.parametrize("token", [
    "x" * 99, "x" * 4097, fcm_token()[:-1] + "/", fcm_token()[:-1] + "=",
    fcm_token() + "\n", "fcm token with spaces" * 10, "",
])
def test_fcm_tokens_of_any_other_shape_are_refused(token: str) -> None:
    assert token_problem("fcm", token) == (
        "not an FCM token (letters, digits, '-', '_' and ':', 100 to 4096 characters)")


def test_values_quoted_back_are_cut() -> None:
    assert quoted("apns") == "'apns'"
    assert quoted("x" * 1000) == repr("x" * 64 + "…")


# -- token shapes at registration, in every dialect ----------------------------------------
class TestTokensAtRegistration(AppServerStreamTest):
    unescape = True

    def setUp(self) -> None:
        self.start_appserver(APPS, ScriptedProvider(APNS))

    def refused(self, node: str, fields: dict[str, str], frm: str = "alice@localhost/phone",
                ) -> str:
        """The error text of a command refused with modify/bad-request; nothing stored."""
        self.recv(command(node, fields, frm))
        raw = self.sent_raw()
        self.assertIn('<error type="modify"><bad-request', raw)
        self.assertEqual(len(self.store), 0)
        match = re.search(r"<text[^>]*>([^<]*)</text>", raw)
        assert match is not None
        return match.group(1)

    def test_tigase_device_token_and_second_token(self) -> None:
        self.assertEqual(self.refused("register-device", {
            "provider": APNS.id, "device-token": "a" * 1000}),
            "field 'device-token': not an APNs token (hex, 64 to 200 characters)")
        self.assertEqual(self.refused("register-device", {
            "provider": APNS.id, "device-token": "a" * 100_000}),
            "field 'device-token': longer than 4096 bytes")
        self.assertEqual(self.refused("register-device", {
            "provider": APNS.id, "device-token": apns_token(),
            "device-second-token": "voip-token"}),
            "field 'device-second-token': not an APNs token (hex, 64 to 200 characters)")
        self.assertEqual(self.refused("register-device", {  # Stork: FCM
            "provider": FCM.id, "device-token": apns_token()[:40]}),
            "field 'device-token': not an FCM token (letters, digits, '-', '_' and ':', "
            "100 to 4096 characters)")

    def test_p2_token_per_format(self) -> None:
        self.assertEqual(self.refused("register-push-fcm", {
            "token": "abc def" * 20, "android-id": "dev1"}),
            "field 'token': not an FCM token (letters, digits, '-', '_' and ':', "
            "100 to 4096 characters)")
        self.assertEqual(self.refused("register-push-apns", {
            "token": fcm_token(), "android-id": "dev1"}),
            "field 'token': not an APNs token (hex, 64 to 200 characters)")

    def test_v1_token_per_type(self) -> None:
        self.assertEqual(self.refused("v1-register-push", {
            "type": "apns", "node": "dev", "token": "ab" * 16 + "\n" + "cd" * 16}),
            "field 'token': not an APNs token (hex, 64 to 200 characters)")
        self.assertEqual(self.refused("v1-register-push", {
            "type": "fcm", "node": "dev", "token": "x"}),
            "field 'token': not an FCM token (letters, digits, '-', '_' and ':', "
            "100 to 4096 characters)")

    def test_any_field_longer_than_4096_bytes(self) -> None:
        self.assertEqual(self.refused("v1-register-push", {
            "type": "apns", "node": "n" * 1_000_000, "token": apns_token()}),
            "field 'node': longer than 4096 bytes")
        self.assertEqual(self.refused("register-push-fcm", {
            "token": fcm_token(), "android-id": "é" * 2049}),  # 4098 bytes
            "field 'android-id': longer than 4096 bytes")

    def test_well_shaped_tokens_register(self) -> None:
        for node, fields in (
                ("register-device", {"provider": APNS.id, "device-token": apns_token(1),
                                     "device-second-token": apns_token(2)}),
                ("register-device", {"provider": FCM.id, "device-token": fcm_token(3)}),
                ("register-push-fcm", {"token": fcm_token(4), "android-id": "d4"}),
                ("register-push-apns", {"token": apns_token(5), "android-id": "d5"}),
                ("v1-register-push", {"type": "apns", "node": "d6", "token": apns_token(6)}),
                ("v1-register-push", {"type": "fcm", "node": "d7", "token": fcm_token(7)})):
            self.recv(command(node, fields))
            self.assertIn('status="completed"', self.sent_raw(), node)
        self.assertEqual(len(self.store), 6)

    def test_a_registration_stored_before_the_rule_can_still_be_removed(self) -> None:
        self.run_coro(self.store.put(Registration(
            node="legacy", account="alice@localhost", domain="localhost", app=APNS.id,
            token="legacy-token", dialect=Dialect.TIGASE)))
        self.recv(command("unregister-device", {"provider": APNS.id,
                                                "device-token": "legacy-token"}))
        self.assertIn('status="completed"', self.sent_raw())
        self.assertEqual(len(self.store), 0)

    def test_monal_stateless_node_must_be_an_apns_token(self) -> None:
        options = ("<publish-options><x xmlns='jabber:x:data' type='submit'>"
                   "<field var='pushModule'><value>monalProdiOS</value></field></x>"
                   "</publish-options></pubsub>")
        self.recv(publish("not-a-token!", secret=None).replace("</pubsub>", options))
        raw = self.sent_raw()
        self.assertIn('<error type="modify"><bad-request', raw)
        self.assertIn("node: not an APNs token (hex, 64 to 200 characters)", raw)
        self.recv(publish(apns_token(), secret=None, iq_id="p2").replace("</pubsub>", options))
        self.assertIn('type="result"', self.sent_raw())


# -- publish fields -----------------------------------------------------------------------
class TestPublishFieldSizes(AppServerStreamTest):
    unescape = True

    def setUp(self) -> None:
        app = AppConfig(id=APNS.id, type="console", topic="org.example.chat", include_body=True)
        self.scripted = ScriptedProvider(app)  # its app is the one requests are built for
        self.start_appserver([app], self.scripted, delivery=DeliveryPolicy(
            retry_base=0.05, retry_max_delay=0.1, rate_interval=0))
        self.recv(command("register-device", {"provider": APNS.id,
                                              "device-token": apns_token()}))
        self.node = re.findall(r'var="node"[^>]*><value>([^<]*)<', self.sent_raw())[0]

    def test_a_long_body_is_kept_only_as_long_as_a_push_carries(self) -> None:
        """Queued for a day in memory and in the store, a notification holds at most
        what a push carries; and the long message still makes its push."""
        self.scripted.always = UNAVAILABLE
        body = "é" * 50_000  # 100 kB: a pasted log, with push_notification_with_body
        self.recv(publish(self.node).replace("secret text", body))
        self.assertIn('type="result"', self.sent_raw())  # queued: Apple is down
        kept = self.store.table("pending")[self.node]["notification"]["body"]
        assert kept == "é" * 2048  # 4096 bytes
        self.scripted.always = None
        deadline = time.monotonic() + 10
        while self.store.table("pending"):
            self.assertLess(time.monotonic(), deadline, "never delivered")
            self.wait_(0.05)
        carried = self.scripted.sent[-1].payload["body"]  # type: ignore[index]
        assert isinstance(carried, str) and carried.startswith("éééé")
        assert len(carried.encode()) <= 4096

    def test_fields_no_server_sends_that_long_are_refused_naming_them(self) -> None:
        sender = "bob@localhost/" + "r" * 3058  # 3072 bytes: longer than any JID
        options = ("<publish-options><x xmlns='jabber:x:data' type='submit'>"
                   f"<field var='secret'><value>{'s' * 5000}</value></field></x>"
                   "</publish-options></pubsub>")
        blob = "QkxPQg==" * 700  # 5600 bytes: no payload can carry it
        for stanza, field in (
                (publish(self.node).replace("bob@localhost/rig", sender),
                 "last-message-sender"),
                (publish(self.node).replace("</pubsub>", options), "secret"),
                (publish("n" * 5000), "node"),
                (publish(self.node, extra=f"<encrypted xmlns='tigase:push:encrypt:0' "
                                          f"iv='aXY='>{blob}</encrypted>"), "encrypted")):
            self.recv(stanza)
            raw = self.sent_raw()
            self.assertIn('<error type="modify"><bad-request', raw, field)
            self.assertIn(f"field '{field}' is longer than", raw)
        self.assertEqual(self.scripted.sent, [])


# -- registrations per account -------------------------------------------------------------
class TestRegistrationsPerAccount(AppServerStreamTest):
    unescape = True

    def setUp(self) -> None:
        self.start_appserver(APPS, ScriptedProvider(APNS), limits=RegistrationLimits(
            max_registrations_per_account=3, max_group_chats_per_device=2))

    def register(self, node: str, fields: dict[str, str], frm: str = "alice@localhost/phone",
                 ) -> str:
        self.recv(command(node, fields, frm))
        return self.sent_raw()

    def test_the_device_too_many_is_refused_with_a_log_line(self) -> None:
        for n in range(3):
            self.assertIn('status="completed"', self.register(
                "register-device", {"provider": APNS.id, "device-token": apns_token(n)}))
        with self.assertLogs("slixmpp_push.appserver.plugin", "WARNING") as logs:
            raw = self.register("register-device",
                                {"provider": APNS.id, "device-token": apns_token(3)})
        self.assertIn('<error type="cancel"><policy-violation', raw)
        self.assertIn("alice@localhost has 3 devices registered, the most allowed "
                      "(max_registrations_per_account = 3): unregister one first", raw)
        (line,) = logs.output
        self.assertIn("register-device from alice@localhost refused: policy-violation", line)
        self.assertEqual(len(self.store), 3)
        # A known device re-registers (same token, or a p2 device's new token) ...
        self.assertIn('status="completed"', self.register(
            "register-device", {"provider": APNS.id, "device-token": apns_token(0)}))
        # ... another account has its own allowance ...
        self.assertIn('status="completed"', self.register(
            "register-device", {"provider": APNS.id, "device-token": apns_token(3)},
            frm="bob@localhost/phone"))
        # ... and unregistering a device makes room.
        self.register("unregister-device", {"provider": APNS.id, "device-token": apns_token(1)})
        self.assertIn('status="completed"', self.register(
            "register-device", {"provider": APNS.id, "device-token": apns_token(3)}))
        self.assertEqual(len(self.store.by_account("alice@localhost")), 3)

    def test_group_chats_of_a_device_count_once_and_are_bounded_per_device(self) -> None:
        def p2(device: str, token: str, muc: str | None = None) -> str:
            fields = {"token": token, "android-id": device}
            if muc:
                fields["muc"] = muc
            return self.register("register-push-fcm", fields)

        self.assertIn('status="completed"', p2("phone", fcm_token(1)))
        for room in ("a", "b"):  # Conversations: once more per group chat
            self.assertIn('status="completed"', p2("phone", fcm_token(1), f"{room}@muc.localhost"))
        raw = p2("phone", fcm_token(1), "c@muc.localhost")
        self.assertIn('<error type="cancel"><policy-violation', raw)
        self.assertIn("registered for 2 group chats, the most allowed "
                      "(max_group_chats_per_device = 2)", raw)
        # Three rows, one device: two more devices still fit; a known one takes a new token.
        self.assertIn('status="completed"', p2("tablet", fcm_token(2)))
        self.assertIn('status="completed"', p2("laptop", fcm_token(3)))
        self.assertIn("policy-violation", p2("watch", fcm_token(4)))
        self.assertIn('status="completed"', p2("phone", fcm_token(5), "a@muc.localhost"))
        self.assertEqual(len(self.store), 5)


def test_limits_are_configured_under_appserver(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s")
    base = {"xmpp": {"jid": "push.example.org", "secret_file": str(secret)},
            "apps": {"a": {"type": "console"}}}
    assert parse_config(base, tmp_path).limits == RegistrationLimits(20, 100)
    config = parse_config({**base, "appserver": {"max_registrations_per_account": 5,
                                                 "max_group_chats_per_device": 0}}, tmp_path)
    assert config.limits == RegistrationLimits(5, 0)
    with pytest.raises(ConfigError) as error:
        parse_config({**base, "appserver": {"max_registrations_per_account": 0}}, tmp_path)
    assert str(error.value) == "appserver.max_registrations_per_account: must be at least 1, got 0"


# -- max_pending on every path -------------------------------------------------------------
async def test_max_pending_holds_on_the_retry_path_and_nothing_answered_is_lost(
        caplog: pytest.LogCaptureFixture) -> None:
    """The issue's reproduction: a provider answering 503, 300 devices, max_pending 100."""
    provider = ScriptedProvider(APNS)
    provider.always = UNAVAILABLE
    store = MemoryStore()
    await store.open()
    for i in range(300):
        await store.put(Registration(node=f"node{i}", account=f"u{i}@localhost",
                                     domain="localhost", app=APNS.id, token=apns_token(i),
                                     dialect=Dialect.TIGASE))
    policy = DeliveryPolicy(max_pending=100, reply_within=5.0, retry_base=0.2,
                            retry_max_delay=0.4, rate_interval=0)
    caplog.set_level(logging.INFO, "slixmpp_push")
    async with appserver_on_fake_server([APNS], {APNS.id: provider}, store,
                                        delivery=policy) as (server, appserver):
        replies = await asyncio.gather(*(
            server.request(publish_iq("localhost", COMPONENT, f"node{i}", message_count=i + 1))
            for i in range(300)))
        answers = [error_of(reply) for reply in replies]
        acknowledged = {f"node{i}" for i, answer in enumerate(answers) if answer is None}
        assert len(acknowledged) == 100
        assert {answer for answer in answers if answer is not None} == {
            ("wait", "internal-server-error", "push queue is full")}
        assert appserver.delivery.pending_count == 100
        assert set(store.table("pending")) == acknowledged
        assert appserver.metrics.queue_full._value.get() == 200
        full_lines = [r for r in caplog.records if "max_pending" in r.getMessage()]
        assert len(full_lines) == 1 and full_lines[0].levelno == logging.WARNING

        # A newer notification for a node already pending takes its place: no new entry.
        reply = await server.request(publish_iq("localhost", COMPONENT, min(acknowledged),
                                                message_count=1000))
        assert error_of(reply) is None

        provider.always = None  # the provider is back: everything acknowledged goes out
        recovered = len(provider.sent)
        deadline = time.monotonic() + 30
        while appserver.delivery.pending_count:
            assert time.monotonic() < deadline, "the queue did not drain"
            await asyncio.sleep(0.05)
        delivered = [request.token for request in provider.sent[recovered:]]
        assert sorted(delivered) == sorted(store.get(node).token  # type: ignore[union-attr]
                                           for node in acknowledged)
        assert store.table("pending") == {}
