"""example_bot.py runs as written against a real Prosody: it greets a new
device, pages it from an Alertmanager webhook and stops on ack."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from e2e import APNS_APP, enable, execute
from fakes.fake_apns import FakeApns
from fakes.tls import TestCA
from notifier_support import pushes_for
from servers import Connections, make_account
from slixmpp import ClientXMPP
from test_ingest import alertmanager

from slixmpp_push.devserver import ProsodyServer

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bot_config(tmp_path: Path, server: ProsodyServer, alice: str, bob: str, fake: FakeApns,
               ca: TestCA, key: Path, port: int) -> Path:
    text = (ROOT / "examples" / "monitoring-bot.toml").read_text()
    text = text.replace('jid = "push.example.org"', f'jid = "{server.component.jid}"')
    text = text.replace("port = 5347", f"port = {server.component_port}")
    text = text.replace("alice@example.org", alice).replace("bob@example.org", bob)
    text = text.replace("wait = 300", "wait = 1").replace("wait = 600", "wait = 1")
    text = text.replace("127.0.0.1:9095", f"127.0.0.1:{port}")
    text = re.sub(r'\[apps\."tigase:messenger:apns:1"\]\ntype = "console"',
                  f'[apps."{APNS_APP}"]\ntype = "apns"\ntopic = "org.example.chat"\n'
                  f'key_file = "{key}"\nkey_id = "TESTKEY123"\nteam_id = "TEAM123456"\n'
                  f'endpoint = "{fake.endpoint}"\nca_file = "{ca.ca_file}"', text)
    (tmp_path / "component.secret").write_text(server.component.secret)
    (tmp_path / "ingest.token").write_text("hook-token")
    path = tmp_path / "bot.toml"
    path.write_text(text)
    return path


async def test_example_bot_greets_pages_and_stops_on_ack(
        prosody_server: ProsodyServer, xmpp: Connections, fake_apns: FakeApns,
        test_ca: TestCA, apns_key: Path, tmp_path: Path) -> None:
    alice = await make_account(prosody_server, "alice")
    bob = await make_account(prosody_server, "bob")
    port = free_port()
    config = bot_config(tmp_path, prosody_server, alice.jid, bob.jid, fake_apns, test_ca,
                        apns_key, port)
    bot = subprocess.Popen([sys.executable, str(ROOT / "example_bot.py"), str(config)],
                           cwd=tmp_path, env=os.environ.copy(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    try:
        phone: ClientXMPP = await xmpp.client(prosody_server, alice, resource="phone")
        inbox: asyncio.Queue[str] = asyncio.Queue()
        phone.add_event_handler("message", lambda m: m["body"] and inbox.put_nowait(m["body"]))
        phone.send_presence()
        for _ in range(50):
            try:
                answer = await execute(phone, prosody_server.component.jid, "register-device",
                                       {"provider": APNS_APP, "device-token": "12ab" * 16})
                break
            except Exception:
                await asyncio.sleep(0.2)
        else:
            bot.terminate()
            raise AssertionError("the example bot never answered:\n"
                                 + bot.communicate(timeout=5)[0].decode())
        node = answer["node"][0]
        await enable(phone, prosody_server.component.jid, node)
        greeting = await asyncio.wait_for(inbox.get(), 5)
        assert greeting == f"Push is on for your device {node}."

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps(alertmanager()).encode()
        writer.write(b"POST /alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nAuthorization: Bearer hook-token\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        response = await asyncio.wait_for(reader.read(), 5)
        page_id = json.loads(response.partition(b"\r\n\r\n")[2])["page"]
        (push,) = await pushes_for(fake_apns, "12ab" * 16, 1)
        assert push.body["aps"]["interruption-level"] == "critical"
        text = await asyncio.wait_for(inbox.get(), 5)
        assert text.startswith(f"PAGE {page_id}")
        phone.send_message(mto=prosody_server.component.jid, mbody="ack", mtype="chat")
        assert (await asyncio.wait_for(inbox.get(), 5)).startswith(f"Acknowledged {page_id}")
        pushes = len(fake_apns.requests)
        await asyncio.sleep(2.5)  # two escalation waits: nobody else is paged
        assert len(fake_apns.requests) == pushes
    finally:
        bot.terminate()
        output, _ = bot.communicate(timeout=5)
    assert f"{page_id} acked by {alice.jid}" in output.decode()


def test_demo_runs_end_to_end() -> None:
    """The README's demo command: the push, the page, and the ack stopping it."""
    result = subprocess.run([sys.executable, "-m", "slixmpp_push.cli", "demo"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"push_type": "alert"' in result.stdout
    assert '"mutable-content": 1' in result.stdout
    assert '"interruption-level": "critical"' in result.stdout
    assert "Acknowledged" in result.stdout and "Demo complete" in result.stdout
