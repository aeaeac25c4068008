"""``test-push`` (appserver/selftest.py) over a mock component stream: who may run it,
the rate limit, no device, one line per device with the provider's answer and the
last publish, the dead-token clean-up, the event, and the answer's text."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from typing import Any
from unittest import mock

from fakes.scripted import ScriptedProvider
from stream_support import AppServerStreamTest

import slixmpp_push  # noqa: F401  (registers the plugin)
from slixmpp_push import AppConfig, DeliveryResult, Outcome
from slixmpp_push.appserver import selftest
from slixmpp_push.appserver.selftest import SelfTestReport, ago
from slixmpp_push.providers.base import PushRequest

APP = AppConfig(id="tigase:messenger:apns:1", type="console", topic="org.example.chat")
COMMANDS = "http://jabber.org/protocol/commands"


class ByToken(ScriptedProvider):
    """Answers by device token (the test's devices are checked concurrently)."""

    def __init__(self, app: AppConfig) -> None:
        super().__init__(app)
        self.answers: dict[str, DeliveryResult | Exception] = {}

    async def send(self, request: PushRequest) -> DeliveryResult:
        self.sent.append(request)
        answer = self.answers.get(request.token, DeliveryResult(Outcome.DELIVERED, 200))
        if isinstance(answer, Exception):
            raise answer
        return answer


def run_request(frm: str = "alice@localhost/phone", iq_id: str = "t1", form: bool = False,
              ) -> str:
    payload = "<x xmlns='jabber:x:data' type='submit'/>" if form else ""
    return (f"<iq type='set' from='{frm}' to='push.localhost' id='{iq_id}'>"
            f"<command xmlns='{COMMANDS}' node='test-push' action='execute'>{payload}"
            "</command></iq>")


def register(token: str, frm: str = "alice@localhost/phone", iq_id: str = "r1") -> str:
    return (f"<iq type='set' from='{frm}' to='push.localhost' id='{iq_id}'>"
            f"<command xmlns='{COMMANDS}' node='register-device' action='execute'>"
            "<x xmlns='jabber:x:data' type='submit'>"
            f"<field var='provider'><value>{APP.id}</value></field>"
            f"<field var='device-token'><value>{token}</value></field></x></command></iq>")


def publish(node: str, iq_id: str = "p1") -> str:
    return (f"<iq type='set' from='localhost' to='push.localhost' id='{iq_id}'>"
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'>"
            f"<publish node='{node}'><item><notification xmlns='urn:xmpp:push:0'/></item>"
            "</publish></pubsub></iq>")


class TestSelfTestCommand(AppServerStreamTest):
    unescape = True

    def setUp(self) -> None:
        self.provider = ByToken(APP)
        self.start_appserver([APP], self.provider)
        self.reports: list[SelfTestReport] = []
        self.xmpp.add_event_handler("push_test_sent", self.reports.append)

    def answer(self, raw: str) -> tuple[list[str], str]:
        """The ``devices`` lines and the note of a completed test-push."""
        self.assertIn('status="completed"', raw)
        field = re.search(r'<field var="devices"[^>]*>(.*?)</field>', raw, re.S)
        assert field is not None, raw
        lines = re.findall(r"<value>([^<]*)</value>", field.group(1))
        note = re.search(r"<note[^>]*>([^<]*)</note>", raw)
        assert note is not None, raw
        return lines, note.group(1)

    def register_device(self, token: str, iq_id: str) -> str:
        self.recv(register(token, iq_id=iq_id))
        raw = self.sent_raw()
        found = re.search(r'var="node"[^>]*><value>([^<]+)</value>', raw)
        assert found is not None, raw
        return found.group(1)

    # -- who may run it ---------------------------------------------------------------
    def test_accounts_of_other_domains_and_servers_are_forbidden(self) -> None:
        for i, frm in enumerate(("eve@elsewhere.example/x", "localhost")):
            self.recv(run_request(frm=frm, iq_id=f"f{i}"))
            raw = self.sent_raw()
            self.assertIn('type="error"', raw)
            self.assertIn("<forbidden", raw)
            self.assertIn('type="auth"', raw)
        self.assertEqual(self.reports, [])

    def test_one_run_per_account_every_ten_seconds(self) -> None:
        self.recv(run_request())
        self.answer(self.sent_raw())
        self.recv(run_request(iq_id="t2"))
        raw = self.sent_raw()
        self.assertIn("<resource-constraint", raw)
        self.assertIn('type="wait"', raw)
        self.assertIn("one test every 10 s: try again in", raw)
        # Another resource of the same account is the same account.
        self.recv(run_request(frm="alice@localhost/desk", iq_id="t3"))
        self.assertIn("<resource-constraint", self.sent_raw())
        # Another account is not held back.
        self.recv(run_request(frm="bob@localhost/phone", iq_id="t4"))
        self.answer(self.sent_raw())
        self.assertEqual([r.account for r in self.reports], ["alice@localhost",
                                                             "bob@localhost"])

    # -- the answer -------------------------------------------------------------------
    def test_no_device_says_how_to_register(self) -> None:
        self.recv(run_request())
        raw = self.sent_raw()
        lines, note = self.answer(raw)
        self.assertEqual(len(lines), 1)
        self.assertIn("No device of alice@localhost is registered with push.localhost",
                      lines[0])
        self.assertIn("register-device", lines[0])
        self.assertIn('<note type="warning">', raw)
        self.assertEqual(note, lines[0])
        self.assertEqual(self.provider.sent, [])
        (report,) = self.reports
        self.assertEqual(report.devices, ())

    def test_one_line_per_device_with_outcome_and_last_publish(self) -> None:
        good, dead, refused, down = ("a1" * 32, "d1" * 32, "b1" * 32, "c1" * 32)
        nodes = {token: self.register_device(token, f"r-{token[:2]}")
                 for token in (good, dead, refused, down)}
        self.recv(publish(nodes[good]))
        self.assertIn('type="result"', self.sent_raw())
        self.provider.sent.clear()
        self.provider.answers[dead] = DeliveryResult(Outcome.DEAD_TOKEN, 410, "Unregistered")
        self.provider.answers[refused] = DeliveryResult(Outcome.REJECTED, 400, "BadTopic")
        self.provider.answers[down] = DeliveryResult(Outcome.RETRY, reason="ConnectionRefused")
        dead_events: list[Any] = []
        self.xmpp.add_event_handler("push_dead_token", dead_events.append)

        self.recv(run_request(form=True))  # a submitted empty form is fine too
        raw = self.sent_raw()
        if "affiliation" in raw:  # the dead token's remote disable may come first
            raw = self.sent_raw()
        lines, note = self.answer(raw)
        self.assertEqual(len(lines), 4)
        by_node = {node: next(line for line in lines if line.startswith(f"node {node} "))
                   for node in nodes.values()}
        line = by_node[nodes[good]]
        self.assertIn(f"({APP.id}, tigase dialect, token a1a1a1a1…)", line)
        self.assertNotIn(good, line)
        self.assertRegex(line, r": delivered; last publish from your server: "
                               r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+ s ago\)\.$")
        self.assertIn(": dead token: registration removed (APNs said 410 Unregistered); "
                      "no publish from your server since the app server started (",
                      by_node[nodes[dead]])
        self.assertIn("push may not be enabled at your server for this device.",
                      by_node[nodes[dead]])
        self.assertIn(": refused by APNs: 400 BadTopic; no publish", by_node[nodes[refused]])
        self.assertIn(": provider unreachable: ConnectionRefused; no publish",
                      by_node[nodes[down]])
        self.assertTrue(note.startswith("Test notification sent by push.localhost to 4 "
                                        "device(s) of alice@localhost at "))
        self.assertEqual(note.splitlines()[1:], lines)
        self.assertIn('<note type="warning">', raw)

        # The dead one went the way of a dead token after a publish.
        self.assertIsNone(self.store.get(nodes[dead]))
        self.assertEqual([r.node for r in dead_events], [nodes[dead]])
        self.assertEqual(len(self.store), 3)
        # The test notification: visible, titled, not urgent.
        self.assertEqual(sorted(r.token for r in self.provider.sent),
                         sorted([good, dead, refused, down]))
        request: Any = self.provider.sent[0]
        self.assertEqual(request.push_type, "alert")
        self.assertEqual(request.priority, 5)
        self.assertEqual(request.payload["aps"]["alert"]["title"], "Test notification")
        # Nothing queued or retried.
        self.assertEqual(self.plugin.delivery.pending_count, 0)
        (report,) = self.reports
        self.assertEqual(sorted(d.outcome for d in report.devices),
                         ["dead_token", "delivered", "rejected", "retry"])

    def test_all_delivered_is_an_info_note(self) -> None:
        self.register_device("a1" * 32, "r1")
        self.recv(run_request())
        raw = self.sent_raw()
        lines, _ = self.answer(raw)
        self.assertIn('<note type="info">', raw)
        self.assertIn(": delivered; no publish from your server since", lines[0])

    def test_a_failing_provider_is_reported(self) -> None:
        self.register_device("a1" * 32, "r1")
        self.provider.answers["a1" * 32] = RuntimeError("boom")
        self.recv(run_request())
        lines, _ = self.answer(self.sent_raw())
        self.assertIn(": provider unreachable: RuntimeError;", lines[0])
        self.assertIsNotNone(self.store.get(lines[0].split()[1]))

    def test_a_slow_provider_is_reported_not_awaited_forever(self) -> None:
        self.register_device("a1" * 32, "r1")
        self.provider.app = dataclasses.replace(APP, timeout=0.2)

        async def slow(request: PushRequest) -> DeliveryResult:
            await asyncio.sleep(30)
            return DeliveryResult(Outcome.DELIVERED, 200)

        self.provider.send = slow  # type: ignore[method-assign]
        with mock.patch.object(selftest, "GRACE", 0.0):
            began = time.monotonic()
            self.recv(run_request())
            lines, _ = self.answer(self.sent_raw(timeout=5))
        self.assertLess(time.monotonic() - began, 5)
        self.assertIn(": provider unreachable: no answer within 0.2 s;", lines[0])


def test_ago() -> None:
    assert ago(3.7) == "3 s ago"
    assert ago(125) == "2 min ago"
    assert ago(7300) == "2 h ago"
    assert ago(200000) == "2 d ago"
