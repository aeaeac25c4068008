"""Pages posted to a group chat: the bot (client account or component) joins
a MUC room on a real Prosody and posts each page text there once, however
many people the step pages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from servers import Connections, _connect, disconnect, make_account, own_server
from slixmpp import ClientXMPP, ComponentXMPP, Message

import slixmpp_push  # noqa: F401  (registers push_notifier)
from slixmpp_push import MemoryStore, Policy, Step
from slixmpp_push.devserver import ProsodyServer
from slixmpp_push.notifier.muc import MucChat

MUC_SERVICE = "conference.localhost"


@pytest.fixture(scope="module")
def muc_prosody() -> Iterator[ProsodyServer]:
    """A Prosody of our own with a MUC service."""
    yield from own_server(ProsodyServer(extra_config=(f'Component "{MUC_SERVICE}" "muc"',)))


class Inbox:
    def __init__(self, client: ClientXMPP, kind: str) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.kind = kind
        client.add_event_handler("message", self._on_message)

    def _on_message(self, message: Message) -> None:
        if message["type"] == self.kind and message["body"]:
            self.queue.put_nowait(message)

    async def next(self, timeout: float = 5.0) -> Message:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def nothing_more(self, wait: float = 0.5) -> None:
        await asyncio.sleep(wait)
        assert self.queue.empty(), [str(m["body"]) for m in self.queue._queue]  # type: ignore


@pytest_asyncio.fixture
async def bot_factory(muc_prosody: ProsodyServer) -> AsyncIterator[Any]:
    started: list[Any] = []

    async def make(mode: str, room: str, policy: Policy) -> tuple[Any, Any, MucChat]:
        config = {"push_notifier": {"policies": {policy.name: policy}, "store": MemoryStore()}}
        bot: ClientXMPP | ComponentXMPP
        if mode == "client":
            account = await make_account(muc_prosody, "pager")
            bot = ClientXMPP(f"{account.jid}/bot", account.password, plugin_config={
                "feature_mechanisms": {"unencrypted_plain": True, "unencrypted_scram": True}})
            bot.enable_direct_tls = bot.enable_starttls = False
            bot.enable_plaintext = True
            address = muc_prosody.c2s_address
        else:
            spec = muc_prosody.component
            bot = ComponentXMPP(spec.jid, spec.secret, muc_prosody.host,
                                muc_prosody.component_port)
            address = muc_prosody.component_address
        bot.register_plugin("xep_0030")
        chat = MucChat(bot, room, nick="pager")
        config["push_notifier"]["chat_sender"] = chat
        bot.register_plugin("push_notifier", config["push_notifier"])
        await _connect(bot, address, 10)
        started.append(bot)
        notifier = bot.plugin["push_notifier"]
        await notifier.start()
        await asyncio.wait_for(chat.joined.wait(), 5)
        return bot, notifier, chat

    try:
        yield make
    finally:
        for bot in started:
            await bot.plugin["push_notifier"].stop()
            await disconnect(bot)


@pytest.mark.parametrize("mode", ["client", "component"])
async def test_page_appears_once_in_the_room(muc_prosody: ProsodyServer, xmpp: Connections,
                                             bot_factory: Any, mode: str) -> None:
    room = f"oncall-{mode}@{MUC_SERVICE}"
    alice_account = await make_account(muc_prosody, "alice")
    bob_account = await make_account(muc_prosody, "bob")
    carol_account = await make_account(muc_prosody, "carol")
    direct = {}
    for account in (alice_account, bob_account):
        client = await xmpp.client(muc_prosody, account, resource="phone")
        direct[account.jid] = Inbox(client, "chat")
        client.send_presence()
    policy = Policy(name="team", steps=(Step((alice_account.jid, bob_account.jid), 60.0),))
    # The bot creates the room (an instant room), then carol joins to watch it.
    _bot, notifier, _chat = await bot_factory(mode, room, policy)
    carol = await xmpp.client(muc_prosody, carol_account, resource="desk",
                              plugins=("xep_0030", "xep_0045"))
    await carol.plugin["xep_0045"].join_muc_wait(room, "carol", maxstanzas=0, timeout=5)
    watched = Inbox(carol, "groupchat")

    page, created = await notifier.page("web-5xx", "5xx on web", "12% of requests",
                                        priority="high")
    assert created
    expected = notifier._text(page.title, page.body, page.priority, page)
    for inbox in direct.values():  # each person still gets the direct message
        assert (await inbox.next())["body"] == expected
    posted = await watched.next()
    assert posted["body"] == expected
    assert posted["from"].resource == "pager"
    await watched.nothing_more()  # two people paged, one post

    # The resolve notice goes to both (but alice, who resolved): once in the room.
    await notifier.resolve(page.id, by=alice_account.jid)
    assert (await direct[bob_account.jid].next())["body"].startswith(f"PAGE {page.id} resolved")
    assert (await watched.next())["body"].startswith(f"PAGE {page.id} resolved")
    await watched.nothing_more(0.3)


async def test_same_text_is_posted_again_after_the_window(
        muc_prosody: ProsodyServer, xmpp: Connections, bot_factory: Any) -> None:
    room = f"window@{MUC_SERVICE}"
    alice_account = await make_account(muc_prosody, "alice")
    policy = Policy(name="team", steps=(Step((alice_account.jid,), 60.0),))
    _bot, _notifier, chat = await bot_factory("client", room, policy)
    chat.window = 0.2
    carol_account = await make_account(muc_prosody, "carol")
    carol = await xmpp.client(muc_prosody, carol_account, resource="desk",
                              plugins=("xep_0030", "xep_0045"))
    await carol.plugin["xep_0045"].join_muc_wait(room, "carol", maxstanzas=0, timeout=5)
    watched = Inbox(carol, "groupchat")
    await asyncio.gather(chat.send(alice_account.jid, "disk full"),
                         chat.send(alice_account.jid, "disk full"),
                         chat.send(alice_account.jid, "cpu hot"))
    bodies = sorted([str((await watched.next())["body"]) for _ in range(2)])
    assert bodies == ["cpu hot", "disk full"]
    await watched.nothing_more(0.3)  # past the window
    await chat.send(alice_account.jid, "disk full")
    assert (await watched.next())["body"] == "disk full"
