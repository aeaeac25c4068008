"""build_request: the exact provider request each client family gets."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slixmpp_push import payloads
from slixmpp_push.config import AppConfig
from slixmpp_push.models import Dialect, Jingle, Notification, Priority, Registration
from slixmpp_push.notifier.publisher import RemoteTarget, pubsub_element
from slixmpp_push.payloads import (
    APNS_MAX_PAYLOAD,
    APNS_VOIP_MAX_PAYLOAD,
    FCM_MAX_PAYLOAD,
    Presentation,
    build_request,
    presentation,
)
from slixmpp_push.providers.base import ApnsRequest, FcmRequest
from slixmpp_push.xep_0357 import Publish, parse_publish

NOW = 1_700_000_000.75
ACCOUNT = "alice@example.org"
TOPIC = "org.example.siskin"
DEVICE_KEY = "3f1a9c0d2b7e4f5a6c8d9e0f1a2b3c4d5e6f7a8b"
CHANNEL_KEY = "0123456789abcdef0123456789abcdef01234567"


def apns_app(**kw: Any) -> AppConfig:
    values: dict[str, Any] = {"id": "tigase:messenger:apns:1", "type": "apns", "topic": TOPIC,
                              "key_file": "/k.p8", "key_id": "K", "team_id": "T"}
    values.update(kw)
    return AppConfig(**values)


def fcm_app(**kw: Any) -> AppConfig:
    values: dict[str, Any] = {"id": "fcm-xmpp-api", "type": "fcm",
                              "service_account_file": "/sa.json"}
    values.update(kw)
    return AppConfig(**values)


def reg(dialect: Dialect = Dialect.TIGASE, **kw: Any) -> Registration:
    values: dict[str, Any] = {"node": "node1", "account": ACCOUNT, "domain": "example.org",
                              "app": "tigase:messenger:apns:1", "token": "a1b2c3",
                              "dialect": dialect}
    values.update(kw)
    return Registration(**values)


def p2_reg(**kw: Any) -> Registration:
    return reg(Dialect.P2, app="fcm", token="fcm-token", device_id="android-1",
               device_key=DEVICE_KEY, secret="s" * 24, **kw)


def size(payload: dict[str, Any]) -> int:
    """Bytes of compact UTF-8 JSON, as build_request measures."""
    return len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())


def apns(registration: Registration, notification: Notification, app: AppConfig,
         now: float = NOW) -> ApnsRequest:
    request = build_request(registration, notification, app, now)
    assert isinstance(request, ApnsRequest)
    return request


def fcm(registration: Registration, notification: Notification, app: AppConfig,
        now: float = NOW) -> FcmRequest:
    request = build_request(registration, notification, app, now)
    assert isinstance(request, FcmRequest)
    return request


# -- Conversations (p2, FCM) -----------------------------------------------------------
def test_p2_is_data_only_with_the_device_key() -> None:
    note = Notification(message_count=1, sender="bob@example.org", body="hi")
    request = fcm(p2_reg(), note, fcm_app())
    assert request == FcmRequest(token="fcm-token", data={"account": DEVICE_KEY},
                                 priority="high", ttl=604_800, collapse_key=DEVICE_KEY[:6])
    assert request.collapse_key == "3f1a9c"
    assert request.title is None and request.body is None and request.channel_id is None


def test_p2_channel_key_is_added_for_a_group_chat_registration() -> None:
    registration = p2_reg(channel="room@muc.example.org", channel_key=CHANNEL_KEY)
    request = fcm(registration, Notification(), fcm_app())
    assert request.data == {"account": DEVICE_KEY, "channel": CHANNEL_KEY}
    assert request.collapse_key == DEVICE_KEY[:6]
    assert request.priority == "high"


def test_p2_never_carries_the_body_even_with_include_body() -> None:
    note = Notification(message_count=3, sender="bob@example.org", body="secret words",
                        title="Page", priority=Priority.CRITICAL)
    request = fcm(p2_reg(), note, fcm_app(include_body=True, android_channel="pages"))
    assert request.data == {"account": DEVICE_KEY}
    assert request.title is None and request.body is None and request.channel_id is None
    assert "secret words" not in json.dumps(request.data)


# -- Siskin, Snikket iOS, v1 (Tigase dialect, APNs) -----------------------------------------
def thread(account: str = ACCOUNT, app: str = "tigase:messenger:apns:1") -> str:
    return hashlib.sha256(f"{app}\0{account}".encode()).hexdigest()[:32]


MESSAGE_APS = {"alert": {"title": "New message"}, "mutable-content": 1, "sound": "default",
               "thread-id": thread()}


@pytest.mark.parametrize("note", [
    Notification(message_count=1, body="New Message!"),  # stock Prosody 0.12 / 13
    Notification(body="New message"),  # stock ejabberd: no count, a placeholder body
    Notification(message_count=2),
    Notification(priority=Priority.HIGH),  # Tigase priority element, nothing else
    Notification(encrypted="ZW5j", iv="aXY="),
], ids=["prosody", "ejabberd", "count", "tigase-high", "encrypted"])
def test_a_message_is_a_visible_mutable_alert(note: Notification) -> None:
    """iOS runs the app's notification service extension only for a mutable alert."""
    for dialect in (Dialect.TIGASE, Dialect.V1):
        request = apns(reg(dialect), note, apns_app())
        assert (request.push_type, request.priority) == ("alert", 10)
        assert request.payload["aps"] == MESSAGE_APS
        assert request.payload["account"] == ACCOUNT
        assert request.collapse_id == thread()
        assert presentation(reg(dialect), note) is Presentation.MESSAGE


def test_siskin_message_payload_without_include_body() -> None:
    request = apns(reg(), Notification(message_count=2, sender="bob@x", body="hi"), apns_app())
    assert request == ApnsRequest(
        token="a1b2c3", topic=TOPIC, push_type="alert", priority=10,
        expiration=int(NOW) + 604_800,
        payload={"aps": MESSAGE_APS, "account": ACCOUNT, "unread-messages": 2},
        collapse_id=thread(),
    )


def test_messages_fetched_is_a_background_push() -> None:
    """Siskin clears an account's delivered notifications on unread 0, no sender, no body."""
    request = apns(reg(), Notification(message_count=0), apns_app())
    assert request == ApnsRequest(
        token="a1b2c3", topic=TOPIC, push_type="background", priority=5,
        expiration=int(NOW) + 604_800,
        payload={"aps": {"content-available": 1}, "account": ACCOUNT, "unread-messages": 0},
    )


def test_prosody_unimportant_stanza_is_a_background_push() -> None:
    """Prosody says message-count 1 for a chat state too; its empty body field tells."""
    note = Notification(message_count=1, unimportant=True)
    request = apns(reg(), note, apns_app())
    assert (request.push_type, request.priority) == ("background", 5)
    assert presentation(reg(), note) is Presentation.WAKE
    assert fcm(reg(app="fcm-xmpp-api"), note, fcm_app()).priority == "normal"
    # With the extensions Prosody 13 also tags a message high: that still shows.
    tagged = Notification(message_count=1, unimportant=True, priority=Priority.HIGH)
    assert presentation(reg(), tagged) is Presentation.MESSAGE


def test_a_publish_signalling_nothing_is_a_background_push() -> None:
    request = apns(reg(), Notification(), apns_app())
    assert (request.push_type, request.priority) == ("background", 5)
    assert request.payload == {"aps": {"content-available": 1}, "account": ACCOUNT}
    assert request.collapse_id is None


def test_siskin_low_priority_is_background() -> None:
    note = Notification(message_count=3, body="x", priority=Priority.LOW)
    request = apns(reg(), note, apns_app())
    assert (request.push_type, request.priority) == ("background", 5)
    assert request.payload == {"aps": {"content-available": 1}, "account": ACCOUNT,
                               "unread-messages": 3}


def test_siskin_sender_and_body_only_with_include_body() -> None:
    note = Notification(message_count=1, sender="bob@example.org/phone", body="hello")
    without = apns(reg(), note, apns_app(include_body=False)).payload
    assert without == {"aps": MESSAGE_APS, "account": ACCOUNT, "unread-messages": 1}
    with_body = apns(reg(), note, apns_app(include_body=True)).payload
    assert with_body == {"aps": MESSAGE_APS, "account": ACCOUNT, "unread-messages": 1,
                         "sender": "bob@example.org/phone", "body": "hello"}
    # The alert text stays neutral: the extension shows sender and text itself.
    assert "bob" not in json.dumps(with_body["aps"])


def test_siskin_encrypted_blob_is_forwarded_unchanged() -> None:
    blob = "q83vEjRWeJCrze8SNFZ4kA==" * 20
    note = Notification(message_count=5, sender="bob@x", body="plain", encrypted=blob,
                        iv="AAECAwQFBgcICQoL")
    request = apns(reg(), note, apns_app(include_body=True))
    # The encrypted form replaces the plain fields, even with include_body.
    assert request.payload == {"aps": MESSAGE_APS, "account": ACCOUNT,
                               "encrypted": blob, "iv": "AAECAwQFBgcICQoL"}
    assert (request.push_type, request.priority) == ("alert", 10)


def test_tigase_high_priority_is_a_message_not_time_sensitive() -> None:
    request = apns(reg(), Notification(message_count=1, priority=Priority.HIGH), apns_app())
    assert "interruption-level" not in request.payload["aps"]
    assert "content-available" not in request.payload["aps"]


# -- one notification per event ----------------------------------------------------------
def test_a_burst_for_one_account_collapses_per_account_and_app() -> None:
    first = apns(reg(node="n1"), Notification(message_count=1), apns_app())
    second = apns(reg(node="n1"), Notification(message_count=2, body="x"), apns_app())
    assert first.collapse_id == second.collapse_id == thread()
    assert len(first.collapse_id.encode()) <= 64  # APNs' limit
    other_account = apns(reg(account="bob@example.org"), Notification(message_count=1),
                         apns_app())
    other_app = apns(reg(), Notification(message_count=1), apns_app(id="snikket:apns:1"))
    assert len({first.collapse_id, other_account.collapse_id, other_app.collapse_id}) == 3
    assert other_account.payload["aps"]["thread-id"] == thread("bob@example.org")
    assert ACCOUNT not in first.collapse_id


def test_collapse_none_stacks_messages_but_keeps_the_thread() -> None:
    request = apns(reg(), Notification(message_count=1), apns_app(collapse="none"))
    assert request.collapse_id is None
    assert request.payload["aps"]["thread-id"] == thread()


def test_a_page_collapses_on_its_own_key() -> None:
    page = Notification(title="[AB12] Disk full", priority=Priority.CRITICAL,
                        collapse_key="page-AB12")
    first = apns(reg(Dialect.LOCAL), page, apns_app())
    again = apns(reg(Dialect.LOCAL), page, apns_app(collapse="none"))
    assert first.collapse_id == again.collapse_id
    assert first.collapse_id != thread()
    assert first.payload["aps"]["thread-id"] == first.collapse_id
    unkeyed = apns(reg(Dialect.LOCAL), Notification(title="Maintenance"), apns_app())
    assert unkeyed.collapse_id is None  # notices without a key stack


def test_stork_collapse_key_per_account_and_page_tag() -> None:
    registration = reg(app="fcm-xmpp-api", token="fcm-tok")
    message = fcm(registration, Notification(message_count=1), fcm_app())
    assert message.collapse_key == thread(app="fcm-xmpp-api")
    assert message.tag is None
    page = fcm(registration, Notification(title="Page", priority=Priority.HIGH,
                                          collapse_key="page-1"), fcm_app())
    assert page.collapse_key == page.tag != message.collapse_key


def test_critical_breaks_through_do_not_disturb() -> None:
    note = Notification(title="Disk full", body="db1 at 99%", priority=Priority.CRITICAL)
    request = apns(reg(Dialect.LOCAL), note, apns_app(include_body=True))
    assert (request.push_type, request.priority) == ("alert", 10)
    aps = request.payload["aps"]
    assert aps["interruption-level"] == "critical"
    assert aps["sound"] == {"critical": 1, "name": "default", "volume": 1.0}
    assert aps["mutable-content"] == 1
    assert aps["alert"] == {"title": "Disk full", "body": "db1 at 99%"}


def test_critical_alert_hides_the_body_without_include_body() -> None:
    note = Notification(title="Disk full", body="db1 at 99%", priority=Priority.CRITICAL)
    payload = apns(reg(Dialect.LOCAL), note, apns_app()).payload
    assert payload["aps"]["alert"] == {"title": "Disk full"}
    assert "db1 at 99%" not in json.dumps(payload)


# -- calls -------------------------------------------------------------------------------
@pytest.mark.parametrize("note", [
    Notification(jingle=Jingle(sid="sid-1", media=("audio", "video"))),
    Notification(encrypted="ZW5j", iv="aXY=", encrypted_type="voip"),
], ids=["jingle", "encrypted-voip"])
def test_call_goes_to_the_voip_token(note: Notification) -> None:
    registration = reg(voip_token="voip-tok")
    request = apns(registration, note, apns_app(call_ttl=45))
    assert request.token == "voip-tok"
    assert request.topic == f"{TOPIC}.voip"
    assert request.push_type == "voip"
    assert request.priority == 10
    assert request.expiration == int(NOW) + 45
    assert request.payload["account"] == ACCOUNT
    assert "aps" not in request.payload


def test_encrypted_voip_payload_is_account_encrypted_iv() -> None:
    note = Notification(encrypted="ZW5j", iv="aXY=", encrypted_type="voip")
    request = apns(reg(voip_token="voip-tok"), note, apns_app())
    assert request.payload == {"account": ACCOUNT, "encrypted": "ZW5j", "iv": "aXY="}


def test_jingle_voip_payload_carries_sid_and_media() -> None:
    note = Notification(sender="bob@example.org/phone",
                        jingle=Jingle(sid="sid-1", media=("audio",)))
    plain = apns(reg(voip_token="v"), note, apns_app()).payload
    assert plain == {"account": ACCOUNT, "sid": "sid-1", "media": ["audio"]}
    shown = apns(reg(voip_token="v"), note, apns_app(include_body=True)).payload
    assert shown == {"account": ACCOUNT, "sender": "bob@example.org/phone", "sid": "sid-1",
                     "media": ["audio"]}


def test_call_without_voip_token_is_a_normal_alert() -> None:
    note = Notification(jingle=Jingle(sid="sid-1", media=("audio",)))
    request = apns(reg(voip_token=None), note, apns_app())
    assert request.token == "a1b2c3"
    assert request.topic == TOPIC
    assert (request.push_type, request.priority) == ("alert", 10)
    assert request.expiration == int(NOW) + 604_800
    assert request.payload["aps"]["mutable-content"] == 1
    assert request.payload["account"] == ACCOUNT


# -- Monal -------------------------------------------------------------------------------
def test_monal_gets_a_mutable_alert() -> None:
    registration = reg(Dialect.MONAL, account="example.org", app="monal", token="deadbeef")
    note = Notification(message_count=1, body="New Message!")
    request = apns(registration, note, apns_app(topic="G7HWJAZNJ.SworIM"))
    assert request.token == "deadbeef"
    assert request.topic == "G7HWJAZNJ.SworIM"
    assert (request.push_type, request.priority) == ("alert", 10)
    assert request.payload["aps"] == {"alert": {"title": "New message"}, "mutable-content": 1,
                                      "sound": "default",
                                      "thread-id": thread("deadbeef")}
    assert request.collapse_id == thread("deadbeef")  # the token: the account is unknown
    assert request.payload["account"] == "example.org"
    assert "body" not in request.payload


# -- expiration ----------------------------------------------------------------------------
def test_expiration_is_computed_per_request_from_now() -> None:
    app = apns_app(ttl=3600)
    first = apns(reg(), Notification(), app, now=1000.9)
    later = apns(reg(), Notification(), app, now=5000.2)
    assert first.expiration == 1000 + 3600
    assert later.expiration == 5000 + 3600
    assert isinstance(first.expiration, int)


def test_console_app_renders_apns_by_default_and_fcm_on_request() -> None:
    console = AppConfig(id="console", type="console", format="apns")
    assert isinstance(build_request(reg(), Notification(), console, NOW), ApnsRequest)
    console_fcm = AppConfig(id="console", type="console", format="fcm")
    assert isinstance(build_request(reg(), Notification(), console_fcm, NOW), FcmRequest)


# -- Stork (Tigase dialect, FCM) --------------------------------------------------------------
def test_stork_fcm_data_keys() -> None:
    registration = reg(app="fcm-xmpp-api", token="fcm-tok")
    note = Notification(message_count=4, sender="bob@example.org", body="hello")
    request = fcm(registration, note, fcm_app(include_body=True))
    assert request == FcmRequest(
        token="fcm-tok",
        data={"account": ACCOUNT, "unread-messages": "4", "sender": "bob@example.org",
              "body": "hello", "priority": "high"},
        priority="high", ttl=604_800, collapse_key=thread(app="fcm-xmpp-api"),
    )
    hidden = fcm(registration, note, fcm_app()).data
    assert hidden == {"account": ACCOUNT, "unread-messages": "4", "priority": "high"}
    fetched = fcm(registration, Notification(message_count=0), fcm_app())
    assert (fetched.priority, fetched.collapse_key) == ("normal", None)
    assert fetched.data == {"account": ACCOUNT, "unread-messages": "0"}


def test_stork_fcm_urgent_adds_priority_high() -> None:
    registration = reg(app="fcm-xmpp-api", token="fcm-tok")
    request = fcm(registration, Notification(message_count=1, priority=Priority.HIGH), fcm_app())
    assert request.data == {"account": ACCOUNT, "unread-messages": "1", "priority": "high"}
    assert request.priority == "high"


def test_stork_fcm_encrypted_and_call_ttl() -> None:
    registration = reg(app="fcm-xmpp-api", token="fcm-tok")
    note = Notification(encrypted="ZW5j", iv="aXY=", encrypted_type="voip")
    request = fcm(registration, note, fcm_app(call_ttl=20))
    assert request.data == {"account": ACCOUNT, "encrypted": "ZW5j", "iv": "aXY=",
                            "priority": "high"}
    assert request.ttl == 20
    assert request.priority == "high"
    assert all(isinstance(v, str) for v in request.data.values())


# -- payload size ----------------------------------------------------------------------------
def test_long_body_is_shortened_to_fit_apns() -> None:
    body = "x" * 10_000
    note = Notification(message_count=1, sender="bob@example.org", body=body)
    payload = apns(reg(), note, apns_app(include_body=True)).payload
    assert size(payload) <= APNS_MAX_PAYLOAD
    assert payload["body"].endswith("…")
    assert body.startswith(payload["body"][:-1])
    assert len(payload["body"]) > 3000  # only as much as needed is cut
    assert payload["account"] == ACCOUNT
    assert payload["sender"] == "bob@example.org"


def test_long_body_is_shortened_to_fit_fcm() -> None:
    note = Notification(message_count=1, sender="bob@example.org", body="y" * 10_000)
    data = fcm(reg(token="t"), note, fcm_app(include_body=True)).data
    assert size(data) <= FCM_MAX_PAYLOAD
    assert data["body"].endswith("…")
    assert data["account"] == ACCOUNT


def test_long_alert_text_is_shortened_in_aps_too() -> None:
    note = Notification(title="T" * 3000, body="b" * 10_000, priority=Priority.HIGH)
    payload = apns(reg(Dialect.LOCAL), note, apns_app(include_body=True)).payload
    assert size(payload) <= APNS_MAX_PAYLOAD
    assert payload["account"] == ACCOUNT
    assert payload["aps"]["mutable-content"] == 1


def test_voip_payload_may_use_5120_bytes() -> None:
    sender = "s" * 10_000
    note = Notification(sender=sender, jingle=Jingle(sid="sid-1", media=("audio",)))
    request = apns(reg(voip_token="v"), note, apns_app(include_body=True))
    assert request.push_type == "voip"
    assert APNS_MAX_PAYLOAD < size(request.payload) <= APNS_VOIP_MAX_PAYLOAD
    assert request.payload["sender"].endswith("…")
    assert request.payload["sid"] == "sid-1"
    assert request.payload["account"] == ACCOUNT


def test_encrypted_voip_blob_between_4096_and_5120_is_kept() -> None:
    blob = "A" * 4600
    note = Notification(encrypted=blob, iv="aXY=", encrypted_type="voip")
    payload = apns(reg(voip_token="v"), note, apns_app()).payload
    assert payload == {"account": ACCOUNT, "encrypted": blob, "iv": "aXY="}


def test_account_encrypted_iv_are_never_shortened() -> None:
    blob = "B" * 3000
    note = Notification(title="t" * 5000, encrypted=blob, iv="aXY=", priority=Priority.HIGH)
    payload = apns(reg(Dialect.LOCAL), note, apns_app(include_body=True)).payload
    assert size(payload) <= APNS_MAX_PAYLOAD
    assert payload["encrypted"] == blob
    assert payload["iv"] == "aXY="
    assert payload["account"] == ACCOUNT
    assert payload["aps"]["alert"]["title"].endswith("…")


def test_emoji_body_is_cut_on_a_character_boundary() -> None:
    body = "😀" * 3000  # 12 000 UTF-8 bytes
    note = Notification(message_count=1, body=body)
    payload = apns(reg(), note, apns_app(include_body=True)).payload
    encoded = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    assert len(encoded) <= APNS_MAX_PAYLOAD
    encoded.decode("utf-8")  # strict: no half character anywhere
    shortened = payload["body"]
    assert shortened.endswith("…")
    assert set(shortened[:-1]) == {"😀"}
    assert len(shortened[:-1].encode()) > APNS_MAX_PAYLOAD - 300


def test_mixed_width_body_is_cut_on_a_character_boundary() -> None:
    body = "aé€😀" * 1000  # 1 + 2 + 3 + 4 bytes, every cut position occurs
    for extra in range(4):
        note = Notification(body=body + "z" * extra)
        payload = apns(reg(), note, apns_app(include_body=True)).payload
        assert size(payload) <= APNS_MAX_PAYLOAD
        assert (body + "z" * extra).startswith(payload["body"][:-1])


def test_oversized_encrypted_blob_becomes_a_plain_alert() -> None:
    note = Notification(message_count=1, encrypted="C" * 6000, iv="aXY=")
    request = apns(reg(), note, apns_app(include_body=True))
    assert request.payload == {"aps": MESSAGE_APS, "account": ACCOUNT}
    assert (request.push_type, request.priority) == ("alert", 10)
    data = fcm(reg(token="t"), note, fcm_app()).data
    assert data == {"account": ACCOUNT, "priority": "high"}


def test_fitted_payload_fits_as_aioapns_serialises_it() -> None:
    note = Notification(message_count=1, sender="bob@example.org", body="x" * 10_000)
    payload = apns(reg(), note, apns_app(include_body=True)).payload
    wire = json.dumps(payload, ensure_ascii=False).encode()  # aioapns/connection.py
    assert len(wire) <= APNS_MAX_PAYLOAD


# -- property -----------------------------------------------------------------------------------
texts = st.one_of(st.none(), st.text(max_size=3000),
                  st.text(alphabet=st.characters(codec="utf-8"), min_size=1000, max_size=6000))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=texts, sender=texts, title=texts,
       priority=st.sampled_from(list(Priority)),
       dialect=st.sampled_from([Dialect.TIGASE, Dialect.LOCAL, Dialect.MONAL]),
       include_body=st.booleans())
def test_apns_payload_always_fits_and_keeps_account(
        body: str | None, sender: str | None, title: str | None, priority: Priority,
        dialect: Dialect, include_body: bool) -> None:
    note = Notification(message_count=1, sender=sender, body=body, title=title,
                        priority=priority)
    payload = apns(reg(dialect), note, apns_app(include_body=include_body)).payload
    encoded = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert len(encoded) <= APNS_MAX_PAYLOAD
    assert payload["account"] == ACCOUNT


def test_fcm_page_is_a_visible_notification_on_the_configured_channel() -> None:
    from slixmpp_push.payloads import build_fcm

    app = AppConfig(id="fcm-xmpp-api", type="fcm", android_channel="pages", include_body=True)
    registration = Registration(node="n", account="a@x", domain="x", app=app.id, token="t",
                                dialect=Dialect.TIGASE)
    page = Notification(title="[AB12] DiskFull", body="db1 97%", priority=Priority.CRITICAL)
    request = build_fcm(registration, page, app, 1000.0)
    assert (request.title, request.body, request.channel_id) == ("[AB12] DiskFull", "db1 97%",
                                                                 "pages")
    assert request.priority == "high"
    quiet = AppConfig(id="fcm-xmpp-api", type="fcm", android_channel="pages")
    assert build_fcm(registration, page, quiet, 1000.0).body is None  # body only opted in


# -- a page published by a remote pager ------------------------------------------------------
PAGER = "pager@example.org"


def local_page(priority: Priority) -> Notification:
    """What the pager inside the app server hands to delivery (push_notifier._notification)."""
    return Notification(title="[AB12] Disk full on db1", body="/var at 99%", priority=priority,
                        message_count=1, sender=PAGER, collapse_key="page:AB12")


def published(notification: Notification) -> Publish:
    """The same page, published by a pager on a client account and parsed by the app server."""
    iq = ET.Element("{jabber:component:accept}iq", {"type": "set", "from": f"{PAGER}/bot"})
    iq.append(pubsub_element(RemoteTarget("push.example.org", "node1"), notification))
    return parse_publish(iq)


@pytest.mark.parametrize("priority", list(Priority))
@pytest.mark.parametrize("app", [apns_app(), apns_app(include_body=True), fcm_app(),
                                 fcm_app(include_body=True, android_channel="pages")],
                         ids=["apns", "apns-include-body", "fcm", "fcm-include-body"])
@pytest.mark.parametrize("dialect", [Dialect.TIGASE, Dialect.V1])
def test_a_trusted_pagers_publish_renders_as_the_pager_in_the_app_server(
        priority: Priority, app: AppConfig, dialect: Dialect) -> None:
    registration = reg(dialect, app=app.id)
    publish = published(local_page(priority))
    assert publish.page is not None
    publish.page.apply(publish.notification)  # what the app server does for a trusted one
    assert build_request(registration, publish.notification, app, NOW) == \
        build_request(registration, local_page(priority), app, NOW)


def test_a_critical_page_from_a_remote_pager_is_a_critical_alert_with_the_pages_key() -> None:
    publish = published(local_page(Priority.CRITICAL))
    assert publish.page is not None
    publish.page.apply(publish.notification)
    request = apns(reg(Dialect.V1), publish.notification, apns_app())
    aps = request.payload["aps"]
    assert aps["interruption-level"] == "critical"
    assert aps["alert"] == {"title": "[AB12] Disk full on db1"}  # no body: not opted in
    assert "/var at 99%" not in json.dumps(request.payload)
    assert request.collapse_id == hashlib.sha256(b"key\0page:AB12").hexdigest()[:32]


@pytest.mark.parametrize("priority", [Priority.CRITICAL, Priority.HIGH])
def test_the_same_page_form_from_a_server_is_an_ordinary_message(priority: Priority) -> None:
    """Not applied (the publisher is not trusted): the summary and the Tigase priority
    alone, as any publish; no title, no interruption level, no page key."""
    note = published(local_page(priority)).notification
    assert presentation(reg(), note) is Presentation.MESSAGE
    request = apns(reg(), note, apns_app())
    assert request.payload["aps"] == MESSAGE_APS
    assert request.collapse_id == thread()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30)


@given(_json_values)
def test_the_cheap_size_bound_is_never_below_the_json(value: Any) -> None:
    """_fit skips serialising a payload that its repr says is small: 6 bytes of
    JSON (``\\u0000``) per character of repr must bound every value, control
    characters, astral ones, quotes and infinities included."""
    assert len(json.dumps(value, ensure_ascii=False).encode()) <= 6 * payloads._cost(value)
