"""`slixmpp-push serve` as its own process: a notification queued during a
provider outage survives a crash (SIGKILL) and is delivered after restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from e2e import APNS_APP, apns_app_toml, component_toml, enable, execute, send_chat
from fakes.fake_apns import FakeApns
from fakes.tls import TestCA
from servers import Connections, disconnect, make_account

from slixmpp_push.devserver import ProsodyServer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(folder: Path, server: ProsodyServer, fake: FakeApns, ca: TestCA,
                 key: Path, metrics_port: int) -> Path:
    config = folder / "push.toml"
    config.write_text(f"""
{component_toml(server, folder)}
[appserver]
store = "data/store.json"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[logging]
format = "json"

[delivery]
retry_base = 0.3
retry_max_delay = 1.0

{apns_app_toml(key, fake.endpoint, ca.ca_file)}
""")
    return config


async def get_health(port: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        writer.write(b"GET /health HTTP/1.1\r\n\r\n")
        data = await reader.read()
        writer.close()
        body: dict[str, Any] = json.loads(data.partition(b"\r\n\r\n")[2])
        if body["ready"] or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.1)


def start_serve(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "slixmpp_push.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


async def wait_for_appserver(phone: object, jid: str, token: str, timeout: float = 15.0,
                             ) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await execute(phone, jid, "register-device",  # type: ignore[arg-type]
                                 {"provider": APNS_APP, "device-token": token})
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_queued_notification_survives_a_crash(
        prosody_server: ProsodyServer, xmpp: Connections, fake_apns: FakeApns,
        test_ca: TestCA, apns_key: Path, tmp_path: Path) -> None:
    metrics_port = free_port()
    config = write_config(tmp_path, prosody_server, fake_apns, test_ca, apns_key, metrics_port)
    token = "9e9e" * 16
    alice = await make_account(prosody_server, "alice")
    bob = await make_account(prosody_server, "bob")
    serve = start_serve(config)
    try:
        phone = await xmpp.client(prosody_server, alice, resource="phone")
        answer = await wait_for_appserver(phone, prosody_server.component.jid, token)
        await enable(phone, prosody_server.component.jid, answer["node"][0])
        await disconnect(phone)

        fake_apns.set_outage(503, "ServiceUnavailable")
        await send_chat(xmpp, prosody_server, bob, alice, "queued while Apple is down")
        await fake_apns.wait_for(1, timeout=10)  # tried, failed: now queued durably
        await asyncio.sleep(0.2)
        serve.send_signal(signal.SIGKILL)
        serve.wait(5)
        store = tmp_path / "data" / "store.json"
        assert oct(os.stat(str(store) + ".journal").st_mode & 0o777) == "0o600"

        attempts = len(fake_apns.requests)
        fake_apns.end_outage()
        serve = start_serve(config)
        records = await fake_apns.wait_for(attempts + 1, timeout=15)
        assert records[-1].token == token
        assert records[-1].body["account"] == alice.jid
        health = await get_health(metrics_port)
        assert health["ready"] is True
        assert health["providers"][APNS_APP]["last"] == "delivered"
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            output, _ = serve.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            serve.kill()
            output, _ = serve.communicate()
    assert serve.returncode == 0, output.decode()
    text = output.decode()
    assert "resuming 1 pending notification" in text, text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(entry["message"].startswith("resuming") for entry in lines)
    assert token not in text  # tokens are never logged in full
