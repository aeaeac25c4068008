"""The PostgreSQL store on a real, private PostgreSQL (``tests/postgres.py``): its schema
migrations, several stores on one database seeing each other's changes, a database that
goes away under a running store, and the commands around it (``store upgrade``, ``store
migrate``, ``devices``, ``doctor``). What every store does is in ``test_store.py``, run
against this back end too.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e import APNS_APP, apns_app, enable, execute, running_appserver, send_chat
from fakes.fake_apns import FakeApns
from fakes.tls import TestCA
from postgres import PASSWORD_ROLE, PostgresServer, until
from servers import Connections, disconnect, make_account
from test_store import AWKWARD, reg

from slixmpp_push import Dialect, Registration, StoreError
from slixmpp_push.appserver.delivery import Pending
from slixmpp_push.cli import main
from slixmpp_push.config import parse_config
from slixmpp_push.devserver import DevServer, ProsodyServer
from slixmpp_push.doctor.store import check_store
from slixmpp_push.metrics import Metrics
from slixmpp_push.models import Notification, Priority
from slixmpp_push.notifier.models import Page
from slixmpp_push.registrar.dialects import ClientRegistration
from slixmpp_push.store import TinyDBStore, create_store
from slixmpp_push.store.base import TABLES
from slixmpp_push.store.postgresql import CHANNEL, SCHEMA_VERSION, PostgresStore


def database_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def cli(argv: list[str]) -> int:
    """``slixmpp-push`` (which runs its own event loop) from an async test: in a thread."""
    return await asyncio.to_thread(main, argv)


@pytest.fixture
def password_file(postgres_server: PostgresServer, tmp_path: Path) -> Path:
    path = tmp_path / "db.password"
    path.write_text(postgres_server.password + "\n")
    return path


@pytest.fixture
def password_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database owned by the role that must log in with a password."""
    name = postgres_server.create_database(owner=PASSWORD_ROLE)
    try:
        yield postgres_server.url(name, PASSWORD_ROLE)
    finally:
        postgres_server.drop_database(name)


def write_config(folder: Path, store: str, password_file: Path | None = None) -> Path:
    (folder / "component.secret").write_text("s3cret\n")
    password = f'store_password_file = "{password_file}"\n' if password_file else ""
    config = folder / "push.toml"
    config.write_text('[xmpp]\njid = "push.example.org"\nsecret_file = "component.secret"\n'
                      f'[appserver]\nstore = "{store}"\n{password}'
                      '[apps.ios]\ntype = "console"\n')
    return config


# -- the schema -----------------------------------------------------------------------------
async def test_a_fresh_database_gets_every_table_once_and_a_rerun_changes_nothing(
        postgres_server: PostgresServer, postgres_url: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    database = database_of(postgres_url)
    config = write_config(tmp_path, postgres_url)
    assert await cli(["store", "upgrade", "--config", str(config)]) == 0
    assert capsys.readouterr().out == (f"{postgres_url}: schema version {SCHEMA_VERSION}, "
                                       "upgraded from 0\n")
    tables = postgres_server.psql("SELECT table_name FROM information_schema.tables "
                                  "WHERE table_schema = 'public'", database).split()
    assert sorted(tables) == sorted([*TABLES, "node_rates", "schema_version"])
    triggers = postgres_server.psql("SELECT DISTINCT event_object_table FROM "
                                    "information_schema.triggers", database).split()
    assert sorted(triggers) == sorted(TABLES)  # every table tells the other instances

    # Two stores opening at once (two instances starting): one upgrade, no conflict.
    first, second = create_store(postgres_url), create_store(postgres_url)
    await asyncio.gather(first.open(), second.open())
    await asyncio.gather(first.close(), second.close())
    assert await cli(["store", "upgrade", "--config", str(config)]) == 0
    assert capsys.readouterr().out == (f"{postgres_url}: schema version {SCHEMA_VERSION}, "
                                       "up to date\n")
    versions = postgres_server.psql("SELECT version FROM schema_version", database).split()
    assert versions == [str(v) for v in range(1, SCHEMA_VERSION + 1)]


async def test_two_stores_migrating_a_fresh_database_together_migrate_it_once(
        postgres_server: PostgresServer, postgres_url: str) -> None:
    stores = [create_store(postgres_url) for _ in range(3)]
    await asyncio.gather(*(store.open() for store in stores))
    await asyncio.gather(*(store.close() for store in stores))
    versions = postgres_server.psql("SELECT count(*) FROM schema_version",
                                    database_of(postgres_url))
    assert versions.strip() == str(SCHEMA_VERSION)


async def test_a_schema_newer_than_this_release_is_refused(
        postgres_server: PostgresServer, postgres_url: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    store = create_store(postgres_url)
    await store.open()
    await store.put(reg("n1"))
    await store.close()
    newer = SCHEMA_VERSION + 1
    postgres_server.psql(f"INSERT INTO schema_version (version, description) VALUES "
                         f"({newer}, 'from a later release')", database_of(postgres_url))
    refusal = (f"the store's schema is version {newer}, newer than this release knows "
               f"({SCHEMA_VERSION}): run the release that upgraded it, or a newer one")
    for read_only in (False, True):
        with pytest.raises(StoreError) as info:
            await create_store(postgres_url, read_only=read_only).open()
        assert str(info.value) == f"{postgres_url}: {refusal}"
    config = write_config(tmp_path, postgres_url)
    assert await cli(["store", "upgrade", "--config", str(config)]) == 1
    assert capsys.readouterr().err == f"slixmpp-push: store error: {postgres_url}: {refusal}\n"
    result = await check_store(parse_config({"xmpp": {"jid": "push.example.org",
                                                      "secret_file": "component.secret"},
                                             "appserver": {"store": postgres_url},
                                             "apps": {"ios": {"type": "console"}}}, tmp_path))
    assert (result.status.name, result.fix) == (
        "FAIL", "run the release that upgraded the database, or a newer one")


# -- several processes on one database ------------------------------------------------------
async def test_two_stores_see_each_others_changes(postgres_url: str) -> None:
    first, second = create_store(postgres_url), create_store(postgres_url)
    await asyncio.gather(first.open(), second.open())
    try:
        alice = reg("n1")
        await first.put(alice)
        assert await until(lambda: second.get("n1"), "the registration reaches the other") \
            == alice
        assert [r.node for r in second.by_account(alice.account)] == ["n1"]
        assert second.count_by_app() == {"ios": 1}

        await second.remove("n1")
        await until(lambda: first.get("n1") is None, "the removal reaches the first")
        assert first.by_account(alice.account) == [] and first.count_by_app() == {}

        for name in TABLES[1:]:
            await first.set_doc(name, "k", {**AWKWARD, "table": name})
        await until(lambda: all(second.table(name).get("k", {}).get("table") == name
                                for name in TABLES[1:]), "every table's change")
        assert second.table("omemo")["k"] == {**AWKWARD, "table": "omemo"}

        # A key too long for a NOTIFY payload: the other store reads the whole table.
        long_key = "x" * 8000
        await first.set_doc("pages", long_key, {"long": True})
        await until(lambda: long_key in second.table("pages"), "a long key's change")

        # Both write one key: the later write wins, in the database and in both memories.
        await first.set_doc("dead_tokens", "same", {"by": "first"})
        await until(lambda: "same" in second.table("dead_tokens"), "the first write")
        await second.set_doc("dead_tokens", "same", {"by": "second"})
        await until(lambda: first.table("dead_tokens")["same"] == {"by": "second"},
                    "the second write")
        assert second.table("dead_tokens")["same"] == {"by": "second"}
    finally:
        await asyncio.gather(first.close(), second.close())
    reader = create_store(postgres_url, read_only=True)
    await reader.open()
    assert reader.table("dead_tokens")["same"] == {"by": "second"}
    await reader.close()


async def test_reread_takes_in_a_registration_whose_notification_has_not_come(
        postgres_url: str) -> None:
    """The publish path of an all-active instance asks for a node it does not know: it
    may have been registered through another instance a moment ago."""
    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    await asyncio.gather(first.open(), second.open())
    try:
        assert second._conn is not None
        await second._conn.remove_listener(CHANNEL, second._on_notification)  # deaf
        await first.put(reg("n1"))
        await second.reread("registrations", "n2")  # a node nobody has: nothing changes
        assert second.get("n1") is None and len(second) == 0
        await second.reread("registrations", "n1")
        assert second.get("n1") == reg("n1")
        assert [r.node for r in second.by_account(reg("n1").account)] == ["n1"]
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_a_store_with_its_connection_down_reads_back_what_it_missed(
        postgres_server: PostgresServer, password_url: str) -> None:
    """The role the store logs in with is locked out and its connection cut: another
    process writes meanwhile, and no notification can reach the store; once it logs in
    again, it reads every table and has the change."""
    store = create_store(password_url, password=postgres_server.password)
    assert isinstance(store, PostgresStore)
    store.retry_max_delay = 0.2
    other = create_store(password_url.replace(PASSWORD_ROLE, "postgres", 1))
    await store.open()  # first: the tables belong to the role that made them
    await other.open()
    database = database_of(password_url)
    try:
        await store.put(reg("before"))
        postgres_server.psql(f"ALTER ROLE {PASSWORD_ROLE} NOLOGIN")
        postgres_server.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             f"WHERE usename = '{PASSWORD_ROLE}'", database)
        await until(lambda: not store.status.writable, "the store sees its connection go")
        with pytest.raises(StoreError, match="database unreachable"):
            await store.put(reg("during", token="t2"))
        assert store.get("during") is None
        assert store.status.problem().startswith("store not writable: database unreachable: ")
        await other.put(reg("missed", account="bob@example.org", token="t3"))
        await other.remove("before")
        postgres_server.psql(f"ALTER ROLE {PASSWORD_ROLE} LOGIN")
        await until(lambda: store.status.writable, "the store logs in again")
        assert store.get("missed") == reg("missed", account="bob@example.org", token="t3")
        assert store.get("before") is None
        await store.put(reg("after", token="t4"))
        await until(lambda: other.get("after"), "the write after reaches the other")
    finally:
        postgres_server.psql(f"ALTER ROLE {PASSWORD_ROLE} LOGIN")
        await asyncio.gather(store.close(), other.close())


async def test_a_database_restarted_under_a_running_store(own_postgres: PostgresServer) -> None:
    url = own_postgres.url(own_postgres.create_database())
    store = create_store(url)
    assert isinstance(store, PostgresStore)
    store.retry_max_delay = 0.2
    metrics = Metrics()  # what /health and /metrics report, as serve wires them
    metrics.watch_store(store.status)
    metrics.set_connected(True)
    await store.open()
    await store.put(reg("before"))
    assert metrics.health()[0]
    own_postgres.stop()
    await until(lambda: not store.status.writable, "the store sees the database stop")
    ready, details = metrics.health()
    assert not ready
    assert details["store"]["problem"].startswith(f"store not writable: database unreachable: "
                                                  f"{url}: ")
    with pytest.raises(StoreError, match=r"database unreachable: .*cannot connect"):
        await store.put(reg("during", token="t2"))
    assert "slixmpp_push_store_write_failures_total 1.0" in metrics.exposition().decode()
    assert store.get("before") is not None and store.get("during") is None  # reads go on
    own_postgres.start()
    await until(lambda: store.status.writable, "the store reconnects")
    assert metrics.health()[0] and metrics.health()[1]["store"]["problem"] == ""
    await store.put(reg("after", token="t3"))
    await store.close()
    reader = create_store(url, read_only=True)
    await reader.open()
    assert {r.node for r in reader.registrations()} == {"before", "after"}
    await reader.close()


# -- what cannot be stored, and who cannot log in --------------------------------------------
async def test_a_document_json_cannot_hold_is_refused_and_the_store_goes_on(
        postgres_url: str) -> None:
    store = create_store(postgres_url)
    await store.open()
    with pytest.raises(StoreError, match=r"cannot store pages 'p1': Out of range float"):
        await store.set_doc("pages", "p1", {"at": float("nan")})
    assert "p1" not in store.table("pages")
    await store.set_doc("pages", "p2", {"at": 1.0})
    assert store.status.writable
    await store.close()


async def test_login_failures_are_one_clear_line(postgres_server: PostgresServer,
                                                 password_url: str) -> None:
    cases = [
        (create_store(password_url, password="wrong-secret"),
         f'{password_url}: password authentication failed for user "{PASSWORD_ROLE}"'),
        (create_store(password_url),
         f'{password_url}: password authentication failed for user "{PASSWORD_ROLE}" '
         "(no password was given)"),
        (create_store(postgres_server.url("nowhere")),
         f'{postgres_server.url("nowhere")}: database "nowhere" does not exist'),
    ]
    for store, message in cases:  # and the password never in them
        with pytest.raises(StoreError) as info:
            await store.open()
        assert str(info.value) == message
    closed = create_store("postgresql://postgres@127.0.0.1:1/push")
    with pytest.raises(StoreError) as info:
        await closed.open()
    assert str(info.value) == ("postgresql://postgres@127.0.0.1:1/push: cannot connect: "
                               "Connect call failed ('127.0.0.1', 1)")


# -- the commands -----------------------------------------------------------------------------
def every_kind_of_document() -> dict[str, dict[str, dict[str, Any]]]:
    """A store as the app server, the pager and the registrar fill it."""
    now = time.time()
    registrations = [
        Registration(node="tigase", account="alice@example.org", domain="example.org",
                     app="ios", token="aa11" * 16, dialect=Dialect.TIGASE, secret="s" * 24,
                     voip_token="bb22" * 16, created=now, updated=now),
        Registration(node="p2", account="alice@example.org", domain="example.org",
                     app="fcm", token="fcm:token", dialect=Dialect.P2, secret="t" * 24,
                     device_id="0123456789abcdef", device_key="k" * 40,
                     channel="room@muc.example.org", channel_key="c" * 40, created=now),
        Registration(node="v1", account="bob@example.org", domain="example.org", app="ios",
                     token="cc33" * 16, dialect=Dialect.V1, device_id="bob-phone"),
        Registration(node="local", account="bob@example.org", domain="example.org",
                     app="ios", token="dd44" * 16, dialect=Dialect.LOCAL),
        Registration(node="ff66" * 16, account="carol@example.org", domain="example.org",
                     app="ios", token="ff66" * 16, dialect=Dialect.MONAL),
    ]
    assert {r.dialect for r in registrations} == set(Dialect)
    pending = Pending(registrations[0], Notification(message_count=2, sender="bob@x",
                                                     body="é\u0000", title="t",
                                                     priority=Priority.HIGH,
                                                     received_at=now), 3, now, now + 1.5)
    page = Page(id="p1", key="disk full", title="Disk full", body="/var 100%",
                priority=Priority.HIGH, policy="oncall", created=now,
                paged=["alice@example.org"], history=[[now, "opened", ""]])
    client = ClientRegistration(account="carol@example.org", app_server="push.example.org",
                                dialect="tigase", node="n", token="ee55" * 16,
                                provider=APNS_APP, features=("a", "b"), registered_at=now)
    return {"registrations": {r.node: r.to_doc() for r in registrations},
            "pending": {"tigase": pending.to_doc()},
            "dead_tokens": {"gone": {"at": now}},
            "pages": {page.id: page.to_doc()},
            "client_registrations": {client.key: client.to_doc()},
            "omemo": {"own/identity": {"key": "AAEC/w==", **AWKWARD}}}


async def tables_of(location: str, password: str | None = None,
                    ) -> dict[str, dict[str, dict[str, Any]]]:
    store = create_store(location, password=password, read_only=True)
    await store.open()
    await store.close()
    return {name: dict(store.table(name)) for name in TABLES}


async def test_migrate_from_tinydb_to_postgresql_and_back_is_lossless(
        postgres_server: PostgresServer, password_url: str, password_file: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, back = tmp_path / "source.json", tmp_path / "back" / "store.json"
    original = every_kind_of_document()
    store = TinyDBStore(source)
    await store.open()
    await store.replace_all(original)
    await store.close()

    assert await cli(["store", "migrate", "--from", str(source), "--to", password_url,
                 "--to-password-file", str(password_file)]) == 0
    assert capsys.readouterr().out == (
        f"copied 5 registrations, 1 pending, 1 dead tokens, 1 client registrations, 1 pages, "
        f"1 omemo from {source} to {password_url} (read back: identical)\n")
    assert await tables_of(password_url, postgres_server.password) == original
    assert await cli(["store", "migrate", "--from", password_url, "--to", str(back),
                 "--from-password-file", str(password_file)]) == 0
    assert await tables_of(str(back)) == original == await tables_of(str(source))

    # Into a store that holds something: refused, unless --force replaces it.
    del original["registrations"]["v1"]
    store = TinyDBStore(source)
    await store.open()
    await store.remove("v1")
    await store.close()
    migrate = ["store", "migrate", "--from", str(source), "--to", password_url,
               "--to-password-file", str(password_file)]
    assert await cli(migrate) == 2
    assert capsys.readouterr().err == (
        f"slixmpp-push store: {password_url} is not empty (5 registrations, 1 pending, "
        "1 dead tokens, 1 client registrations, 1 pages, 1 omemo): add --force to replace "
        "what it holds\n")
    assert await cli([*migrate, "--force"]) == 0
    assert await tables_of(password_url, postgres_server.password) == original


async def test_migrate_refuses_what_it_cannot_copy_faithfully(
        postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing, target = tmp_path / "missing.json", tmp_path / "target.json"
    assert await cli(["store", "migrate", "--from", str(missing), "--to", postgres_url]) == 1
    assert capsys.readouterr().err == f"slixmpp-push: store error: no store at {missing}\n"

    assert await cli(["store", "migrate", "--from", postgres_url, "--to", str(target)]) == 1
    assert capsys.readouterr().err == (f"slixmpp-push: store error: {postgres_url} holds no "
                                       "slixmpp-push store (no schema_version table)\n")

    running = TinyDBStore(tmp_path / "running.json")  # what a running serve holds
    await running.open()
    try:
        assert await cli(["store", "migrate", "--from", str(running.path), "--to",
                     postgres_url]) == 1
        assert capsys.readouterr().err == (
            f"slixmpp-push: store error: {running.path} is in use by a running serve: stop "
            "it first, or what it writes during the copy is lost\n")
    finally:
        await running.close()

    usage = [
        (["--from", str(target), "--to", str(tmp_path / "." / "target.json")],
         "--from and --to name the same store"),
        (["--from", postgres_url, "--to", str(target), "--to-password-file", str(missing)],
         "--to-password-file is only used with a postgresql:// URL"),
        (["--from", postgres_url, "--to", str(target), "--from-password-file", str(missing)],
         f"--from-password-file: cannot read {missing}: [Errno 2] No such file or directory: "
         f"'{missing}'"),
    ]
    for argv, problem in usage:
        assert await cli(["store", "migrate", *argv]) == 2
        assert capsys.readouterr().err == f"slixmpp-push store: {problem}\n"
    assert not target.exists()


async def test_devices_remove_through_the_database_reaches_a_running_store(
        postgres_server: PostgresServer, password_url: str, password_file: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, password_url, password_file)
    running = create_store(password_url, password=postgres_server.password)
    await running.open()
    try:
        await running.put(reg("n1"))
        await running.set_doc("pending", "n1", {"queued": True})
        assert await cli(["devices", "list", "--config", str(config)]) == 0
        listed = capsys.readouterr()
        assert listed.out.startswith("n1\talice@example.org\tios\ttigase\t")
        assert listed.err == "1 registration(s), 1 pending\n"
        assert await cli(["devices", "remove", "n1", "--config", str(config)]) == 0
        assert capsys.readouterr().out == "removed n1 of alice@example.org\n"
        await until(lambda: running.get("n1") is None and not running.table("pending"),
                    "the removal reaches the running store")
    finally:
        await running.close()


async def test_doctor_checks_a_database_store(postgres_url: str, tmp_path: Path) -> None:
    def config(store: str) -> Any:
        return parse_config({"xmpp": {"jid": "push.example.org",
                                      "secret_file": "component.secret"},
                             "appserver": {"store": store},
                             "apps": {"ios": {"type": "console"}}}, tmp_path)

    (tmp_path / "component.secret").write_text("s")
    fresh = await check_store(config(postgres_url))
    assert (fresh.status.name, fresh.detail) == (
        "WARN", f"{postgres_url}: no store in this database yet: serve has never run with "
                "this config")
    store = create_store(postgres_url)
    await store.open()
    await store.put(reg("n1"))
    await store.put(Registration(node="n2", account="bob@example.org", domain="example.org",
                                 app="gone", token="t", dialect=Dialect.LOCAL))
    await store.close()
    result = await check_store(config(postgres_url))
    assert (result.status.name, result.detail) == (
        "WARN", f"{postgres_url}: 2 registration(s), 0 pending; registrations of apps not in "
                "the config: gone (1)")
    down = await check_store(config("postgresql://postgres@127.0.0.1:1/push"))
    assert down.status.name == "FAIL"
    assert down.detail.startswith("cannot open: postgresql://postgres@127.0.0.1:1/push: "
                                  "cannot connect: ")
    assert "PostgreSQL runs" in down.fix


# -- the app server on a database ---------------------------------------------------------------
async def test_appserver_on_postgresql_and_a_registration_removed_by_another_instance(
        xmpp_server: DevServer, xmpp: Connections, fake_apns: FakeApns, test_ca: TestCA,
        apns_key: Path, postgres_url: str, tmp_path: Path) -> None:
    alice = await make_account(xmpp_server, "alice")
    bob = await make_account(xmpp_server, "bob")
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    other = create_store(postgres_url)  # a second instance's view of the database
    await other.open()
    try:
        async with running_appserver(xmpp, xmpp_server, [app], tmp_path / "unused.json",
                                     plugin_config={"store": create_store(postgres_url)},
                                     ) as server:
            phone = await xmpp.client(xmpp_server, alice, resource="phone")
            answer = await execute(phone, server.jid, "register-device", {
                "provider": APNS_APP, "device-token": "aa11" * 16})
            node = answer["node"][0]
            registered = await until(lambda: other.get(node), "the registration in the database")
            assert (registered.account, registered.token) == (alice.jid, "aa11" * 16)
            await enable(phone, server.jid, node)
            await disconnect(phone)
            await send_chat(xmpp, xmpp_server, bob, alice, "first")
            await fake_apns.wait_for(1, timeout=10)
            (first,) = await server.wait_published(1)
            assert first.answer == "result"

            await other.remove(node)  # as `devices remove` through another instance
            await until(lambda: server.plugin.store.get(node) is None,
                        "the removal reaches the running app server")
            await send_chat(xmpp, xmpp_server, bob, alice, "second")
            second = (await server.wait_published(2))[1]
            assert (second.node, second.answer) == (node, "item-not-found")
            assert len(fake_apns.requests) == 1
    finally:
        await other.close()


async def test_serve_on_a_database(prosody_server: ProsodyServer, postgres_server: PostgresServer,
                                   password_url: str, password_file: Path, tmp_path: Path,
                                   ) -> None:
    """``serve`` opens the configured database with the password from its file; a
    database that refuses the login stops it at start with one line, and one it cannot
    reach is waited for (as a standby: docs/deploy.md, high availability)."""
    spec = prosody_server.component
    (tmp_path / "secret").write_text(spec.secret)

    def config(store: str) -> Path:
        path = tmp_path / "push.toml"
        path.write_text(f'[xmpp]\njid = "{spec.jid}"\nport = {prosody_server.component_port}\n'
                        f'secret_file = "secret"\n[appserver]\nstore = "{store}"\n'
                        f'store_password_file = "{password_file}"\n'
                        '[apps.ios]\ntype = "console"\n')
        return path

    no_such = password_url.rsplit("/", 1)[0] + "/no_such_database"
    served = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "slixmpp_push.cli", "serve", "--config", str(config(no_such)),
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(served.communicate(), 60)
    assert served.returncode == 1
    (line,) = err.decode().splitlines()
    assert line.startswith(f"slixmpp-push: store error: {no_such}: ")
    assert 'database "no_such_database" does not exist' in line

    unreachable = "postgresql://pushpw@127.0.0.1:1/push"
    waiting = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "slixmpp_push.cli", "serve", "--config", str(config(unreachable)),
        stderr=asyncio.subprocess.PIPE)
    assert waiting.stderr is not None
    said = (await asyncio.wait_for(waiting.stderr.readline(), 30)).decode()
    assert "database unreachable: " in said and "Connect call failed" in said, said
    waiting.terminate()  # a standby stops at once, and cleanly
    assert await asyncio.wait_for(waiting.wait(), 30) == 0

    store = create_store(password_url, password=postgres_server.password)
    await store.open()
    await store.put(reg("n1"))
    await store.close()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "slixmpp_push.cli", "serve", "--config", str(config(password_url)),
        stderr=asyncio.subprocess.PIPE)
    assert process.stderr is not None
    lines: list[str] = []
    connected = f"connected to 127.0.0.1:{prosody_server.component_port} as {spec.jid}"
    try:
        # Connected: past start-up, so SIGTERM is serve's to handle.
        while not any(connected in line for line in lines):
            raw = await asyncio.wait_for(process.stderr.readline(), 30)
            assert raw, "serve exited: " + "\n".join(lines)
            lines.append(raw.decode().rstrip("\n"))
        assert any("push app server ready: 1 registration(s)" in line for line in lines), lines
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)
    assert process.returncode == 0
    assert postgres_server.password not in "\n".join(lines)


async def test_rows_written_by_hand_that_are_no_documents_are_logged_and_left_out(
        postgres_server: PostgresServer, postgres_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    running = create_store(postgres_url)
    await running.open()
    try:
        postgres_server.psql("INSERT INTO pages VALUES ('list', '[1, 2]'); "
                             """INSERT INTO registrations VALUES ('bad', '{"node": "bad"}')""",
                             database_of(postgres_url))
        await until(lambda: "is not a JSON object" in caplog.text
                    and "registration bad written by another process is unreadable"
                    in caplog.text, "both rows seen and refused")
        assert running.get("bad") is None and "list" not in running.table("pages")
        await running.put(reg("n1"))  # the store goes on
        assert running.status.writable
    finally:
        await running.close()
    reader = create_store(postgres_url, read_only=True)
    with pytest.raises(StoreError, match="registration 'bad' in the store is invalid"):
        await reader.open()  # as a TinyDB store refuses it: start-up says so


def test_a_url_given_with_a_password_never_shows_it() -> None:
    """Config and ``store migrate`` refuse such URLs; the store masks one all the same."""
    with pytest.raises(StoreError, match="holds a password") as info:
        create_store("postgresql://push:hunter2@db/push")
    assert "hunter2" not in str(info.value)
    assert PostgresStore("postgresql://push:hunter2@db:5432/push").where == \
        "postgresql://push:***@db:5432/push"
