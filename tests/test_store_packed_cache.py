"""The TinyDB store's packed cache (``store/packed_cache.py``): written at each
compaction, read instead of the snapshot's registrations table only for the very
snapshot it was written with, and never trusted when it is damaged or stale. How much
faster a start is: ``benchmarks/store.py``."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest
from test_store_compact import HEX
from test_store_packed import registration

from slixmpp_push import Registration, TinyDBStore
from slixmpp_push.store import packed_cache, snapshot
from slixmpp_push.store.packed_cache import cache_path

ODD = [registration("n1"), registration("n2", voip_token=HEX, secret="s3cret"),
       registration("é" * 10, account="ü@example.org", token="ab" * 300),
       registration("n4", token=12345, channel=["a", 1], created=7, updated=7.5),  # type: ignore[arg-type]
       registration("n5", device_id="ff" * 8, device_key="0" * 40, channel_key=HEX,
                    channel="room@muc.example.org", updated=99.0)]


async def written(path: Path, registrations: list[Registration]) -> None:
    store = TinyDBStore(path)
    await store.open()
    for one in registrations:
        await store.put(one)
    await store.set_doc("pending", "n1", {"due": 1.5})
    await store.compact()
    await store.close()


async def opened(path: Path, read_only: bool = False) -> TinyDBStore:
    store = TinyDBStore(path, read_only=read_only)
    await store.open()
    return store


def docs(store: TinyDBStore) -> list[str]:
    return [json.dumps(r.to_doc()) for r in store.registrations()]


def no_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    def walk(*_: object) -> int:
        raise AssertionError("the registrations table was parsed")
    monkeypatch.setattr(snapshot, "_walk_registrations", walk)


@pytest.mark.parametrize("read_only", [False, True])
async def test_a_start_reads_the_cache_of_its_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_only: bool) -> None:
    path = tmp_path / "store.json"
    await written(path, ODD)
    assert stat.S_IMODE(cache_path(path).stat().st_mode) == 0o600
    with monkeypatch.context() as patched:
        no_walk(patched)
        cached = await opened(path, read_only)
        from_cache = docs(cached)
        assert cached.table("pending") == {"n1": {"due": 1.5}}
        assert cached.by_account("ü@example.org")[0].node == "é" * 10
        assert cached.count_by_app() == {"ios": 5}
        await cached.close()
    cache_path(path).unlink()
    from_snapshot = await opened(path, read_only)
    assert from_cache == docs(from_snapshot) == [json.dumps(r.to_doc()) for r in ODD]
    await from_snapshot.close()


async def test_the_journal_is_replayed_over_the_cache(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "store.json"
    await written(path, ODD[:3])
    store = await opened(path)  # journal only: the snapshot and its cache stay
    await store.remove("n1")
    await store.put(registration("n9", token="t9"))
    await store.close()
    no_walk(monkeypatch)
    store = await opened(path)
    assert [r.node for r in store.registrations()] == ["n2", "é" * 10, "n9"]
    await store.close()


async def test_a_snapshot_edited_by_hand_is_read_and_its_cache_left_alone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "store.json"
    await written(path, ODD[:2])
    text = path.read_text()
    path.write_text(text.replace('"alice@example.org"', '"alicia@example.org"', 1))
    with caplog.at_level(logging.INFO, logger="slixmpp_push.store"):
        store = await opened(path)
    assert [r.account for r in store.registrations()] == ["alicia@example.org",
                                                          "alice@example.org"]
    assert "is of another snapshot" in caplog.text
    await store.close()


@pytest.mark.parametrize("damage", ["flipped byte", "cut short", "not a cache", "empty"])
async def test_a_damaged_cache_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                           damage: str) -> None:
    path = tmp_path / "store.json"
    await written(path, ODD)
    cache = cache_path(path)
    data = bytearray(cache.read_bytes())
    if damage == "flipped byte":
        data[-30] ^= 0x40
    elif damage == "cut short":
        del data[-1:]
    elif damage == "not a cache":
        data[:5] = b"hello"
    else:
        data = bytearray()
    cache.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="slixmpp_push.store"):
        store = await opened(path)
    assert docs(store) == [json.dumps(r.to_doc()) for r in ODD]
    assert str(cache) in caplog.text
    await store.close()


async def test_a_cache_naming_the_wrong_place_falls_back_to_the_whole_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its checksums right, its span wrong (a bug, say): the snapshot is parsed whole."""
    path = tmp_path / "store.json"
    real = packed_cache.read_cache

    def shifted(snapshot: Path, raw: bytes):  # type: ignore[no-untyped-def]
        found = real(snapshot, raw)
        assert found is not None
        return found[0], (found[1][0] + 1, found[1][1])

    await written(path, ODD[:2])
    monkeypatch.setattr("slixmpp_push.store.tinydb_store.read_cache", shifted)
    store = await opened(path)
    assert docs(store) == [json.dumps(r.to_doc()) for r in ODD[:2]]
    await store.close()


async def test_a_cache_that_cannot_be_written_leaves_none_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "store.json"
    await written(path, ODD[:2])
    assert cache_path(path).exists()

    def full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(packed_cache, "replace_file", full)  # the cache's, not the snapshot's
    with caplog.at_level(logging.WARNING, logger="slixmpp_push.store"):
        await written(path, [registration("n7")])  # the snapshot is written, its cache not
    assert "No space left on device" in caplog.text
    assert not cache_path(path).exists()
    monkeypatch.undo()
    store = await opened(path)
    assert [r.node for r in store.registrations()] == ["n1", "n2", "n7"]
    await store.close()
