"""The app server as a client account (xmpp.mode = "client") instead of a component."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from e2e import APNS_APP, apns_app, enable, execute, send_chat
from fakes.fake_apns import FakeApns
from fakes.tls import TestCA
from servers import Connections, disconnect, make_account

from slixmpp_push.config import Config, DeliveryPolicy, XmppConfig
from slixmpp_push.devserver import ProsodyServer
from slixmpp_push.server import build_xmpp


async def test_client_account_app_server(prosody_server: ProsodyServer, xmpp: Connections,
                                         fake_apns: FakeApns, test_ca: TestCA,
                                         apns_key: Path, tmp_path: Path) -> None:
    bot = await make_account(prosody_server, "pushbot")
    alice = await make_account(prosody_server, "alice")
    bob = await make_account(prosody_server, "bob")
    config = Config(
        xmpp=XmppConfig(mode="client", jid=f"{bot.jid}/appserver", host=prosody_server.host,
                        port=prosody_server.c2s_address[1], secret=bot.password),
        apps=[apns_app(fake_apns.endpoint, test_ca, apns_key)], store=str(tmp_path / "s.json"),
        allowed_domains=None, remote_disable=True, delivery=DeliveryPolicy(), log_level="INFO")
    appserver: Any = build_xmpp(config)
    # The dev server has no TLS: allow the plain stream for this test only.
    appserver.enable_starttls = appserver.enable_direct_tls = False
    appserver.enable_plaintext = True
    appserver.plugin["feature_mechanisms"].unencrypted_plain = True
    appserver.plugin["feature_mechanisms"].unencrypted_scram = True
    started = asyncio.get_running_loop().create_future()
    appserver.add_event_handler("session_start", lambda _: started.done()
                                or started.set_result(None))
    appserver.connect(*prosody_server.c2s_address)
    await asyncio.wait_for(started, 10)
    plugin = appserver.plugin["push_appserver"]
    try:
        await plugin.start()
        full_jid = str(appserver.boundjid.full)
        phone = await xmpp.client(prosody_server, alice, resource="phone")
        answer = await execute(phone, full_jid, "register-device", {
            "provider": APNS_APP, "device-token": "c11e" * 16})
        await enable(phone, full_jid, answer["node"][0])
        await disconnect(phone)
        await send_chat(xmpp, prosody_server, bob, alice)
        (record,) = await fake_apns.wait_for(1, timeout=10)
        assert record.token == "c11e" * 16
        assert record.body["account"] == alice.jid
    finally:
        await plugin.stop()
        await disconnect(appserver)
