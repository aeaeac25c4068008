"""example_bot.py runs as written against a real Prosody."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from e2e import APNS_APP, execute
from servers import Connections, make_account
from slixmpp import ClientXMPP

from slixmpp_push.devserver import ProsodyServer

BOT = Path(__file__).resolve().parent.parent / "example_bot.py"


async def test_example_bot_registers_and_greets(prosody_server: ProsodyServer,
                                                xmpp: Connections, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(prosody_server.component.secret)
    env = {**os.environ, "PUSH_JID": prosody_server.component.jid,
           "PUSH_SECRET_FILE": str(secret), "PUSH_PORT": str(prosody_server.component_port),
           "PUSH_STORE": str(tmp_path / "store.json")}
    bot = subprocess.Popen([sys.executable, str(BOT)], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    try:
        alice = await make_account(prosody_server, "alice")
        phone: ClientXMPP = await xmpp.client(prosody_server, alice, resource="phone")
        greeting: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        phone.add_event_handler("message", lambda msg: greeting.done()
                                or greeting.set_result(msg["body"]))
        phone.send_presence()
        for _ in range(50):
            try:
                answer = await execute(phone, prosody_server.component.jid, "register-device",
                                       {"provider": APNS_APP, "device-token": "12ab" * 16})
                break
            except Exception:
                await asyncio.sleep(0.2)
        else:
            raise AssertionError("the example bot never answered")
        text = await asyncio.wait_for(greeting, 5)
        assert text == f"Push is on for your device {answer['node'][0]}."
    finally:
        bot.terminate()
        bot.wait(5)
