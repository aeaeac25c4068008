"""Helpers for notifier end-to-end tests: a bot = push_appserver + push_notifier
as the server's push.localhost component, and people with registered phones."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from e2e import APNS_APP, FAST_RETRIES, apns_app, enable, execute
from fakes.fake_apns import FakeApns
from fakes.tls import TestCA
from servers import Account, Connections
from slixmpp import ClientXMPP

import slixmpp_push  # noqa: F401
from slixmpp_push import Policy, Step, TinyDBStore
from slixmpp_push.devserver import DevServer


class Person:
    """An account with a registered phone, online by chat to read and answer pages."""

    def __init__(self, account: Account, client: ClientXMPP, token: str) -> None:
        self.account = account
        self.client = client
        self.token = token
        self.messages: asyncio.Queue[str] = asyncio.Queue()
        client.add_event_handler("message", lambda m: m["body"] and self.messages.put_nowait(
            str(m["body"])))

    @property
    def jid(self) -> str:
        return self.account.jid

    async def next_message(self, timeout: float = 10.0) -> str:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def say(self, to: str, text: str) -> str:
        self.client.send_message(mto=to, mbody=text, mtype="chat")
        return await self.next_message()


async def person(xmpp: Connections, server: DevServer, bot_jid: str, account: Account,
                 token: str) -> Person:
    """Connect ``account``'s phone, register it with the bot and enable push."""
    client = await xmpp.client(server, account, resource="phone",
                               plugins=("xep_0030", "xep_0184"))
    client.send_presence()
    answer = await execute(client, bot_jid, "register-device",
                           {"provider": APNS_APP, "device-token": token})
    await enable(client, bot_jid, answer["node"][0])
    return Person(account, client, token)


def two_step_policy(first: str, second: str, wait: float = 1.0, **extra: Any) -> Policy:
    return Policy(name="oncall", steps=(Step((first,), wait), Step((second,), wait)), **extra)


@contextlib.asynccontextmanager
async def running_bot(xmpp: Connections, server: DevServer, fake: FakeApns, ca: TestCA,
                      key: Path, store_path: Path, policies: Sequence[Policy],
                      **notifier: Any) -> AsyncIterator[Any]:
    app = apns_app(fake.endpoint, ca, key)
    app.include_body = True  # the operator opted in: pages show their text
    component = await xmpp.component(
        server, plugins=("xep_0030", "xep_0004", "xep_0050", "xep_0184", "push_appserver",
                         "push_notifier"),
        plugin_config={
            "push_appserver": {"apps": [app], "store": TinyDBStore(store_path),
                               "delivery": FAST_RETRIES},
            "push_notifier": {"policies": {p.name: p for p in policies}, **notifier},
        })
    notifier_plugin = component.plugin["push_notifier"]
    await notifier_plugin.start()
    try:
        yield notifier_plugin
    finally:
        await notifier_plugin.stop()
        await component.plugin["push_appserver"].stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(component.disconnect(wait=1.0), 3)


async def pushes_for(fake: FakeApns, token: str, count: int, timeout: float = 10.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in fake.requests if r.token == token]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(found)} push(es) to {token[:8]}, wanted {count}")
        await asyncio.sleep(0.02)
