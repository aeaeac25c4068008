"""The journaled TinyDB store: durability, crash safety, indexes, file modes."""

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
from pathlib import Path

import pytest

from slixmpp_push import Dialect, MemoryStore, Registration, StoreError, TinyDBStore
from slixmpp_push.store import device_identity


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


async def test_indexes_follow_updates() -> None:
    store = MemoryStore()
    await store.open()
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
