"""push_notifier end to end on real Prosody: page, escalate, ack, resolve, restart."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from xml.etree import ElementTree as ET

from e2e import APNS_APP, apns_app, enable, execute, running_appserver, send_chat
from fakes.fake_apns import FakeApns
from fakes.tls import TestCA
from notifier_support import Person, person, pushes_for, running_bot, two_step_policy
from servers import Connections, disconnect, make_account
from test_ingest import alertmanager, post

from slixmpp_push import MemoryStore, Policy, Step, Submitted
from slixmpp_push.appserver import PublishOutcome
from slixmpp_push.devserver import DevServer, ProsodyServer
from slixmpp_push.notifier import PageState, RemoteTarget
from slixmpp_push.notifier.ingest import AlertReceiver, ReceiverConfig
from slixmpp_push.notifier.plugin import HELP

BOT = "push.localhost"


async def test_page_escalates_until_ack(prosody_server: ProsodyServer, xmpp: Connections,
                                        fake_apns: FakeApns, test_ca: TestCA, apns_key: Path,
                                        tmp_path: Path) -> None:
    alice_account = await make_account(prosody_server, "alice")
    bob_account = await make_account(prosody_server, "bob")
    policy = two_step_policy(alice_account.jid, bob_account.jid, wait=1.0)
    async with running_bot(xmpp, prosody_server, fake_apns, test_ca, apns_key,
                           tmp_path / "s.json", [policy]) as notifier:
        alice = await person(xmpp, prosody_server, BOT, alice_account, "a1" * 32)
        bob = await person(xmpp, prosody_server, BOT, bob_account, "b2" * 32)
        page, created = await notifier.page("db1-disk", "Disk full on db1", "97% used",
                                            priority="critical")
        assert created
        (push,) = await pushes_for(fake_apns, alice.token, 1)
        assert push.headers["apns-push-type"] == "alert"
        assert push.headers["apns-priority"] == "10"
        assert push.body["aps"]["interruption-level"] == "critical"
        assert push.body["aps"]["alert"]["title"] == f"[{page.id}] Disk full on db1"
        text = await alice.next_message()
        assert f"PAGE {page.id}" in text and "97% used" in text
        for _ in range(50):  # alice's client acknowledged receipt (XEP-0184): recorded
            if any(event == "receipt" for _, event, _ in page.history):
                break
            await asyncio.sleep(0.05)
        assert ["receipt", alice.jid] in [entry[1:] for entry in page.history]
        # Nobody acks: after the wait, the second step pages bob.
        await pushes_for(fake_apns, bob.token, 1, timeout=5)
        assert f"PAGE {page.id}" in await bob.next_message()
        # A duplicate does not page again.
        again, created = await notifier.page("db1-disk", "Disk full on db1", "97% used")
        assert again.id == page.id and not created
        reply = await bob.say(BOT, f"ack {page.id}")
        assert reply.startswith(f"Acknowledged {page.id}")
        assert notifier.engine.find(page.id).state is PageState.ACKED
        count = len(fake_apns.requests)
        await asyncio.sleep(2.5)  # past two more waits: no further pages
        assert len(fake_apns.requests) == count
        reply = await alice.say(BOT, f"resolve {page.id}")
        assert reply == f"Resolved {page.id}."
        assert notifier.engine.find(page.id) is None
        assert "resolved by" in await bob.next_message()
        # The pager counts in the app server's registry: one /metrics for both.
        exposition = notifier.appserver.metrics.exposition().decode()
        for sample in ('slixmpp_push_pages_opened_total{policy="oncall",source="api"} 1.0',
                       'slixmpp_push_page_escalations_total{policy="oncall"} 1.0',
                       'slixmpp_push_page_ack_seconds_count{policy="oncall"} 1.0',
                       'slixmpp_push_pages_resolved_total{policy="oncall",state="acked"} 1.0',
                       'slixmpp_push_pages_open{state="acked"} 0.0'):
            assert sample in exposition, sample


async def test_alertmanager_webhook_pages_and_resolves(
        prosody_server: ProsodyServer, xmpp: Connections, fake_apns: FakeApns,
        test_ca: TestCA, apns_key: Path, tmp_path: Path) -> None:
    alice_account = await make_account(prosody_server, "alice")
    bob_account = await make_account(prosody_server, "bob")
    policy = two_step_policy(alice_account.jid, bob_account.jid, wait=30)
    async with running_bot(xmpp, prosody_server, fake_apns, test_ca, apns_key,
                           tmp_path / "s.json", [policy]) as notifier:
        alice = await person(xmpp, prosody_server, BOT, alice_account, "a3" * 32)
        receiver = AlertReceiver(notifier, ReceiverConfig(port=0, token="t0k"))
        await receiver.start()
        try:
            status, body = await post(receiver, "/alertmanager", json.dumps(alertmanager()),
                                      token="t0k")
            assert status == 200 and body["created"]
            (push,) = await pushes_for(fake_apns, alice.token, 1)
            assert push.body["aps"]["interruption-level"] == "critical"
            assert "DiskFull" in push.body["aps"]["alert"]["title"]
            assert "DiskFull db1: 97% used" in await alice.next_message()
            # Alertmanager delivers at least once: the same payload pages nobody again.
            status, again = await post(receiver, "/alertmanager",
                                       json.dumps(alertmanager()), token="t0k")
            assert again["created"] is False
            await asyncio.sleep(0.3)
            assert len([r for r in fake_apns.requests if r.token == alice.token]) == 1
            status, resolved = await post(receiver, "/alertmanager",
                                          json.dumps(alertmanager("resolved")), token="t0k")
            assert resolved == {"resolved": body["page"]}
            assert notifier.engine.pages == {}
        finally:
            await receiver.stop()


async def test_restart_mid_escalation_resumes(
        prosody_server: ProsodyServer, xmpp: Connections, fake_apns: FakeApns,
        test_ca: TestCA, apns_key: Path, tmp_path: Path) -> None:
    alice_account = await make_account(prosody_server, "alice")
    bob_account = await make_account(prosody_server, "bob")
    policy = two_step_policy(alice_account.jid, bob_account.jid, wait=2.0)
    store = tmp_path / "s.json"
    async with running_bot(xmpp, prosody_server, fake_apns, test_ca, apns_key, store,
                           [policy]) as notifier:
        alice = await person(xmpp, prosody_server, BOT, alice_account, "a4" * 32)
        bob = await person(xmpp, prosody_server, BOT, bob_account, "b4" * 32)
        page, _ = await notifier.page("api-down", "API down", "5xx rate 40%")
        await pushes_for(fake_apns, alice.token, 1)
    # The bot is down; bob has not been paged yet.
    assert [r for r in fake_apns.requests if r.token == bob.token] == []
    async with running_bot(xmpp, prosody_server, fake_apns, test_ca, apns_key, store,
                           [policy]) as notifier:
        resumed = notifier.engine.find(page.id)
        assert resumed is not None and resumed.step == 0
        await pushes_for(fake_apns, bob.token, 1, timeout=5)  # step 2, on time
        assert notifier.engine.find(page.id).step == 1
        assert f"PAGE {page.id}" in await bob.next_message()
        assert len([r for r in fake_apns.requests if r.token == alice.token]) == 1


async def test_bot_publishes_to_a_remote_app_server(
        prosody_server: ProsodyServer, xmpp: Connections, fake_apns: FakeApns,
        test_ca: TestCA, apns_key: Path, tmp_path: Path) -> None:
    """The XEP-0357 publisher route: a client-account bot pages a node on an app
    server it does not run (here ours, trusting the bot as a publisher)."""
    bot_account = await make_account(prosody_server, "pagerbot")
    alice_account = await make_account(prosody_server, "alice")
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    async with running_appserver(xmpp, prosody_server, [app], tmp_path / "s.json",
                                 trusted=[bot_account.jid]) as server:
        phone = await xmpp.client(prosody_server, alice_account, resource="phone")
        answer = await execute(phone, server.jid, "v1-register-push",
                               {"type": "apns", "node": "dev", "token": "e7" * 32})
        bot = await xmpp.client(prosody_server, bot_account, resource="bot")
        bot.register_plugin("push_notifier", {
            "remotes": {"alice-phone": RemoteTarget(server.jid, answer["node"][0],
                                                    answer["secret"][0]),
                        "wrong-secret": RemoteTarget(server.jid, answer["node"][0], "nope")},
            "chat": False, "store": MemoryStore()})
        notifier = bot.plugin["push_notifier"]
        report = await notifier.notify(["remote:alice-phone", "remote:wrong-secret"],
                                       "Backup failed", "nightly", priority="high")
        assert report.remote == {"alice-phone": "ok", "wrong-secret": "not-authorized"}
        (push,) = await pushes_for(fake_apns, "e7" * 32, 1)
        # The app server trusts the bot: its page form makes the push the notice itself
        # (its title, high priority: time-sensitive), not a "New message".
        assert push.headers["apns-push-type"] == "alert"
        assert push.headers["apns-priority"] == "10"
        assert push.body["aps"]["mutable-content"] == 1
        assert push.body["aps"]["alert"] == {"title": "Backup failed"}
        assert push.body["aps"]["interruption-level"] == "time-sensitive"
        # All-active: the reply may reach another instance of the bot's component, so
        # the publish is sent without waiting for one; it is delivered all the same.
        notifier.config["shared"] = object()
        report = await notifier.notify(["remote:alice-phone"], "Backup failed again", "",
                                       priority="high")
        assert report.remote == {"alice-phone": "sent"} and report.delivered == 1
        await pushes_for(fake_apns, "e7" * 32, 2)
        await notifier.stop()


async def test_a_remote_pagers_page_is_one_critical_notification_per_page(
        xmpp_server: DevServer, xmpp: Connections, fake_apns: FakeApns, test_ca: TestCA,
        apns_key: Path, tmp_path: Path) -> None:
    """A pager on a client account pages alice by chat and her phone through a
    ``remote:`` target on an app server that trusts it. Her phone also has push enabled
    at her server, and she is offline: the page's chat message makes her server publish
    as well. The phone gets the page once, as the page: critical, its collapse id."""
    bot_account = await make_account(xmpp_server, "pagerbot")
    alice_account = await make_account(xmpp_server, "alice")
    token = "e8" * 32
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    async with running_appserver(xmpp, xmpp_server, [app], tmp_path / "s.json",
                                 trusted=[bot_account.jid]) as server:
        phone = await xmpp.client(xmpp_server, alice_account, resource="phone")
        answer = await execute(phone, server.jid, "v1-register-push",
                               {"type": "apns", "node": "dev", "token": token})
        node, secret = answer["node"][0], answer["secret"][0]
        await enable(phone, server.jid, node, {"secret": secret})
        await disconnect(phone)
        bot = await xmpp.client(xmpp_server, bot_account, resource="bot")
        bot.register_plugin("push_notifier", {
            "policies": {"oncall": Policy(name="oncall", steps=(
                Step((alice_account.jid, "remote:alice-phone"), 600),))},
            "remotes": {"alice-phone": RemoteTarget(server.jid, node, secret)},
            "store": MemoryStore()})
        notifier = bot.plugin["push_notifier"]
        page, _ = await notifier.page("db3-disk", "Disk full on db3", "99% used",
                                      priority="critical")
        # The bot's publish, then her server's for the chat message: answered, not pushed.
        mine, servers = await server.wait_published(2)
        assert (mine.publisher, mine.submitted) == (f"{bot_account.jid}/bot",
                                                   Submitted.DELIVERED)
        assert (servers.publisher, servers.answer, servers.submitted) == \
            (xmpp_server.domain, "result", None)
        (push,) = await pushes_for(fake_apns, token, 1)
        assert push.body["aps"]["interruption-level"] == "critical"
        assert push.body["aps"]["alert"] == {"title": f"[{page.id}] Disk full on db3"}
        assert push.headers["apns-collapse-id"] == \
            hashlib.sha256(f"key\0page:{page.id}".encode()).hexdigest()[:32]
        assert len([r for r in fake_apns.requests if r.token == token]) == 1
        await notifier.stop()


async def test_page_to_an_offline_account_is_one_notification_per_device(
        xmpp_server: DevServer, xmpp: Connections, fake_apns: FakeApns, test_ca: TestCA,
        apns_key: Path, tmp_path: Path) -> None:
    """The page's own push, and not a second one for the page's chat message, which
    the account's server stores and publishes for: that publish is swallowed."""
    alice_account = await make_account(xmpp_server, "alice")
    bob_account = await make_account(xmpp_server, "bob")
    policy = two_step_policy(alice_account.jid, bob_account.jid, wait=60)
    async with running_bot(xmpp, xmpp_server, fake_apns, test_ca, apns_key,
                           tmp_path / "s.json", [policy]) as notifier:
        appserver = notifier.appserver
        published: list[PublishOutcome] = []
        both_published = asyncio.Event()

        def seen(outcome: PublishOutcome) -> None:
            published.append(outcome)
            if len(published) == 2:
                both_published.set()

        appserver.xmpp.add_event_handler("push_published", seen)
        alice = await person(xmpp, xmpp_server, BOT, alice_account, "a5" * 32)
        tablet = await execute(alice.client, BOT, "register-device",
                               {"provider": APNS_APP, "device-token": "a6" * 32})
        await enable(alice.client, BOT, tablet["node"][0])
        await disconnect(alice.client)
        await asyncio.sleep(0.3)
        page, _ = await notifier.page("db2-disk", "Disk full on db2", "99% used",
                                      priority="critical")
        for token in ("a5" * 32, "a6" * 32):
            (push,) = await pushes_for(fake_apns, token, 1)
            assert push.body["aps"]["interruption-level"] == "critical"
            # Its escalations and repeats replace it: the page's own collapse id.
            page_key = hashlib.sha256(f"key\0page:{page.id}".encode()).hexdigest()[:32]
            assert push.headers["apns-collapse-id"] == page_key
        # The server publishes once per device for the stored chat message: both
        # answered result (the registrations stay), neither pushed.
        await asyncio.wait_for(both_published.wait(), 10)
        assert [p.answer for p in published] == ["result", "result"]
        assert all(p.submitted is None for p in published)
        await asyncio.sleep(1.5)  # Prosody batches hibernated sessions for ~1 s
        assert len(fake_apns.requests) == 2
        exposition = appserver.metrics.exposition().decode()
        assert f'slixmpp_push_echoes_suppressed_total{{app="{APNS_APP}"}} 2.0' in exposition
        # The next message from someone else is pushed as usual.
        await send_chat(xmpp, xmpp_server, bob_account, alice_account, "are you on it?")
        await pushes_for(fake_apns, "a5" * 32, 2)
        await pushes_for(fake_apns, "a6" * 32, 2)
        # And nothing was lost: the page's chat message waits for alice.
        back = await xmpp.client(xmpp_server, alice_account, resource="laptop")
        texts: asyncio.Queue[str] = asyncio.Queue()
        back.add_event_handler("message", lambda m: m["body"] and texts.put_nowait(
            str(m["body"])))
        back.send_presence()
        first = await asyncio.wait_for(texts.get(), 10)
        assert first.startswith(f"PAGE {page.id}")


async def test_help_answers_anyone_and_only_known_accounts_hear_of_unknown_commands(
        xmpp_server: DevServer, xmpp: Connections, fake_apns: FakeApns, test_ca: TestCA,
        apns_key: Path, tmp_path: Path) -> None:
    alice_account = await make_account(xmpp_server, "alice")
    bob_account = await make_account(xmpp_server, "bob")
    stranger_account = await make_account(xmpp_server, "stranger")
    policy = two_step_policy(alice_account.jid, bob_account.jid, wait=60)
    async with running_bot(xmpp, xmpp_server, fake_apns, test_ca, apns_key,
                           tmp_path / "s.json", [policy]):
        alice = await person(xmpp, xmpp_server, BOT, alice_account, "a8" * 32)
        client = await xmpp.client(xmpp_server, stranger_account, resource="desk")
        client.send_presence()
        stranger = Person(stranger_account, client, "")
        assert await stranger.say(BOT, "help") == HELP  # commands, no data: anyone
        assert "ack [ID]" in HELP and "oncall" in HELP
        # A stranger's chatter (or another bot's auto-reply) gets nothing back: had the
        # bot answered it, that answer would arrive before the one to "help".
        stranger.client.send_message(mto=BOT, mbody="hello, are you there?", mtype="chat")
        # Open pages and who is on call are the team's business: not told to strangers.
        for command in ("pages", "oncall", "ack"):
            stranger.client.send_message(mto=BOT, mbody=command, mtype="chat")
        assert await stranger.say(BOT, "HELP") == HELP
        # An encrypted message's body is a fallback for clients without OMEMO, not a
        # command: no answer to it (OmemoChat, when configured, decrypts it).
        encrypted = alice.client.make_message(mto=BOT, mtype="chat",
                                              mbody="This message is encrypted with OMEMO")
        encrypted.xml.append(ET.Element("{eu.siacs.conversations.axolotl}encrypted"))
        encrypted.send()
        assert (await alice.say(BOT, "oncall")).startswith("On call: ")
        # Someone the pager pages is told what it understands, once in a while.
        assert await alice.say(BOT, "thanks") == "I did not understand that. " + HELP
        alice.client.send_message(mto=BOT, mbody="thanks again", mtype="chat")
        assert (await alice.say(BOT, "oncall")).startswith("On call: " + alice.jid)
