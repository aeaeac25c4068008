"""Siskin and Snikket iOS on a server with the Tigase push extensions: Prosody 13
with ``mod_cloud_notify_extensions`` (``_encrypted``, ``_priority_tag``, ``_filters``).

The phone enables with an AES-128-GCM key, as Siskin does when the account's
server advertises the extensions. The server then publishes the message
encrypted; the app server forwards the blob unchanged in a visible mutable
alert, and the phone's notification service extension (here: the test)
decrypts it into the message bob sent. A Jingle call proposal reaches the
second (PushKit) token as a VoIP push.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from devservers import Prosody13Server
from e2e import APNS_APP, TOPIC, apns_app, enable, execute, running_appserver, send_chat
from fakes.fake_apns import FakeApns
from fakes.tls import TestCA
from servers import Connections, disconnect, make_account

TIGASE_FILTERS = ("tigase:push:encrypt:0", "tigase:push:encrypt:aes-128-gcm",
                  "tigase:push:jingle:0", "tigase:push:priority:0")


def decrypt(key: bytes, record: Any) -> dict[str, Any]:
    """What Siskin's extension does with ``encrypted`` and ``iv``."""
    blob = base64.b64decode(record.body["encrypted"])
    iv = base64.b64decode(record.body["iv"])
    return dict(json.loads(AESGCM(key).decrypt(iv, blob, None)))


async def test_siskin_encrypted_message_and_call(
        prosody13_server: Prosody13Server, xmpp: Connections, fake_apns: FakeApns,
        test_ca: TestCA, apns_key: Path, tmp_path: Path) -> None:
    alice = await make_account(prosody13_server, "alice")
    bob = await make_account(prosody13_server, "bob")
    token, voip_token = "5151" * 16, "7171" * 16
    key = os.urandom(16)
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    async with running_appserver(xmpp, prosody13_server, [app], tmp_path / "s.json") as server:
        phone = await xmpp.client(prosody13_server, alice, resource="siskin")
        # Siskin offers encryption only when its server advertises the extensions.
        info = await phone["xep_0030"].get_info(jid=alice.jid, timeout=10)
        features = set(info["disco_info"]["features"])
        assert set(TIGASE_FILTERS) <= features, features
        answer = await execute(phone, server.jid, "register-device", {
            "provider": APNS_APP, "device-token": token, "device-second-token": voip_token})
        assert "tigase:push:encrypt:0" in answer["features"]
        await enable(phone, server.jid, answer["node"][0], extensions=(
            "<encrypt xmlns='tigase:push:encrypt:0' alg='aes-128-gcm'>"
            f"{base64.b64encode(key).decode()}</encrypt>"
            "<priority xmlns='tigase:push:priority:0'/>"
            "<jingle xmlns='tigase:push:jingle:0'/>"))
        await disconnect(phone)

        sender = await send_chat(xmpp, prosody13_server, bob, alice, "meet at five?")
        (record,) = await fake_apns.wait_for(1, timeout=10)
        assert record.token == token
        assert record.headers["apns-push-type"] == "alert"
        assert record.headers["apns-priority"] == "10"
        assert record.headers["apns-topic"] == TOPIC
        conversation = hashlib.sha256(f"{APNS_APP}\0{alice.jid}".encode()).hexdigest()[:32]
        assert record.headers["apns-collapse-id"] == conversation
        assert record.body["aps"] == {"alert": {"title": "New message"}, "mutable-content": 1,
                                      "sound": "default", "thread-id": conversation}
        assert set(record.body) == {"aps", "account", "encrypted", "iv"}
        assert record.body["account"] == alice.jid
        assert b"meet at five" not in record.raw_body
        assert decrypt(key, record) == {"unread": 1, "sender": bob.jid, "type": "chat",
                                        "message": "meet at five?"}

        # A call: Jingle Message Initiation, stored for the offline account.
        propose = sender.make_message(mto=alice.jid, mtype="chat")
        propose.append(ET.fromstring(
            "<propose xmlns='urn:xmpp:jingle-message:0' id='call-1'>"
            "<description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/></propose>"))
        propose.append(ET.fromstring("<store xmlns='urn:xmpp:hints'/>"))
        propose.send()
        records = await fake_apns.wait_for(2, timeout=10)
        call = next(r for r in records if r.token == voip_token)
        assert call.headers["apns-push-type"] == "voip"
        assert call.headers["apns-priority"] == "10"
        assert call.headers["apns-topic"] == f"{TOPIC}.voip"
        assert "apns-collapse-id" not in call.headers
        assert set(call.body) == {"account", "encrypted", "iv"}
        proposal = decrypt(key, call)
        assert proposal["type"] == "call" and proposal["sid"] == "call-1"
        assert proposal["media"] == ["audio"]
        assert proposal["sender"].startswith(f"{bob.jid}/")
