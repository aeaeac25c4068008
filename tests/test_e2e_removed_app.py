"""An app removed from the configuration, on real Prosody and ejabberd.

Siskin registered with an app the operator then took out of ``push.toml``; the app
server restarts without it. Start-up warns about the registration; the next message
to the offline account makes its server publish, answered ``cancel/item-not-found``
(the server drops the registration: ejabberd at once, Prosody after 16), and ours is
removed too. When the client enables push again it registers with an app that is
served, and its pushes arrive.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from e2e import APNS_APP, apns_app, enable, execute, running_appserver, send_chat
from fakes.fake_apns import FakeApns
from fakes.tls import TestCA
from notifier_support import pushes_for
from servers import Connections, disconnect, make_account

from slixmpp_push.devserver import DevServer

GONE = "gone:apns:1"


async def test_a_publish_for_a_removed_app_drops_the_registration(
        xmpp_server: DevServer, xmpp: Connections, fake_apns: FakeApns, test_ca: TestCA,
        apns_key: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    alice_account = await make_account(xmpp_server, "alice")
    bob_account = await make_account(xmpp_server, "bob")
    served = apns_app(fake_apns.endpoint, test_ca, apns_key)
    removed = dataclasses.replace(served, id=GONE, monal_modules=())
    store = tmp_path / "store.json"
    async with running_appserver(xmpp, xmpp_server, [served, removed], store) as server:
        phone = await xmpp.client(xmpp_server, alice_account, resource="phone")
        answer = await execute(phone, server.jid, "register-device",
                               {"provider": GONE, "device-token": "d0" * 32})
        node = answer["node"][0]
        await enable(phone, server.jid, node)
        await disconnect(phone)

    with caplog.at_level(logging.INFO, logger="slixmpp_push"):
        async with running_appserver(xmpp, xmpp_server, [served], store) as server:
            assert (f"registrations of apps not in the configuration: {GONE} (1); each is "
                    "removed at its next publish (answered item-not-found). Keep them: put "
                    "the app back under that provider id") in caplog.messages
            await send_chat(xmpp, xmpp_server, bob_account, alice_account, "are you there?")
            (outcome,) = await server.wait_published(1)
            assert (outcome.node, outcome.publisher, outcome.answer) == (
                node, xmpp_server.domain, "item-not-found")
            assert server.plugin.store.get(node) is None
            assert (f"dropping node {node} of {alice_account.jid}: its app '{GONE}' is not "
                    "configured any more") in caplog.messages
            # (ours only: slixmpp's own "connection_lost: (None,)" is captured too when an
            # earlier test left its logger at INFO)
            assert not [r.getMessage() for r in caplog.records
                        if r.name.startswith("slixmpp_push") and "None" in r.getMessage()]
            assert fake_apns.requests == []

            # The client turns push on again: it registers with an app that is served.
            phone = await xmpp.client(xmpp_server, alice_account, resource="phone")
            again = await execute(phone, server.jid, "register-device",
                                  {"provider": APNS_APP, "device-token": "d0" * 32})
            await enable(phone, server.jid, again["node"][0])
            await disconnect(phone)
            await send_chat(xmpp, xmpp_server, bob_account, alice_account, "back?")
            (push,) = await pushes_for(fake_apns, "d0" * 32, 1)
            assert push.body["account"] == alice_account.jid
