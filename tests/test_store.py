"""The stores: what every back end must do (run against TinyDB and PostgreSQL), then the
journaled TinyDB store's own durability, crash safety and file modes.

PostgreSQL's own behaviour (migrations, other processes' changes, a lost database) is in
``test_store_postgresql.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from slixmpp_push import Dialect, MemoryStore, Registration, StoreError, TinyDBStore
from slixmpp_push.store import Store, create_store, device_identity
from slixmpp_push.store.base import TABLES


def reg(node: str, account: str = "alice@example.org", token: str = "tok") -> Registration:
    return Registration(
        node=node,
        account=account,
        domain="example.org",
        app="ios",
        token=token,
        dialect=Dialect.TIGASE,
        secret="s" * 24,
    )


# -- every back end ----------------------------------------------------------------------
@pytest.fixture(params=["tinydb", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store of each back end lives: a file, or a fresh database."""
    if request.param == "tinydb":
        return str(tmp_path / "store.json")
    url = request.getfixturevalue("postgres_url")
    assert isinstance(url, str)
    return url


@pytest_asyncio.fixture(params=["memory", "tinydb", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An open store of each back end, the in-memory one included."""
    opened: Store
    if request.param == "memory":
        opened = MemoryStore()
    else:
        location = str(tmp_path / "store.json") if request.param == "tinydb" \
            else request.getfixturevalue("postgres_url")
        opened = create_store(location)
    await opened.open()
    yield opened
    await opened.close()


#: Documents that JSON stores tend to mangle: NUL and a lone surrogate in text, floats
#: whose shortest form is long or tiny, integers beyond 64 bits, nesting, empty values.
AWKWARD = {"text": "é ☃ \u0000 \ud800 \"quoted\" \\", "float": 1712345678.1234567,
           "tiny": 1e-300, "big": 2**70, "negative": -0.5, "nested": [{"a": None, "b": True}],
           "empty": {}, "list": []}


async def test_everything_survives_reopen(location: str) -> None:
    store = create_store(location)
    await store.open()
    await store.put(reg("n1"))
    await store.put(reg("n2", account="bob@example.org", token="t2"))
    await store.remove("n1")
    others = {name: {f"{name}/1": {**AWKWARD, "table": name}, f"{name}/2": {"n": 2}}
              for name in TABLES if name != "registrations"}
    for name, docs in others.items():
        for key, doc in docs.items():
            await store.set_doc(name, key, doc)
        await store.set_doc(name, f"{name}/2", None)
        del docs[f"{name}/2"]
    await store.close()

    reopened = create_store(location)
    await reopened.open()
    try:
        assert reopened.get("n1") is None
        moved = reg("n2", account="bob@example.org", token="t2")
        assert reopened.get("n2") == moved
        assert reopened.find_device(device_identity(moved)) == moved
        assert [r.node for r in reopened.by_account("bob@example.org")] == ["n2"]
        assert reopened.count_by_app() == {"ios": 1} and len(reopened) == 1
        for name, docs in others.items():
            assert reopened.table(name) == docs
    finally:
        await reopened.close()


async def test_a_read_only_store_reads_beside_a_writer_and_refuses_writes(location: str,
                                                                          ) -> None:
    writer = create_store(location)
    await writer.open()
    await writer.put(reg("n1"))
    reader = create_store(location, read_only=True)
    await reader.open()
    try:
        assert reader.get("n1") == reg("n1")
        with pytest.raises(StoreError, match="read-only"):
            await reader.put(reg("n2"))
        assert reader.get("n2") is None
    finally:
        await reader.close()
        await writer.close()


async def test_opens_at_once_share_one_load_and_writes_at_once_all_last(location: str) -> None:
    store = create_store(location)
    await asyncio.gather(store.open(), store.open())
    await asyncio.gather(*(store.put(reg(f"n{i}", token=f"t{i}")) for i in range(200)))
    await store.close()
    reopened = create_store(location, read_only=True)
    await reopened.open()
    assert {r.node for r in reopened.registrations()} == {f"n{i}" for i in range(200)}
    await reopened.close()


async def test_replace_all_leaves_exactly_the_given_tables(location: str) -> None:
    store = create_store(location)
    await store.open()
    await store.put(reg("old"))
    await store.set_doc("pending", "old", {"x": 1})
    new = reg("new", account="bob@example.org", token="t2")
    tables: dict[str, dict[str, dict[str, Any]]] = {
        "registrations": {"new": new.to_doc()}, "pages": {"p1": AWKWARD}}
    await store.replace_all(tables)
    assert store.get("old") is None and store.find_device(device_identity(new)) == new
    assert store.table("pending") == {} and store.table("pages") == {"p1": AWKWARD}

    broken = {"registrations": {"bad": {"node": "bad"}}}  # no account, token…
    with pytest.raises(StoreError, match="registration 'bad' is invalid"):
        await store.replace_all(broken)
    assert store.get("new") == new and store.get("bad") is None
    await store.close()
    reopened = create_store(location, read_only=True)
    await reopened.open()
    assert {name: reopened.table(name) for name in TABLES} == {
        name: tables.get(name, {}) for name in TABLES}
    await reopened.close()


async def test_indexes_follow_updates(store: Store) -> None:
    first = reg("n1", token="old")
    await store.put(first)
    assert store.find_device(device_identity(first)) == first
    moved = Registration(**{**first.to_doc(), "dialect": Dialect.TIGASE, "token": "new"})
    await store.put(moved)
    assert store.find_device(device_identity(first)) is None
    assert store.find_device(device_identity(moved)) == moved
    await store.remove("n1")
    assert store.by_account("alice@example.org") == []


async def test_failed_write_rolls_back_memory() -> None:
    class BrokenStore(MemoryStore):
        async def _persist(self, ops: object) -> None:
            raise StoreError("disk full")

    store = BrokenStore()
    await store.open()
    with pytest.raises(StoreError):
        await store.put(reg("n1"))
    assert store.get("n1") is None and len(store) == 0
    assert store.table("registrations") == {}


# -- the TinyDB store ----------------------------------------------------------------------
async def test_registrations_survive_reopen_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    store = TinyDBStore(path)
    await store.open()
    await store.put(reg("n1"))
    await store.put(reg("n2", account="bob@example.org", token="t2"))
    await store.remove("n1")
    await store.set_doc("pending", "n2", {"x": 1})
    journal = path.with_name("store.json.journal")
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    await store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reopened = TinyDBStore(path)
    await reopened.open()
    assert reopened.get("n1") is None
    assert reopened.get("n2") == reg("n2", account="bob@example.org", token="t2")
    assert reopened.table("pending") == {"n2": {"x": 1}}
    assert [r.node for r in reopened.by_account("bob@example.org")] == ["n2"]
    await reopened.close()
    # The snapshot is a TinyDB file with a schema version.
    data = json.loads(path.read_text())
    assert data["_meta"]["1"] == {"schema": 1}


async def test_journal_alone_is_enough_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    store = TinyDBStore(path)
    await store.open()
    await store.put(reg("n1"))
    # No close(): as after a crash, only the journal holds the write.
    assert not path.exists()
    reopened = TinyDBStore(path)
    store._executor.shutdown()
    os.close(store._lock)
    await reopened.open()
    assert reopened.get("n1") is not None
    await reopened.close()


async def test_torn_last_line_is_ignored_and_corrupt_middle_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    journal = tmp_path / "store.json.journal"
    good = json.dumps(["registrations", "n1", reg("n1").to_doc()])
    journal.write_text(good + "\n" + '["registrations","n2",{"no')
    store = TinyDBStore(path)
    await store.open()
    assert store.get("n1") is not None and store.get("n2") is None
    await store.put(reg("n3", token="t3"))  # appends after the truncated tail
    await store.close()
    reopened = TinyDBStore(path)
    await reopened.open()
    assert {r.node for r in reopened.registrations()} == {"n1", "n3"}
    await reopened.close()

    journal.write_text("garbage\n" + good + "\n")
    with pytest.raises(StoreError, match="line 1"):
        await TinyDBStore(tmp_path / "store.json").open()


async def test_unknown_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    path.write_text(json.dumps({"_meta": {"1": {"schema": 99}}}))
    with pytest.raises(StoreError, match="schema version 99"):
        await TinyDBStore(path).open()


async def test_second_writer_is_refused_reader_allowed(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    store = TinyDBStore(path)
    await store.open()
    await store.put(reg("n1"))
    with pytest.raises(StoreError, match="in use"):
        await TinyDBStore(path).open()
    reader = TinyDBStore(path, read_only=True)
    await reader.open()
    assert reader.get("n1") is not None
    with pytest.raises(StoreError, match="read-only"):
        await reader.put(reg("n2"))
    await reader.close()
    await store.close()


async def test_compaction_keeps_everything_and_resets_journal(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    store = TinyDBStore(path, compact_after=50)
    await store.open()
    await asyncio.gather(*(store.put(reg(f"n{i}", token=f"t{i}")) for i in range(120)))
    await store.remove("n7")
    await store.compact()
    assert path.with_name("store.json.journal").stat().st_size == 0
    (tmp_path / ".slixmpp-push-stray").write_text("half a snapshot")
    await store.close()
    reopened = TinyDBStore(path)
    await reopened.open()
    assert len(reopened) == 119 and reopened.get("n7") is None
    assert not (tmp_path / ".slixmpp-push-stray").exists()
    await reopened.close()


WRITER = textwrap.dedent("""
    import asyncio, sys
    from slixmpp_push import Dialect, Registration, TinyDBStore
    async def main():
        store = TinyDBStore(sys.argv[1], compact_after=300)
        await store.open()
        start = int(sys.argv[2])
        async def one(i):
            await store.put(Registration(node=f"n{i}", account="a@x", domain="x", app="ios",
                                         token=f"t{i}", dialect=Dialect.TIGASE))
            print(i, flush=True)
        for base in range(start, start + 100000, 20):
            await asyncio.gather(*(one(i) for i in range(base, base + 20)))
    asyncio.run(main())
""")


def test_sigkill_never_loses_an_acknowledged_write(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    acknowledged: set[int] = set()
    start = 0
    for round_ in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(start)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        deadline = time.monotonic() + 0.3 + 0.1 * round_
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acknowledged.add(int(line))
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate()
        acknowledged.update(int(x) for x in rest.split())
        start += 100000
    assert len(acknowledged) > 100

    async def check() -> None:
        store = TinyDBStore(path)
        await store.open()
        present = {int(r.node[1:]) for r in store.registrations()}
        await store.close()
        assert acknowledged <= present

    asyncio.run(check())
