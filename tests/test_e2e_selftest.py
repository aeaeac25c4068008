"""``test-push`` end to end on real Prosody: alice registers two devices the way Siskin
does (one whose token the fake APNs answers 410), enables push for one, bob's message
makes Prosody publish once, then alice runs "Send me a test notification" from her
client and reads one line per device."""

from __future__ import annotations

import re
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from e2e import APNS_APP, COMMANDS, TOPIC, apns_app, enable, execute, running_appserver, send_chat
from fakes.fake_apns import FakeApns
from fakes.tls import TestCA
from servers import Connections, disconnect, make_account
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError

from slixmpp_push.appserver.selftest import SelfTestReport, clock
from slixmpp_push.devserver import ProsodyServer

DATA = "{jabber:x:data}"


async def run_test_push(client: ClientXMPP, appserver: str) -> tuple[list[str], str, str]:
    """Execute ``test-push`` as a client does (no form): its lines, note and note type."""
    iq = client.make_iq_set(ito=appserver)
    iq.append(ET.fromstring(f"<command xmlns='{COMMANDS}' node='test-push' action='execute'/>"))
    reply = await iq.send(timeout=30)
    command = reply.xml.find(f"{{{COMMANDS}}}command")
    assert command is not None and command.get("status") == "completed"
    note = command.find(f"{{{COMMANDS}}}note")
    assert note is not None and note.text
    field = command.find(f"{DATA}x/{DATA}field[@var='devices']")
    assert field is not None
    return ([v.text or "" for v in field.iter(f"{DATA}value")], note.text,
            note.get("type", ""))


async def test_test_push_reports_each_device(
        prosody_server: ProsodyServer, xmpp: Connections, fake_apns: FakeApns,
        test_ca: TestCA, apns_key: Path, tmp_path: Path) -> None:
    alice = await make_account(prosody_server, "alice")
    bob = await make_account(prosody_server, "bob")
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    app.include_body = True
    good, dead = "a7" * 32, "d7" * 32
    fake_apns.responses[dead] = (410, "Unregistered")
    async with running_appserver(xmpp, prosody_server, [app], tmp_path / "s.json") as server:
        reports: list[SelfTestReport] = []
        server.plugin.xmpp.add_event_handler("push_test_sent", reports.append)
        store = server.plugin.store
        phone = await xmpp.client(prosody_server, alice, resource="phone")
        nodes = {}
        for token in (good, dead):
            answer = await execute(phone, server.jid, "register-device", {
                "provider": APNS_APP, "device-token": token})
            nodes[token] = answer["node"][0]
        await enable(phone, server.jid, nodes[good])  # the other one never enabled
        await disconnect(phone)
        await send_chat(xmpp, prosody_server, bob, alice, "are you there?")
        (published,) = await server.wait_published(1)
        assert (published.node, published.answer) == (nodes[good], "result")
        await fake_apns.wait_for(1, timeout=10)
        published_at = server.plugin.last_publish[nodes[good]]
        assert nodes[dead] not in server.plugin.last_publish

        desk = await xmpp.client(prosody_server, alice, resource="desk")
        sent_at = time.time()
        lines, note, kind = await run_test_push(desk, server.jid)

        assert len(lines) == 2, lines
        good_line, dead_line = (next(line for line in lines if f"node {nodes[t]} " in line)
                                for t in (good, dead))
        assert re.fullmatch(
            rf"node {re.escape(nodes[good])} \({re.escape(APNS_APP)}, tigase dialect, token "
            rf"a7a7a7a7…\): delivered; last publish from your server: "
            rf"{re.escape(clock(published_at))} \(\d+ s ago\)\.", good_line), good_line
        assert dead_line == (
            f"node {nodes[dead]} ({APNS_APP}, tigase dialect, token d7d7d7d7…): dead token: "
            "registration removed (APNs said 410 Unregistered); no publish from your server "
            f"since the app server started ({clock(server.plugin.started_at)}): push may not "
            "be enabled at your server for this device.")
        assert note.splitlines()[0].startswith(
            f"Test notification sent by {server.jid} to 2 device(s) of {alice.jid} at ")
        assert note.splitlines()[1:] == lines
        assert kind == "warning"  # not every device got it
        assert good not in note and dead not in note

        # The dead one is gone, as after a publish; the good one stays.
        assert store.get(nodes[dead]) is None
        assert store.get(nodes[good]) is not None
        (report,) = reports
        assert sorted(d.outcome for d in report.devices) == ["dead_token", "delivered"]

        # What Apple would have received: a visible, non-urgent alert to both tokens.
        records = await fake_apns.wait_for(3, timeout=10)
        tests = {r.token: r for r in records[1:]}
        assert set(tests) == {good, dead}
        record = tests[good]
        headers = record.headers
        assert headers[":method"] == "POST"
        assert record.path == f"/3/device/{good}"
        assert headers["apns-topic"] == TOPIC
        assert headers["apns-push-type"] == "alert"
        assert headers["apns-priority"] == "5"
        assert abs(int(headers["apns-expiration"]) - (sent_at + app.ttl)) < 30
        assert headers["authorization"].lower().startswith("bearer ")
        assert record.body["aps"]["alert"] == {
            "title": "Test notification",
            "body": f"Sent by the push app server {server.jid} at your request: push "
                    "reaches this device."}  # the body: include_body is set
        assert record.body["aps"]["mutable-content"] == 1
        assert record.body["account"] == alice.jid

        # A second run right away is refused: one per 10 s.
        with pytest.raises(IqError) as refused:
            await run_test_push(desk, server.jid)
        assert refused.value.condition == "resource-constraint"
        assert refused.value.iq["error"]["type"] == "wait"
