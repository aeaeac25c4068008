"""Administrator notices end to end on real Prosody: accounts register devices the
way Siskin does (some stay online, some go offline), a non-admin's
``send-notification`` is refused, an admin's reaches every targeted device at
the fake APNs and no other."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from e2e import APNS_APP, COMMANDS, apns_app, execute, running_appserver
from fakes.fake_apns import FakeApns
from fakes.tls import TestCA
from servers import Connections, disconnect, make_account
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError

from slixmpp_push.devserver import ProsodyServer


async def register_device(client: ClientXMPP, appserver: str, token: str) -> str:
    answer = await execute(client, appserver, "register-device", {
        "provider": APNS_APP, "device-token": token})
    return answer["node"][0]


async def send_notification(client: ClientXMPP, appserver: str,
                            fields: dict[str, list[str]]) -> dict[str, str]:
    """``send-notification`` as raw XML (a jid-multi field has one value per account)."""
    form = "".join(f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in values)
                   + "</field>" for var, values in fields.items())
    iq = client.make_iq_set(ito=appserver)
    iq.append(ET.fromstring(
        f"<command xmlns='{COMMANDS}' node='send-notification' action='execute'>"
        f"<x xmlns='jabber:x:data' type='submit'>{form}</x></command>"))
    reply = await iq.send(timeout=10)
    command = reply.xml.find(f"{{{COMMANDS}}}command")
    assert command is not None and command.get("status") == "completed"
    return {field.get("var", ""): field.findtext("{jabber:x:data}value", "")
            for field in command.iter("{jabber:x:data}field")}


async def test_a_non_admin_is_refused_and_an_admins_notice_reaches_every_targeted_device(
        prosody_server: ProsodyServer, xmpp: Connections, fake_apns: FakeApns,
        test_ca: TestCA, apns_key: Path, tmp_path: Path) -> None:
    admin = await make_account(prosody_server, "admin")
    alice = await make_account(prosody_server, "alice")
    bob = await make_account(prosody_server, "bob")
    carol = await make_account(prosody_server, "carol")
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    app.include_body = True
    alice_token, bob_phone, bob_dead, carol_token = ("a1" * 32, "b1" * 32, "b2" * 32,
                                                     "c1" * 32)
    fake_apns.responses[bob_dead] = (410, "Unregistered")
    async with running_appserver(xmpp, prosody_server, [app], tmp_path / "s.json",
                                 plugin_config={"admins": (admin.jid,)}) as server:
        store = server.plugin.store
        # Alice stays online; Bob and Carol register, then go offline.
        alice_phone = await xmpp.client(prosody_server, alice, resource="phone")
        alice_phone.send_presence()
        await register_device(alice_phone, server.jid, alice_token)
        bob_client = await xmpp.client(prosody_server, bob, resource="phone")
        await register_device(bob_client, server.jid, bob_phone)
        dead_node = await register_device(bob_client, server.jid, bob_dead)
        await disconnect(bob_client)
        carol_client = await xmpp.client(prosody_server, carol, resource="phone")
        await register_device(carol_client, server.jid, carol_token)
        await disconnect(carol_client)
        assert len(store) == 4

        notice = {"accounts": [alice.jid, bob.jid], "title": ["Maintenance tonight"],
                  "body": ["The server restarts at 22:00"], "priority": ["high"]}
        with pytest.raises(IqError) as refused:
            await send_notification(alice_phone, server.jid, notice)
        assert refused.value.condition == "forbidden"
        assert refused.value.iq["error"]["type"] == "auth"
        assert fake_apns.requests == []

        desk = await xmpp.client(prosody_server, admin, resource="desk")
        summary = await send_notification(desk, server.jid, notice)
        assert summary == {"total": "3", "delivered": "2", "queued": "0", "failed": "0",
                           "dead-tokens-removed": "1"}
        records = await fake_apns.wait_for(3, timeout=10)
        assert sorted(r.token for r in records) == sorted([alice_token, bob_phone, bob_dead])
        for record in records:
            account = alice.jid if record.token == alice_token else bob.jid
            assert record.headers["apns-push-type"] == "alert"
            assert record.headers["apns-priority"] == "10"
            assert record.body["aps"]["alert"] == {"title": "Maintenance tonight",
                                                   "body": "The server restarts at 22:00"}
            assert record.body["account"] == account
        assert carol_token not in {r.token for r in fake_apns.requests}
        assert store.get(dead_node) is None
        assert sorted(r.token for r in store.registrations()) == sorted(
            [alice_token, bob_phone, carol_token])
