"""OMEMO-encrypted pages end to end: the bot (a client account with
push_notifier and OmemoChat) pages a person whose own slixmpp-omemo client
decrypts the chat message; a real Prosody with PEP carries the keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import slixmpp_omemo as omemo
from omemo.storage import Just, Maybe, Nothing, Storage
from omemo.types import JSONType
from servers import Account, Connections, _connect, disconnect, make_account, own_server
from slixmpp import ClientXMPP, Message

import slixmpp_push  # noqa: F401  (registers push_notifier)
from slixmpp_push import Policy, Step, TinyDBStore
from slixmpp_push.devserver import ProsodyServer
from slixmpp_push.notifier.omemo import (
    DEFAULT_FALLBACK_MESSAGE,
    OMEMO_TABLE,
    OmemoChat,
    enable_omemo,
    normalize_fingerprint,
)
from slixmpp_push.store import base as store_base
from slixmpp_push.store import tinydb_store

OLDMEMO = "{eu.siacs.conversations.axolotl}encrypted"


@pytest.fixture(scope="module")
def pep_prosody() -> Iterator[ProsodyServer]:
    """A Prosody of our own with PEP (OMEMO keeps its keys there)."""
    yield from own_server(ProsodyServer(extra_modules=("pep",)))


@pytest.fixture
def omemo_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's ``omemo`` table (until store/base.py lists it in TABLES)."""
    if OMEMO_TABLE not in store_base.TABLES:
        tables = (*store_base.TABLES, OMEMO_TABLE)
        monkeypatch.setattr(store_base, "TABLES", tables)
        monkeypatch.setattr(tinydb_store, "TABLES", tables)


# -- the on-call person's phone: plain slixmpp-omemo, nothing of ours ---------------------


class DictStorage(Storage):
    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, JSONType] = {}

    async def _load(self, key: str) -> Maybe[JSONType]:
        return Just(self.data[key]) if key in self.data else Nothing()

    async def _store(self, key: str, value: JSONType) -> None:
        self.data[key] = value

    async def _delete(self, key: str) -> None:
        self.data.pop(key, None)


class PhoneOmemo(omemo.XEP_0384):
    name = "xep_0384"
    _storage = None

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = DictStorage()
        return self._storage

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _prompt_manual_trust(self, manually_trusted: Any, identifier: Any) -> None:
        pass


class Phone:
    """A person's OMEMO client: collects raw messages and their decryptions."""

    def __init__(self, client: ClientXMPP) -> None:
        self.client = client
        self.raw: asyncio.Queue[Message] = asyncio.Queue()
        client.add_event_handler("message", self._on_message)

    @property
    def omemo(self) -> Any:
        return self.client.plugin["xep_0384"]

    def _on_message(self, message: Message) -> None:
        if message["type"] in ("chat", "normal") and message["body"]:
            self.raw.put_nowait(message)

    async def next_message(self, timeout: float = 10.0) -> Message:
        return await asyncio.wait_for(self.raw.get(), timeout)


async def phone(xmpp: Connections, server: ProsodyServer, account: Account) -> Phone:
    from slixmpp.plugins.base import register_plugin

    register_plugin(PhoneOmemo)
    client = await xmpp.client(server, account, resource="phone",
                               plugins=("xep_0030", "xep_0060", "xep_0163", "xep_0384"))
    client.send_presence()  # online: chat messages to the bare JID reach this resource
    device = Phone(client)
    await device.omemo.get_session_manager()  # keys generated and published
    return device


# -- the bot: a client account with push_notifier and OmemoChat --------------------------


@pytest_asyncio.fixture
async def bot_factory(pep_prosody: ProsodyServer, omemo_table: None,
                      tmp_path: Path) -> AsyncIterator[Any]:
    started: list[tuple[ClientXMPP, TinyDBStore]] = []

    async def make(policy: Policy, **omemo_options: Any) -> tuple[ClientXMPP, Any, OmemoChat]:
        account = await make_account(pep_prosody, "pager")
        store = TinyDBStore(tmp_path / f"{account.jid}.json")
        await store.open()  # before OMEMO and the notifier both reach for it
        bot = ClientXMPP(f"{account.jid}/bot", account.password, plugin_config={
            "feature_mechanisms": {"unencrypted_plain": True, "unencrypted_scram": True}})
        bot.enable_direct_tls = bot.enable_starttls = False
        bot.enable_plaintext = True
        bot.register_plugin("xep_0030")
        chat = enable_omemo(bot, store, **omemo_options)
        bot.register_plugin("push_notifier", {"policies": {policy.name: policy},
                                              "chat_sender": chat, "store": store})
        await _connect(bot, pep_prosody.c2s_address, 10)
        bot.send_presence()
        started.append((bot, store))
        notifier = bot.plugin["push_notifier"]
        await notifier.start()
        await bot.plugin["xep_0384"].get_session_manager()
        return bot, notifier, chat

    try:
        yield make
    finally:
        for bot, store in started:
            await bot.plugin["push_notifier"].stop()
            await disconnect(bot)
            await store.close()


def oncall(person: str) -> Policy:
    return Policy(name="oncall", steps=(Step((person,), 60.0),))


async def test_omemo_page_is_decrypted_by_the_phone(
        pep_prosody: ProsodyServer, xmpp: Connections, bot_factory: Any,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    alice_account = await make_account(pep_prosody, "alice")
    alice = await phone(xmpp, pep_prosody, alice_account)
    bot, notifier, chat = await bot_factory(oncall(alice_account.jid))

    with caplog.at_level("DEBUG"):
        page, created = await notifier.page("db1-disk", "Disk full on db1",
                                            "97% used on /var", priority="critical")
        assert created
        expected = notifier._text(page.title, page.body, page.priority, page)
        raw = await alice.next_message()
        decrypted, device = await alice.omemo.decrypt_message(raw)
    # Not in any log of slixmpp, the OMEMO libraries or ours, even at DEBUG.
    for record in caplog.records:
        if record.name.split(".")[0] in ("slixmpp", "omemo", "slixmpp_omemo", "oldmemo") \
                or record.name == "slixmpp_push.notifier.omemo":
            assert "Disk full" not in record.getMessage(), record.name
    # On the wire: only OMEMO's fallback body, never the page text.
    wire = str(raw)
    assert raw["body"] == DEFAULT_FALLBACK_MESSAGE
    assert raw.xml.find(OLDMEMO) is not None
    for secret in ("Disk full", "97%", page.id + " "):
        assert secret not in wire
    assert alice.omemo.is_encrypted(raw) == {"eu.siacs.conversations.axolotl"}
    assert decrypted["body"] == expected
    assert device.bare_jid == bot.boundjid.bare
    # The bot's fingerprint is the one the phone sees.
    phone_view = (await alice.omemo.get_session_manager()).format_identity_key(
        device.identity_key)
    assert await chat.fingerprint() == normalize_fingerprint(" ".join(phone_view))

    # A second page uses the established session; and the phone can answer
    # encrypted: the bot decrypts it (event omemo_message).
    answers: asyncio.Queue[Message] = asyncio.Queue()
    bot.add_event_handler("omemo_message", answers.put_nowait)
    reply = alice.client.make_message(mto=bot.boundjid.bare, mbody=f"ack {page.id}", mtype="chat")
    encrypted, errors = await alice.omemo.encrypt_message(reply, bot.boundjid)
    assert encrypted is not None and not errors
    encrypted.send()
    answer = await asyncio.wait_for(answers.get(), 10)
    assert answer["body"] == f"ack {page.id}"
    assert answer["from"].bare == alice_account.jid

    # The bot's OMEMO state is in its store (journal), keyed by its account.
    store = notifier.engine.store
    keys = list(store.table(OMEMO_TABLE))
    assert keys and all(k.startswith(bot.boundjid.bare + "/") for k in keys)


async def test_encrypted_ack_gets_an_encrypted_answer(
        pep_prosody: ProsodyServer, xmpp: Connections, bot_factory: Any) -> None:
    """Conversations answers an OMEMO chat with OMEMO: "ack" must still work."""
    alice_account = await make_account(pep_prosody, "alice")
    alice = await phone(xmpp, pep_prosody, alice_account)
    bot, notifier, _chat = await bot_factory(oncall(alice_account.jid))
    page, _ = await notifier.page("db2-disk", "Disk full on db2")
    await alice.omemo.decrypt_message(await alice.next_message())
    ack = alice.client.make_message(mto=bot.boundjid.bare, mbody=f"ack {page.id}", mtype="chat")
    encrypted, _errors = await alice.omemo.encrypt_message(ack, bot.boundjid)
    encrypted.send()
    answer = await alice.next_message()
    assert alice.omemo.is_encrypted(answer)
    decrypted, _ = await alice.omemo.decrypt_message(answer)
    assert decrypted["body"].startswith(f"Acknowledged {page.id}")
    assert notifier.engine.find(page.id).acked_by == alice_account.jid


async def test_omemo_state_survives_a_restart(
        pep_prosody: ProsodyServer, xmpp: Connections, omemo_table: None,
        tmp_path: Path) -> None:
    """Same store, same identity: the phone keeps decrypting after the bot restarts."""
    alice_account = await make_account(pep_prosody, "alice")
    alice = await phone(xmpp, pep_prosody, alice_account)
    account = await make_account(pep_prosody, "pager")
    path = tmp_path / "bot.json"
    fingerprints = []
    for round_ in range(2):
        store = TinyDBStore(path)
        await store.open()
        bot = ClientXMPP(f"{account.jid}/bot", account.password, plugin_config={
            "feature_mechanisms": {"unencrypted_plain": True, "unencrypted_scram": True}})
        bot.enable_direct_tls = bot.enable_starttls = False
        bot.enable_plaintext = True
        bot.register_plugin("xep_0030")
        chat = enable_omemo(bot, store)
        await _connect(bot, pep_prosody.c2s_address, 10)
        try:
            fingerprints.append(await chat.fingerprint())
            assert await chat.send(alice_account.jid, f"round {round_}")
            raw = await alice.next_message()
            decrypted, _ = await alice.omemo.decrypt_message(raw)
            assert decrypted["body"] == f"round {round_}"
        finally:
            await disconnect(bot)
            await store.close()
    assert fingerprints[0] == fingerprints[1]


async def test_no_omemo_device_falls_back_only_when_configured(
        pep_prosody: ProsodyServer, xmpp: Connections, bot_factory: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    plain_account = await make_account(pep_prosody, "carol")  # a client without OMEMO
    carol = await xmpp.client(pep_prosody, plain_account, resource="desk")
    carol.send_presence()
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    carol.add_event_handler("message", lambda m: m["body"] and inbox.put_nowait(m))
    text = "PAGE X1 [HIGH] secret-ish text"

    _, _, strict = await bot_factory(oncall(plain_account.jid))
    with caplog.at_level("DEBUG"):
        assert await strict.send(plain_account.jid, text) is None
    assert "fallback_plaintext is off" in caplog.text
    assert "secret-ish" not in caplog.text
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(inbox.get(), 0.3)

    caplog.clear()
    _, _, lenient = await bot_factory(oncall(plain_account.jid), fallback_plaintext=True)
    with caplog.at_level("DEBUG"):
        assert await lenient.send(plain_account.jid, text)
    assert "fallback_plaintext is on" in caplog.text
    assert (await asyncio.wait_for(inbox.get(), 10))["body"] == text


async def test_without_btbv_only_listed_fingerprints_get_the_page(
        pep_prosody: ProsodyServer, xmpp: Connections, bot_factory: Any) -> None:
    alice_account = await make_account(pep_prosody, "alice")
    alice = await phone(xmpp, pep_prosody, alice_account)
    session_manager = await alice.omemo.get_session_manager()
    own, _ = await session_manager.get_own_device_information()
    fingerprint = " ".join(session_manager.format_identity_key(own.identity_key))

    _, _, unverified = await bot_factory(oncall(alice_account.jid), btbv=False)
    assert await unverified.send(alice_account.jid, "not for unverified devices") is None

    _, _, verified = await bot_factory(oncall(alice_account.jid), btbv=False,
                                       trusted={alice_account.jid: [fingerprint]})
    assert await verified.send(alice_account.jid, "verified") is not None
    decrypted, _ = await alice.omemo.decrypt_message(await alice.next_message())
    assert decrypted["body"] == "verified"


async def test_server_without_pep_logs_and_retries(omemo_table: None, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """No PEP on the bot's server: OMEMO cannot start; said once, each send says why."""
    async with ProsodyServer() as server:  # the default modules: no PEP
        account = await make_account(server, "pager")
        store = TinyDBStore(tmp_path / "bot.json")
        await store.open()
        bot = ClientXMPP(f"{account.jid}/bot", account.password, plugin_config={
            "feature_mechanisms": {"unencrypted_plain": True, "unencrypted_scram": True}})
        bot.enable_direct_tls = bot.enable_starttls = False
        bot.enable_plaintext = True
        chat = enable_omemo(bot, store)
        try:
            with caplog.at_level("WARNING"):
                await _connect(bot, server.c2s_address, 10)
                for _ in range(2):  # the second one tries to start OMEMO again
                    assert await chat.send(account.jid, "secret text") is None
                await asyncio.sleep(0.1)
        finally:
            await disconnect(bot)
            await store.close()
    ours = [r for r in caplog.records if r.name == "slixmpp_push.notifier.omemo"]
    assert any("does its server offer PEP" in r.getMessage() for r in ours)
    assert sum("chat message not sent" in r.getMessage() for r in ours) == 2
    assert "secret text" not in caplog.text
