"""push_appserver over a mock component stream: a pager's page publish, and a
registration whose app was removed from the configuration.

A page published by a pager on a client account (``trusted_publishers``) is
rendered from its page form and arms the echo guard for the page's chat message;
the same form from the account's own server changes nothing. A registration of
an app no longer configured is answered ``cancel/item-not-found`` and removed.
"""

from __future__ import annotations

import asyncio
import time
from xml.etree import ElementTree as ET

from fakes.scripted import ScriptedProvider
from stream_support import AppServerStreamTest
from test_stream_appserver import APPS, command
from tokens import apns_token

import slixmpp_push  # noqa: F401  (registers the plugin)
from slixmpp_push import (
    DeliveryPolicy,
    Dialect,
    MemoryStore,
    Notification,
    Priority,
    Registration,
    Submitted,
)
from slixmpp_push.appserver.delivery import Delivery
from slixmpp_push.notifier.publisher import RemoteTarget, pubsub_element
from slixmpp_push.store import PENDING

PAGER = "pager@localhost"
GONE = "gone:apns:1"  # an app the operator removed from the configuration


def page(priority: Priority = Priority.CRITICAL, page_id: str = "AB12") -> Notification:
    """What push_notifier publishes for a page (its _notification)."""
    return Notification(title=f"[{page_id}] Disk full", body="/var at 99%", priority=priority,
                        message_count=1, sender=PAGER, collapse_key=f"page:{page_id}")


def pagers_publish(node: str, notification: Notification, frm: str = f"{PAGER}/bot",
                   iq_id: str = "pg1") -> str:
    pubsub = ET.tostring(pubsub_element(RemoteTarget("push.localhost", node), notification),
                         encoding="unicode")
    return f"<iq type='set' from='{frm}' to='push.localhost' id='{iq_id}'>{pubsub}</iq>"


def servers_publish(node: str, iq_id: str = "srv1", sender: str | None = None) -> str:
    """Stock Prosody's publish for a message to an offline account (no sender by default)."""
    who = f"<field var='last-message-sender'><value>{sender}</value></field>" if sender else ""
    return (f"<iq type='set' from='localhost' to='push.localhost' id='{iq_id}'>"
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'>"
            f"<publish node='{node}'><item><notification xmlns='urn:xmpp:push:0'>"
            "<x xmlns='jabber:x:data' type='form'>"
            "<field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>"
            f"<field var='message-count'><value>1</value></field>{who}"
            "<field var='last-message-body'><value>New Message!</value></field>"
            "</x></notification></item></publish></pubsub></iq>")


class PageStreamTest(AppServerStreamTest):
    echo_window = 15.0

    def setUp(self) -> None:
        self.scripted = ScriptedProvider(APPS[0])
        self.start_appserver(APPS, self.scripted, trusted_publishers=(PAGER,),
                             echo_window=self.echo_window)
        self.recv(command("register-device", {"provider": APPS[0].id,
                                              "device-token": apns_token("alice")}))
        raw = self.sent_raw()
        self.node = raw.split('var="node"', 1)[1].split("<value>", 1)[1].split("<", 1)[0]

    def answer(self, stanza: str) -> str:
        self.recv(stanza)
        return self.sent_raw()


class TestPagePublish(PageStreamTest):
    def test_a_trusted_pagers_page_is_the_pages_own_alert(self) -> None:
        self.assertIn('type="result"', self.answer(pagers_publish(self.node, page())))
        (request,) = self.scripted.sent
        aps = request.payload["aps"]  # type: ignore[union-attr]
        self.assertEqual(aps["interruption-level"], "critical")
        self.assertEqual(aps["alert"], {"title": "[AB12] Disk full"})  # include_body is off
        self.assertNotIn("/var at 99%", str(request))
        self.assertIsNotNone(request.collapse_id)  # type: ignore[union-attr]
        # The same page again (an escalation step, a repeat) replaces it on the phone.
        self.answer(pagers_publish(self.node, page(), iq_id="pg2"))
        self.assertEqual(self.scripted.sent[1].collapse_id,  # type: ignore[union-attr]
                         request.collapse_id)  # type: ignore[union-attr]

    def test_the_servers_publish_for_the_pages_chat_message_is_not_pushed_again(self) -> None:
        self.answer(pagers_publish(self.node, page()))
        # The pager's chat message makes the offline account's server publish: answered
        # result (the server keeps the registration), not a second notification.
        self.assertIn('type="result"', self.answer(servers_publish(self.node)))
        self.assertEqual(len(self.scripted.sent), 1)
        self.assertEqual(self.plugin.echoes.suppressed, 1)
        # The next message is pushed as usual.
        self.answer(servers_publish(self.node, iq_id="srv2"))
        self.assertEqual(len(self.scripted.sent), 2)

    def test_a_server_that_names_another_sender_is_not_the_echo(self) -> None:
        self.answer(pagers_publish(self.node, page()))
        self.answer(servers_publish(self.node, sender="bob@localhost/rig"))
        self.assertEqual(len(self.scripted.sent), 2)
        self.answer(servers_publish(self.node, iq_id="srv2", sender=f"{PAGER}/bot"))
        self.assertEqual(len(self.scripted.sent), 2)  # the pager's own message: the echo

    def test_a_second_page_within_the_window_is_pushed_and_guarded_too(self) -> None:
        self.answer(pagers_publish(self.node, page()))
        self.answer(pagers_publish(self.node, page(Priority.HIGH, "CD34"), iq_id="pg2"))
        self.assertEqual(len(self.scripted.sent), 2)  # a page is never taken for an echo
        second = self.scripted.sent[1].payload["aps"]  # type: ignore[union-attr]
        self.assertEqual(second["interruption-level"], "time-sensitive")
        for iq_id in ("srv1", "srv2"):  # one chat message per page
            self.answer(servers_publish(self.node, iq_id=iq_id))
        self.assertEqual(len(self.scripted.sent), 2)
        self.answer(servers_publish(self.node, iq_id="srv3"))
        self.assertEqual(len(self.scripted.sent), 3)

    def test_the_accounts_server_may_not_send_a_page(self) -> None:
        """The same page form from the user's server: ignored, not refused, and no echo
        guard: it cannot make a push critical or title it."""
        stanza = pagers_publish(self.node, page(), frm="localhost")
        self.assertIn('type="result"', self.answer(stanza))
        (request,) = self.scripted.sent
        aps = request.payload["aps"]  # type: ignore[union-attr]
        self.assertEqual(aps["alert"], {"title": "New message"})
        self.assertNotIn("interruption-level", aps)
        self.assertNotIn("Disk full", str(request))
        self.answer(servers_publish(self.node))
        self.assertEqual(len(self.scripted.sent), 2)
        self.assertEqual(self.plugin.echoes.suppressed, 0)

    def test_a_page_whose_push_failed_arms_no_guard(self) -> None:
        from slixmpp_push import DeliveryResult, Outcome

        self.scripted.script.append(DeliveryResult(Outcome.REJECTED, 400, "BadTopic"))
        self.assertIn("internal-server-error", self.answer(pagers_publish(self.node, page())))
        self.answer(servers_publish(self.node))
        self.assertEqual(len(self.scripted.sent), 2)  # nothing shown: the message is pushed


class TestPagePublishWithoutEchoWindow(PageStreamTest):
    echo_window = 0.0

    def test_echo_window_zero_pushes_the_chat_messages_publish(self) -> None:
        self.answer(pagers_publish(self.node, page()))
        self.answer(servers_publish(self.node))
        self.assertEqual(len(self.scripted.sent), 2)


# -- an app removed from the configuration ----------------------------------------------------
def unserved(node: str = "gonenode0001") -> Registration:
    return Registration(node=node, account="alice@localhost", domain="localhost", app=GONE,
                        token=apns_token("alice's old phone"), dialect=Dialect.TIGASE)


class TestRemovedApp(AppServerStreamTest):
    def setUp(self) -> None:
        self.scripted = ScriptedProvider(APPS[0])
        self.start_appserver(APPS, self.scripted)
        self.registration = unserved()
        self.run_coro(self.store.put(self.registration))
        self.removed: list[Registration] = []
        self.xmpp.add_event_handler("push_unregistered", self.removed.append)

    def test_a_publish_is_item_not_found_and_the_registration_is_removed(self) -> None:
        with self.assertLogs("slixmpp_push", "INFO") as logs:
            self.recv(servers_publish(self.registration.node))
            reply = self.sent_raw()
            disable = self.sent_raw()
        self.assertRegex(reply, r'<error type="cancel"><item-not-found ')
        self.assertIn(f"app &apos;{GONE}&apos; is not served here any more", reply)
        self.assertIn('affiliation="none"', disable)  # the server is told to stop, too
        self.assertIsNone(self.store.get(self.registration.node))
        self.assertEqual(self.removed, [self.registration])
        self.assertEqual(self.scripted.sent, [])
        lines = [record.getMessage() for record in logs.records]
        self.assertIn(f"dropping node {self.registration.node} of alice@localhost: its app "
                      f"'{GONE}' is not configured any more", lines)
        self.assertFalse([line for line in lines if "None" in line], lines)
        # Its server publishes once more (a race, or Prosody before 16 errors): unknown node.
        self.recv(servers_publish(self.registration.node, iq_id="srv2"))
        self.assertIn("item-not-found", self.sent_raw())

    def test_a_local_notification_reports_it_and_removes_the_registration(self) -> None:
        submitted = self.run_coro(self.plugin.notify(self.registration, page()))
        self.assertIs(submitted, Submitted.APP_REMOVED)
        self.assertFalse(submitted.pushed)
        self.assertIsNone(self.store.get(self.registration.node))
        self.assertEqual(self.removed, [self.registration])


async def test_a_pending_notification_of_a_removed_app_is_dropped_after_a_restart() -> None:
    store = MemoryStore()
    await store.open()
    registration = unserved()
    await store.put(registration)
    await store.set_doc(PENDING, registration.node, {
        "registration": registration.to_doc(), "notification": page().to_doc(),
        "attempts": 1, "first_queued": time.time(), "due": time.time()})
    provider = ScriptedProvider(APPS[0])

    async def dead(*_: object) -> None:
        raise AssertionError("not a dead token")

    delivery = Delivery(store, {APPS[0].id: provider}, DeliveryPolicy(), dead)
    delivery.resume()
    assert delivery.pending_count == 1
    for _ in range(100):
        if not store.table(PENDING):
            break
        await asyncio.sleep(0.01)
    assert store.table(PENDING) == {} and delivery.pending_count == 0
    assert provider.sent == []
    assert store.get(registration.node) == registration  # removed at its next publish
    await delivery.stop()
    assert await delivery.submit(registration, page()) is Submitted.APP_REMOVED
    assert store.table(PENDING) == {}
