"""push_registrar end to end: real Prosody 0.12 (mod_cloud_notify) and ejabberd
23.01 (mod_push), our app server as their push.localhost component, fake APNs
and FCM. The device side is our own registrar this time; each test checks
what reaches the fake provider."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from e2e import APNS_APP, MONAL_MODULE, apns_app, fcm_app, running_appserver, send_chat
from fakes.fake_apns import FakeApns
from fakes.fake_fcm import FakeFcm
from fakes.tls import TestCA
from servers import Account, Connections, disconnect, make_account
from slixmpp import ClientXMPP
from tokens import fcm_token

import slixmpp_push  # noqa: F401  (registers the plugins)
from slixmpp_push import Store, TinyDBStore
from slixmpp_push.devserver import DevServer
from slixmpp_push.registrar import ClientRegistration, PushRegistrar

REGISTRAR_PLUGINS = ("xep_0030", "xep_0004", "xep_0050", "push_registrar")


@dataclass(frozen=True)
class Case:
    """How a dialect registers in these tests and where its pushes land."""

    dialect: str
    provider: str = ""
    push_module: str | None = None
    fcm: bool = False

    def token(self, n: int = 1) -> str:
        return fcm_token(f"{self.dialect} {n}") if self.fcm else f"{n:04x}" * 16


CASES = {
    "tigase": Case("tigase", provider=APNS_APP),
    "p2-fcm": Case("p2-fcm", fcm=True),
    "p2-apns": Case("p2-apns"),
    "v1-apns": Case("v1-apns"),
    "v1-fcm": Case("v1-fcm", fcm=True),
    "stateless": Case("stateless", push_module=MONAL_MODULE),
}


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """The device's store, shared by its successive connections (as after a restart)."""
    device_store = TinyDBStore(tmp_path / "registrar.json")
    await device_store.open()
    yield device_store
    await device_store.close()


async def device(xmpp: Connections, server: DevServer, account: Account, store: Store,
                 resource: str = "phone", **config: Any) -> tuple[ClientXMPP, PushRegistrar]:
    """A client with push_registrar, after its session's re-enabling is done."""
    client = await xmpp.client(server, account, resource=resource, plugins=REGISTRAR_PLUGINS,
                               plugin_config={"push_registrar": {"store": store, **config}})
    registrar: PushRegistrar = client.plugin["push_registrar"]
    await asyncio.wait_for(registrar.resumed(), 15)
    return client, registrar


async def register(registrar: PushRegistrar, case: Case, app_server: str | None,
                   token: str, **options: Any) -> ClientRegistration:
    return await registrar.register(token, dialect=case.dialect, app_server=app_server,
                                    provider=case.provider, push_module=case.push_module,
                                    **options)


async def pushes(fake: FakeApns | FakeFcm, count: int, settle: float = 0.8) -> list[Any]:
    """Exactly ``count`` provider requests: wait for them, then make sure no more come."""
    records = await fake.wait_for(count, timeout=10) if count else []
    await asyncio.sleep(settle)
    assert len(fake.requests) == count, f"{len(fake.requests)} pushes, wanted {count}"
    return list(records)


def token_of(record: Any, case: Case) -> str:
    return record.body["message"]["token"] if case.fcm else record.token


@pytest.mark.parametrize("dialect", list(CASES))
async def test_register_enable_and_push(xmpp_server: DevServer, xmpp: Connections,
                                        fake_apns: FakeApns, fake_fcm: FakeFcm,
                                        test_ca: TestCA, apns_key: Path, tmp_path: Path,
                                        store: Store, dialect: str) -> None:
    case = CASES[dialect]
    alice = await make_account(xmpp_server, "alice")
    bob = await make_account(xmpp_server, "bob")
    apps = [apns_app(fake_apns.endpoint, test_ca, apns_key), fcm_app(fake_fcm, tmp_path)]
    async with running_appserver(xmpp, xmpp_server, apps, tmp_path / "s.json") as server:
        phone, registrar = await device(xmpp, xmpp_server, alice, store)
        began = time.perf_counter()
        # Discovery for the dialects that name a provider, the JID for the others.
        app_server = None if case.provider else server.jid
        registration = await register(registrar, case, app_server, case.token())
        took = time.perf_counter() - began
        print(f"\n{type(xmpp_server).__name__} {dialect}: register + enable {took * 1000:.1f} ms")
        assert registration.app_server == server.jid
        assert registration.enabled_at is not None
        assert registrar.session_enables == 1
        await disconnect(phone)
        await send_chat(xmpp, xmpp_server, bob, alice, "secret words")
        (record,) = await pushes(fake_fcm if case.fcm else fake_apns, 1)
        assert token_of(record, case) == case.token()
        (outcome,) = await server.wait_published(1)
        assert (outcome.node, outcome.answer) == (registration.node, "result")


@pytest.mark.parametrize("dialect", ["tigase", "p2-fcm", "stateless"])
async def test_token_change_reregisters_on_next_session(
        xmpp_server: DevServer, xmpp: Connections, fake_apns: FakeApns, fake_fcm: FakeFcm,
        test_ca: TestCA, apns_key: Path, tmp_path: Path, store: Store, dialect: str) -> None:
    """The device comes back with a new token: one re-registration, one push, to the new token."""
    case = CASES[dialect]
    alice = await make_account(xmpp_server, "alice")
    bob = await make_account(xmpp_server, "bob")
    apps = [apns_app(fake_apns.endpoint, test_ca, apns_key), fcm_app(fake_fcm, tmp_path)]
    async with running_appserver(xmpp, xmpp_server, apps, tmp_path / "s.json") as server:
        phone, registrar = await device(xmpp, xmpp_server, alice, store)
        first = await register(registrar, case, server.jid, case.token(1))
        await disconnect(phone)
        phone, registrar = await device(xmpp, xmpp_server, alice, store, token=case.token(2))
        (second,) = await registrar.resumed()
        assert second.token == case.token(2)
        assert registrar.session_enables == 1
        assert registrar.registrations() == [second]
        if dialect == "p2-fcm":  # same android-id: the app server keeps node and secret
            assert (second.node, second.secret) == (first.node, first.secret)
        else:
            assert second.node != first.node
        if dialect == "tigase":  # the old token was unregistered at the app server
            assert [r.token for r in server.plugin.store.registrations()] == [case.token(2)]
        await disconnect(phone)
        await send_chat(xmpp, xmpp_server, bob, alice)
        (record,) = await pushes(fake_fcm if case.fcm else fake_apns, 1)
        assert token_of(record, case) == case.token(2)
        assert [p.node for p in server.published] == [second.node]


async def test_update_token_while_connected(xmpp_server: DevServer, xmpp: Connections,
                                            fake_apns: FakeApns, test_ca: TestCA,
                                            apns_key: Path, tmp_path: Path,
                                            store: Store) -> None:
    case = CASES["v1-apns"]
    alice = await make_account(xmpp_server, "alice")
    bob = await make_account(xmpp_server, "bob")
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    async with running_appserver(xmpp, xmpp_server, [app], tmp_path / "s.json") as server:
        phone, registrar = await device(xmpp, xmpp_server, alice, store)
        first = await register(registrar, case, server.jid, case.token(1))
        (second,) = await registrar.update_token(case.token(2))
        assert (second.node, second.device_id) == (first.node, first.device_id)
        assert await registrar.update_token(case.token(2)) == []  # unchanged: nothing to do
        await disconnect(phone)
        await send_chat(xmpp, xmpp_server, bob, alice)
        (record,) = await pushes(fake_apns, 1)
        assert record.token == case.token(2)


@pytest.mark.parametrize("dialect", list(CASES))
async def test_unregister_stops_pushes(xmpp_server: DevServer, xmpp: Connections,
                                       fake_apns: FakeApns, fake_fcm: FakeFcm,
                                       test_ca: TestCA, apns_key: Path, tmp_path: Path,
                                       store: Store, dialect: str) -> None:
    case = CASES[dialect]
    alice = await make_account(xmpp_server, "alice")
    bob = await make_account(xmpp_server, "bob")
    apps = [apns_app(fake_apns.endpoint, test_ca, apns_key), fcm_app(fake_fcm, tmp_path)]
    async with running_appserver(xmpp, xmpp_server, apps, tmp_path / "s.json") as server:
        phone, registrar = await device(xmpp, xmpp_server, alice, store)
        registration = await register(registrar, case, server.jid, case.token())
        if dialect != "stateless":
            assert server.plugin.store.get(registration.node) is not None
        await registrar.unregister(registration)
        assert registrar.registrations() == []
        assert len(server.plugin.store) == 0  # the app server side is gone too
        await disconnect(phone)
        await send_chat(xmpp, xmpp_server, bob, alice)
        await asyncio.sleep(0.5)
        assert server.published == []  # the own server side: nothing published
        await pushes(fake_fcm if case.fcm else fake_apns, 0, settle=0)


async def test_remote_disable_is_honoured(xmpp_server: DevServer, xmpp: Connections,
                                          fake_apns: FakeApns, test_ca: TestCA,
                                          apns_key: Path, tmp_path: Path,
                                          store: Store) -> None:
    """A dead token: the app server drops the node and tells the account; the device
    forgets the registration and disables it at its server.

    The notice is a headline, which servers never store offline: it reaches a
    device that is online or, as here, hibernated (XEP-0198) and resuming.
    """
    case = CASES["tigase"]
    alice = await make_account(xmpp_server, "alice")
    bob = await make_account(xmpp_server, "bob")
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    async with running_appserver(xmpp, xmpp_server, [app], tmp_path / "s.json") as server:
        phone = await xmpp.client(xmpp_server, alice, resource="phone",
                                  plugins=(*REGISTRAR_PLUGINS, "xep_0198"),
                                  plugin_config={"push_registrar": {"store": store}})
        assert phone.plugin["xep_0198"].sm_id, "stream management was not resumable"
        registrar: PushRegistrar = phone.plugin["push_registrar"]
        disabled: asyncio.Future[ClientRegistration] = asyncio.get_running_loop().create_future()
        phone.add_event_handler("push_remote_disabled", disabled.set_result)
        registration = await register(registrar, case, server.jid, case.token())
        phone.send_presence()
        await asyncio.sleep(0.2)
        # The phone's connection dies; the server keeps its session for resumption.
        phone.auto_reconnect = False
        phone.transport.abort()  # type: ignore[union-attr]
        await asyncio.sleep(0.3)
        fake_apns.responses[case.token()] = (410, "Unregistered")
        await send_chat(xmpp, xmpp_server, bob, alice)
        first = (await server.wait_published(1))[0]
        assert first.answer == "item-not-found"  # and the remote disable was sent
        await asyncio.sleep(0.3)
        phone.connect(*xmpp_server.c2s_address)  # resumes: queued stanzas arrive
        try:
            dropped = await asyncio.wait_for(disabled, 10)
        except TimeoutError:
            raise AssertionError("no remote disable reached the resumed device") from None
        assert dropped.node == registration.node
        assert registrar.registrations() == []
        assert registrar.session_enables == 1  # resumed, not a new session: no re-enable
        await disconnect(phone)
        seen = len(server.published)
        await send_chat(xmpp, xmpp_server, bob, alice, "after the remote disable")
        await asyncio.sleep(1.0)
        assert len(server.published) == seen, "the server still publishes to the node"
        assert len(fake_apns.requests) == 1


async def test_reconnect_reenables_once(xmpp_server: DevServer, xmpp: Connections,
                                        fake_apns: FakeApns, test_ca: TestCA,
                                        apns_key: Path, tmp_path: Path,
                                        store: Store) -> None:
    case = CASES["p2-apns"]
    alice = await make_account(xmpp_server, "alice")
    bob = await make_account(xmpp_server, "bob")
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    async with running_appserver(xmpp, xmpp_server, [app], tmp_path / "s.json") as server:
        phone, registrar = await device(xmpp, xmpp_server, alice, store)
        registration = await register(registrar, case, server.jid, case.token())
        assert registrar.enables == 1
        await disconnect(phone)
        # A new process (new client, same store): one enable.
        phone, registrar = await device(xmpp, xmpp_server, alice, store)
        assert [r.node for r in await registrar.resumed()] == [registration.node]
        assert registrar.enables == registrar.session_enables == 1
        # The same client reconnecting: one more, not two.
        await disconnect(phone)
        phone.connect(*xmpp_server.c2s_address)
        await phone.wait_until("session_start", 10)
        assert len(await asyncio.wait_for(registrar.resumed(), 10)) == 1
        assert (registrar.enables, registrar.session_enables) == (2, 1)
        await disconnect(phone)
        await send_chat(xmpp, xmpp_server, bob, alice)
        (record,) = await pushes(fake_apns, 1)
        assert record.token == case.token()
        assert len(server.published) == 1


ROUND_TRIPS = 10


async def test_round_trip_per_dialect(xmpp_server: DevServer, xmpp: Connections,
                                      fake_apns: FakeApns, fake_fcm: FakeFcm,
                                      test_ca: TestCA, apns_key: Path, tmp_path: Path,
                                      store: Store) -> None:
    """Register (ad-hoc command at the app server) and enable (at the own server),
    timed separately, ROUND_TRIPS times per dialect on loopback."""
    alice = await make_account(xmpp_server, "alice")
    apps = [apns_app(fake_apns.endpoint, test_ca, apns_key), fcm_app(fake_fcm, tmp_path)]
    lines = [f"\n{type(xmpp_server).__name__}: median / max over {ROUND_TRIPS}, ms"]
    async with running_appserver(xmpp, xmpp_server, apps, tmp_path / "s.json") as server:
        _phone, registrar = await device(xmpp, xmpp_server, alice, store)
        assert await registrar.supported()
        for case in CASES.values():
            registering, enabling = [], []
            for n in range(ROUND_TRIPS):
                began = time.perf_counter()
                registration = await register(registrar, case, server.jid, case.token(n),
                                              enable=False)
                registered = time.perf_counter()
                await registrar.enable_registration(registration)
                enabling.append(time.perf_counter() - registered)
                registering.append(registered - began)
                await registrar.unregister(registration)
            total = [a + b for a, b in zip(registering, enabling, strict=True)]
            lines.append(f"  {case.dialect:9}" + "".join(
                f"  {what} {statistics.median(times) * 1e3:5.1f} / {max(times) * 1e3:5.1f}"
                for what, times in (("register", registering), ("enable", enabling),
                                    ("total", total))))
        assert len(server.plugin.store) == 0
    print("\n".join(lines))
