"""End to end on real Prosody 0.12 (mod_cloud_notify) and ejabberd 23.01
(mod_push): a device registers in its dialect, enables push, goes offline;
another user writes; the fake APNs receives exactly the expected request."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from pathlib import Path

from e2e import (
    APNS_APP,
    FCM_APP,
    KEY_ID,
    MONAL_MODULE,
    TEAM_ID,
    TOPIC,
    apns_app,
    enable,
    execute,
    fcm_app,
    running_appserver,
    send_chat,
)
from fakes.fake_apns import FakeApns
from fakes.fake_fcm import FakeFcm
from fakes.tls import TestCA
from servers import Connections, disconnect, make_account
from tokens import fcm_token

from slixmpp_push.devserver import DevServer, ProsodyServer


def is_prosody(server: DevServer) -> bool:
    return isinstance(server, ProsodyServer)


def jwt_claims(authorization: str) -> tuple[dict[str, str], dict[str, object]]:
    token = authorization.split(" ", 1)[1]
    header, claims, _ = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (json.loads(base64.urlsafe_b64decode(pad(header))),
            json.loads(base64.urlsafe_b64decode(pad(claims))))


def conversation_key(app_id: str, account: str) -> str:
    """The collapse id / thread id of an account's chat alerts (hash of app and account)."""
    return hashlib.sha256(f"{app_id}\0{account}".encode()).hexdigest()[:32]


def message_alert(server: DevServer, account: str, key: str) -> dict[str, object]:
    """The exact APNs body a stock server's chat message becomes (include_body off)."""
    body: dict[str, object] = {
        "aps": {"alert": {"title": "New message"}, "mutable-content": 1, "sound": "default",
                "thread-id": key},
        "account": account}
    if is_prosody(server):
        body["unread-messages"] = 1  # Prosody always says 1; ejabberd sends no count
    return body


def assert_apns_headers(record: object, push_type: str, priority: str, ttl: int) -> None:
    headers = record.headers  # type: ignore[attr-defined]
    assert headers[":method"] == "POST"
    assert headers["apns-topic"] == TOPIC
    assert headers["apns-push-type"] == push_type
    assert headers["apns-priority"] == priority
    assert abs(int(headers["apns-expiration"]) - (time.time() + ttl)) < 30
    header, claims = jwt_claims(headers["authorization"])
    assert header["kid"] == KEY_ID and header["alg"] == "ES256"
    assert claims["iss"] == TEAM_ID


async def test_siskin_register_device(xmpp_server: DevServer, xmpp: Connections,
                                      fake_apns: FakeApns, test_ca: TestCA, apns_key: Path,
                                      tmp_path: Path) -> None:
    alice = await make_account(xmpp_server, "alice")
    bob = await make_account(xmpp_server, "bob")
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    async with running_appserver(xmpp, xmpp_server, [app], tmp_path / "s.json") as server:
        phone = await xmpp.client(xmpp_server, alice, resource="phone")
        answer = await execute(phone, server.jid, "register-device", {
            "provider": APNS_APP, "device-token": "aa11" * 16})
        node = answer["node"][0]
        assert "tigase:push:encrypt:0" in answer["features"]
        await enable(phone, server.jid, node)
        await disconnect(phone)
        await send_chat(xmpp, xmpp_server, bob, alice, "secret words")
        (record,) = await fake_apns.wait_for(1, timeout=10)
        assert record.path == "/3/device/" + "aa11" * 16
        # A stock server's chat message: a visible, mutable alert (iOS runs
        # Siskin's notification service extension only for those), neutral text.
        assert_apns_headers(record, "alert", "10", app.ttl)
        key = conversation_key(APNS_APP, alice.jid)
        assert record.headers["apns-collapse-id"] == key
        assert record.body == message_alert(xmpp_server, alice.jid, key)
        assert b"secret words" not in record.raw_body
        (outcome,) = await server.wait_published(1)
        assert (outcome.node, outcome.publisher, outcome.answer) == (node, "localhost",
                                                                       "result")
        exposition = server.plugin.metrics.exposition().decode()
        assert 'slixmpp_push_publishes_total{dialect="tigase",outcome="result"} 1.0' in exposition
        assert f'slixmpp_push_registrations{{app="{APNS_APP}"}} 1.0' in exposition


async def test_conversations_register_push_fcm(
        xmpp_server: DevServer, xmpp: Connections, fake_fcm: FakeFcm, tmp_path: Path) -> None:
    alice = await make_account(xmpp_server, "alice")
    bob = await make_account(xmpp_server, "bob")
    app = fcm_app(fake_fcm, tmp_path)
    async with running_appserver(xmpp, xmpp_server, [app], tmp_path / "s.json") as server:
        phone = await xmpp.client(xmpp_server, alice, resource="conversations.AbCd")
        answer = await execute(phone, server.jid, "register-push-fcm", {
            "token": fcm_token("conversations"), "android-id": "0123456789abcdef"})
        assert set(answer) == {"jid", "node", "secret"}
        await enable(phone, server.jid, answer["node"][0], {"secret": answer["secret"][0]})
        await disconnect(phone)
        await send_chat(xmpp, xmpp_server, bob, alice, "secret words")
        (record,) = await fake_fcm.wait_for(1, timeout=10)
        assert record.path == "/v1/projects/push-e2e/messages:send"
        assert record.headers["authorization"] == f"Bearer {fake_fcm.issued_token}"
        device = hashlib.sha1(f"{alice.jid}\0" "0123456789abcdef".encode()).hexdigest()
        assert record.body == {"message": {
            "token": fcm_token("conversations"),
            "data": {"account": device},
            "android": {"priority": "high", "ttl": f"{app.ttl}s",
                        "collapse_key": device[:6]},
        }}
        (outcome,) = await server.wait_published(1)
        assert outcome.answer == "result"
        assert app.id == FCM_APP


async def test_v1_register_push(xmpp_server: DevServer, xmpp: Connections,
                                fake_apns: FakeApns, test_ca: TestCA, apns_key: Path,
                                tmp_path: Path) -> None:
    alice = await make_account(xmpp_server, "alice")
    bob = await make_account(xmpp_server, "bob")
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    async with running_appserver(xmpp, xmpp_server, [app], tmp_path / "s.json") as server:
        phone = await xmpp.client(xmpp_server, alice, resource="phone")
        answer = await execute(phone, server.jid, "v1-register-push", {
            "type": "apns", "node": "device-uuid-1", "token": "bb22" * 16})
        assert answer["jid"] == [server.jid]
        await enable(phone, server.jid, answer["node"][0], {"secret": answer["secret"][0]})
        await disconnect(phone)
        await send_chat(xmpp, xmpp_server, bob, alice, "secret words")
        (record,) = await fake_apns.wait_for(1, timeout=10)
        assert record.token == "bb22" * 16
        assert_apns_headers(record, "alert", "10", app.ttl)
        key = conversation_key(APNS_APP, alice.jid)
        assert record.headers["apns-collapse-id"] == key
        assert record.body == message_alert(xmpp_server, alice.jid, key)
        assert b"secret words" not in record.raw_body


async def test_stork_register_device_fcm(
        xmpp_server: DevServer, xmpp: Connections, fake_fcm: FakeFcm, tmp_path: Path) -> None:
    """Stork (Android) speaks the Tigase dialect over FCM: a message wakes it at once."""
    alice = await make_account(xmpp_server, "alice")
    bob = await make_account(xmpp_server, "bob")
    app = fcm_app(fake_fcm, tmp_path)
    async with running_appserver(xmpp, xmpp_server, [app], tmp_path / "s.json") as server:
        phone = await xmpp.client(xmpp_server, alice, resource="stork")
        answer = await execute(phone, server.jid, "register-device", {
            "provider": FCM_APP, "device-token": fcm_token("stork")})
        await enable(phone, server.jid, answer["node"][0])
        await disconnect(phone)
        await send_chat(xmpp, xmpp_server, bob, alice, "secret words")
        (record,) = await fake_fcm.wait_for(1, timeout=10)
        data = {"account": alice.jid, "priority": "high"}
        if is_prosody(xmpp_server):
            data["unread-messages"] = "1"
        assert record.body == {"message": {
            "token": fcm_token("stork"),
            "data": data,
            "android": {"priority": "high", "ttl": f"{app.ttl}s",
                        "collapse_key": conversation_key(FCM_APP, alice.jid)},
        }}
        assert "secret words" not in json.dumps(record.body)


async def test_monal_stateless(xmpp_server: DevServer, xmpp: Connections,
                               fake_apns: FakeApns, test_ca: TestCA, apns_key: Path,
                               tmp_path: Path) -> None:
    alice = await make_account(xmpp_server, "alice")
    bob = await make_account(xmpp_server, "bob")
    token = "cc33" * 16
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    async with running_appserver(xmpp, xmpp_server, [app], tmp_path / "s.json") as server:
        phone = await xmpp.client(xmpp_server, alice, resource="phone")
        await enable(phone, server.jid, token, {"pushModule": MONAL_MODULE})
        await disconnect(phone)
        await send_chat(xmpp, xmpp_server, bob, alice)
        (record,) = await fake_apns.wait_for(1, timeout=10)
        assert record.token == token
        assert_apns_headers(record, "alert", "10", app.ttl)
        # A Monal registration knows no account: the token keys the collapse id.
        key = conversation_key(APNS_APP, token)
        assert record.headers["apns-collapse-id"] == key
        assert record.body == message_alert(xmpp_server, "localhost", key)


async def test_hibernated_session_is_pushed(xmpp_server: DevServer, xmpp: Connections,
                                            fake_apns: FakeApns, test_ca: TestCA,
                                            apns_key: Path, tmp_path: Path) -> None:
    alice = await make_account(xmpp_server, "alice")
    bob = await make_account(xmpp_server, "bob")
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    async with running_appserver(xmpp, xmpp_server, [app], tmp_path / "s.json") as server:
        phone = await xmpp.client(xmpp_server, alice, resource="phone",
                                  plugins=("xep_0030", "xep_0198"))
        if not phone.plugin["xep_0198"].sm_id:
            await phone.wait_until("sm_enabled", timeout=5)
        assert phone.plugin["xep_0198"].sm_id, "stream management was not resumable"
        answer = await execute(phone, server.jid, "register-device", {
            "provider": APNS_APP, "device-token": "dd44" * 16})
        await enable(phone, server.jid, answer["node"][0])
        phone.send_presence()
        await asyncio.sleep(0.2)
        # The phone's connection dies without closing the stream: the server
        # keeps the session for resumption (hibernated / pending).
        phone.auto_reconnect = False
        phone.transport.abort()  # type: ignore[union-attr]
        await asyncio.sleep(0.3)
        await send_chat(xmpp, xmpp_server, bob, alice)
        (record,) = await fake_apns.wait_for(1, timeout=10)
        assert record.token == "dd44" * 16


async def _registered_offline(xmpp: Connections, server: DevServer, appserver_jid: str,
                              token: str) -> tuple[object, object, str]:
    alice = await make_account(server, "alice")
    bob = await make_account(server, "bob")
    phone = await xmpp.client(server, alice, resource="phone")
    answer = await execute(phone, appserver_jid, "register-device", {
        "provider": APNS_APP, "device-token": token})
    node = answer["node"][0]
    await enable(phone, appserver_jid, node)
    await disconnect(phone)
    return alice, bob, node


async def test_outage_keeps_registration_and_delivers_the_latest(
        xmpp_server: DevServer, xmpp: Connections, fake_apns: FakeApns, test_ca: TestCA,
        apns_key: Path, tmp_path: Path) -> None:
    token = "ee55" * 16
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    async with running_appserver(xmpp, xmpp_server, [app], tmp_path / "s.json") as server:
        alice, bob, _node = await _registered_offline(xmpp, xmpp_server, server.jid, token)
        fake_apns.set_outage(503, "ServiceUnavailable")
        await send_chat(xmpp, xmpp_server, bob, alice, "during the outage", count=22)
        published = await server.wait_published(22, timeout=20)
        assert {p.answer for p in published} == {"result"}
        assert server.plugin.delivery.pending_count == 1  # coalesced: one per node
        await asyncio.sleep(1.0)  # a few retries fail meanwhile
        failed = len(fake_apns.requests)
        assert failed >= 2
        recovered = time.monotonic()
        fake_apns.end_outage()
        records = await fake_apns.wait_for(failed + 1, timeout=10)
        assert records[-1].received >= recovered and records[-1].token == token
        await asyncio.sleep(0.3)
        assert server.plugin.delivery.pending_count == 0
        # The user's server did not disable push: the next message is pushed too.
        await send_chat(xmpp, xmpp_server, bob, alice, "after the outage")
        await server.wait_published(23)
        await fake_apns.wait_for(failed + 2, timeout=10)


async def test_wait_errors_are_understood_by_prosody(
        prosody_server: ProsodyServer, xmpp: Connections, fake_apns: FakeApns,
        test_ca: TestCA, apns_key: Path, tmp_path: Path) -> None:
    """20 error replies (more than push_max_errors) do not disable push at Prosody.

    Only an <error type='wait'> in the component stream's namespace is read as
    transient by Prosody; the jabber:client one slixmpp builds is counted.
    """
    token = "ff66" * 16
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    log_before = len(prosody_server.log_text())  # the server is shared with other tests
    async with running_appserver(xmpp, prosody_server, [app], tmp_path / "s.json") as server:
        alice, bob, _node = await _registered_offline(xmpp, prosody_server, server.jid, token)
        fake_apns.responses[token] = (400, "BadTopic")  # our fault: answered wait
        sender = await send_chat(xmpp, prosody_server, bob, alice, "refused 0")
        for i in range(1, 21):
            # One at a time: while a request is in flight a newer publish is
            # queued (and answered result) instead of refused.
            await server.wait_published(i)
            sender.send_message(mto=alice.jid, mbody=f"refused {i}", mtype="chat")
        published = await server.wait_published(21, timeout=20)
        assert {p.answer for p in published} == {"internal-server-error"}
        del fake_apns.responses[token]
        await send_chat(xmpp, prosody_server, bob, alice, "accepted again")
        published = await server.wait_published(22, timeout=10)
        assert published[-1].answer == "result"
        assert "(nil)" not in prosody_server.log_text()[log_before:]


async def test_dead_token_drops_the_registration(
        xmpp_server: DevServer, xmpp: Connections, fake_apns: FakeApns, test_ca: TestCA,
        apns_key: Path, tmp_path: Path) -> None:
    token = "ab77" * 16
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    async with running_appserver(xmpp, xmpp_server, [app], tmp_path / "s.json") as server:
        alice, bob, node = await _registered_offline(xmpp, xmpp_server, server.jid, token)
        fake_apns.responses[token] = (410, "Unregistered")
        sender = await send_chat(xmpp, xmpp_server, bob, alice, "first")
        first = (await server.wait_published(1))[0]
        assert first.answer == "item-not-found"
        assert server.plugin.store.get(node) is None
        # ejabberd drops the registration at the first such error, Prosody
        # after push_max_errors (16) of them: then either publishes no more.
        for i in range(20):
            sender.send_message(mto=alice.jid, mbody=f"more {i}", mtype="chat")
        await asyncio.sleep(2.0)
        seen = len(server.published)
        print("publishes before the server gave up:", seen)
        if not is_prosody(xmpp_server):
            assert seen == 1
        assert {p.answer for p in server.published} == {"item-not-found"}
        sender.send_message(mto=alice.jid, mbody="after", mtype="chat")
        await asyncio.sleep(1.5)
        assert len(server.published) == seen, "the server still publishes to a dead node"
        assert len(fake_apns.requests) == 1


async def test_wrong_secret_is_refused(
        xmpp_server: DevServer, xmpp: Connections, fake_apns: FakeApns, test_ca: TestCA,
        apns_key: Path, tmp_path: Path) -> None:
    alice = await make_account(xmpp_server, "alice")
    bob = await make_account(xmpp_server, "bob")
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    async with running_appserver(xmpp, xmpp_server, [app], tmp_path / "s.json") as server:
        phone = await xmpp.client(xmpp_server, alice, resource="phone")
        answer = await execute(phone, server.jid, "v1-register-push", {
            "type": "apns", "node": "dev", "token": "ac88" * 16})
        await enable(phone, server.jid, answer["node"][0], {"secret": "not-the-secret"})
        await disconnect(phone)
        await send_chat(xmpp, xmpp_server, bob, alice)
        (outcome,) = await server.wait_published(1)
        assert outcome.answer == "not-authorized"
        await asyncio.sleep(0.3)
        assert fake_apns.requests == []
