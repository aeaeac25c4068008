"""Compact registrations (issue 11): what a Registration keeps and gives back, the
``registrations`` table made from the objects when read, the account index, and the
one-pass loading of a TinyDB snapshot and of PostgreSQL rows.

What every store must do is in ``test_store.py``; the figures (bytes per registration,
cold start, resident memory) are measured by ``benchmarks/store.py``, never here.
"""

from __future__ import annotations

import gc
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from postgres import PostgresServer
from test_store import reg

from slixmpp_push import Dialect, MemoryStore, Registration, StoreError, TinyDBStore
from slixmpp_push.models import REGISTRATION_FIELDS
from slixmpp_push.store import create_store, device_identity
from slixmpp_push.store import postgresql as postgresql_store
from slixmpp_push.store.base import TABLES, LoadedRegistrations, collections_paused
from slixmpp_push.store.snapshot import IrregularSnapshot, read_snapshot

HEX = "0123456789abcdef" * 4  # an APNs token as clients send it: 64 lowercase hex digits


def doc(node: str = "n1", **values: Any) -> dict[str, Any]:
    """A registration's document as the store writes it (every field, in order)."""
    base: dict[str, Any] = {
        "node": node, "account": "alice@example.org", "domain": "example.org", "app": "ios",
        "token": HEX, "dialect": "tigase", "secret": None, "voip_token": None,
        "device_id": None, "device_key": None, "channel": None, "channel_key": None,
        "created": 1712345678.25, "updated": 1712345678.25}
    return {**base, **values}


def dataclass_repr(values: dict[str, Any]) -> str:
    """What the dataclass Registration's repr was, for these values."""
    shown = {**values, "dialect": Dialect(values["dialect"])}
    return "Registration(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


# -- the value object ----------------------------------------------------------------------
@pytest.mark.parametrize("value", [
    HEX, HEX.upper(), "0123456789ABCDEFabcdef" * 3, HEX[:-1], "ab cd", " " + HEX[:-1],
    "", "t", "not hex at all", "ab" * 80, 12345, None,
])
def test_every_field_reads_and_writes_back_exactly_what_it_was_given(value: Any) -> None:
    given = doc(token=value, voip_token=value, secret=value, device_id=value,
                device_key=value, channel=value, channel_key=value)
    for registration in (Registration.from_doc(given),):
        assert registration.to_doc() == given
        assert list(registration.to_doc()) == list(REGISTRATION_FIELDS)
        assert json.dumps(registration.to_doc()) == json.dumps(given)
        for name in REGISTRATION_FIELDS[6:12]:
            assert getattr(registration, name) == value
            assert type(getattr(registration, name)) is type(value)
        assert registration == Registration(**{**given, "dialect": Dialect.TIGASE})
        assert repr(registration) == dataclass_repr(given)


@pytest.mark.parametrize("created, updated", [
    (0.0, 0.0), (1.5, 1.5), (1.5, 2.5), (-0.0, 0.0), (7, 7), (7, 7.0), (float("nan"), 1.0)])
def test_timestamps_come_back_as_given(created: Any, updated: Any) -> None:
    registration = Registration.from_doc(doc(created=created, updated=updated))
    back = registration.to_doc()
    assert json.dumps([back["created"], back["updated"]]) == json.dumps([created, updated])


def test_fields_can_be_changed_one_by_one() -> None:
    registration = Registration.from_doc(doc(device_key="ff" * 20, secret="s3cret"))
    registration.token = "NEW-TOKEN"
    registration.voip_token = HEX
    registration.secret = None
    registration.channel = "room@muc.example.org"
    assert registration.to_doc() == doc(
        token="NEW-TOKEN", voip_token=HEX, device_key="ff" * 20,
        channel="room@muc.example.org")
    registration.device_key = registration.channel = None
    assert registration == Registration.from_doc(doc(token="NEW-TOKEN", voip_token=HEX))


def test_documents_of_another_shape_are_read_by_from_doc() -> None:
    """A store packs only what to_doc writes (``RegistrationTable.put_stored``);
    from_doc copes with the rest as ever (an older release's document without the
    later fields) or says what is wrong."""
    older = {k: v for k, v in doc().items() if k not in ("channel", "channel_key")}
    assert Registration.from_doc(older) == Registration.from_doc(doc())
    with pytest.raises(ValueError, match="'nope' is not a valid Dialect"):
        Registration.from_doc(doc(dialect="nope"))


def test_registrations_share_the_strings_they_have_in_common() -> None:
    """The parts of a registration that 100k of them repeat are held once."""
    first = Registration.from_doc(json.loads(json.dumps(doc("n1"))))
    second = Registration.from_doc(json.loads(json.dumps(doc("n2"))))
    assert first.app is second.app and first.domain is second.domain
    assert first.dialect is second.dialect is Dialect.TIGASE
    assert first.updated is first.created  # never updated: one float for both


# -- the store -----------------------------------------------------------------------------
async def test_the_registrations_table_is_made_from_the_objects() -> None:
    store = MemoryStore()
    await store.open()
    await store.put(reg("n1"))
    await store.put(reg("n2", account="bob@example.org", token="t2"))
    table = store.table("registrations")
    assert table == {"n1": reg("n1").to_doc(),
                     "n2": reg("n2", account="bob@example.org", token="t2").to_doc()}
    assert len(table) == 2 and "n1" in table and "n3" not in table
    assert table.get("n3") is None and dict(table)["n2"]["token"] == "t2"
    await store.remove("n1")
    assert list(table) == ["n2"]
    with pytest.raises(ValueError, match="put"):
        await store.set_doc("registrations", "n9", reg("n9").to_doc())


async def test_an_account_finds_its_registrations_by_node() -> None:
    store = MemoryStore()
    await store.open()
    account = "alice@example.org"
    devices = [reg(f"n{i}", account=account, token=f"t{i}") for i in (3, 1, 2)]
    for device in devices:
        await store.put(device)
    await store.put(reg("m1", account="bob@example.org"))
    assert store.by_account(account) == sorted(devices, key=lambda r: r.node)
    await store.remove("n1")
    await store.remove("n3")
    assert store.by_account(account) == [devices[2]]
    await store.put(reg("n4", account=account, token="t4"))
    assert [r.node for r in store.by_account(account)] == ["n2", "n4"]
    await store.remove("n2")
    await store.remove("n4")
    assert store.by_account(account) == []
    assert [r.node for r in store.by_account("bob@example.org")] == ["m1"]
    assert store.count_by_app() == {"ios": 1}


async def test_find_device_answers_the_latest_of_two_registrations_of_one_device() -> None:
    """Two nodes for one device (two registrations that raced): the later one is found,
    and once it is removed, the other (an index of identities lost it)."""
    store = MemoryStore()
    await store.open()
    older, newer = reg("n1", token="same"), reg("n2", token="same")
    await store.put(older)
    await store.put(newer)
    assert store.find_device(device_identity(older)) == newer
    await store.remove("n2")
    assert store.find_device(device_identity(older)) == older
    assert store.find_device(("alice@example.org", "ios", "other", "")) is None
    assert store.find_device(("nobody@example.org", "ios", "same", "")) is None


def test_collections_are_paused_and_restored_as_they_were() -> None:
    assert gc.isenabled()
    with collections_paused():
        assert not gc.isenabled()
        with collections_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause found them off: leaves them off
    assert gc.isenabled()


# -- the TinyDB snapshot -------------------------------------------------------------------
def database(registrations: dict[str, Any], **tables: Any) -> dict[str, Any]:
    """A TinyDB snapshot's content: ids from 1, each document with its ``_key``."""
    data: dict[str, Any] = {"_meta": {"1": {"schema": 1}}}
    for name in TABLES:
        docs = registrations if name == "registrations" else tables.get(name, {})
        data[name] = {str(i): {**d, "_key": key}
                      for i, (key, d) in enumerate(docs.items(), start=1)}
    return data


async def opened(path: Path, read_only: bool = True) -> TinyDBStore:
    store = TinyDBStore(path, read_only=read_only)
    await store.open()
    return store


@pytest.mark.parametrize("indent", [None, 0, 2])
async def test_a_snapshot_as_tinydb_or_json_dump_wrote_it_loads(tmp_path: Path,
                                                               indent: int | None) -> None:
    path = tmp_path / "store.json"
    older = {k: v for k, v in doc("n3").items() if k not in ("channel", "channel_key")}
    registrations = {"n1": doc("n1"), "n2": doc("n2", voip_token=HEX, secret="s"),
                     "n3": older}
    pending = {"n1": {"x": [1, {"y": None}]}}
    path.write_text(json.dumps(database(registrations, pending=pending), indent=indent))
    store = await opened(path)
    assert {r.node: r.to_doc() for r in store.registrations()} == {
        "n1": doc("n1"), "n2": doc("n2", voip_token=HEX, secret="s"), "n3": doc("n3")}
    assert store.table("pending") == pending
    assert [r.node for r in store.registrations()] == ["n1", "n2", "n3"]
    assert [r.node for r in store.by_account("alice@example.org")] == ["n1", "n2", "n3"]
    assert store.count_by_app() == {"ios": 3}


async def test_a_snapshot_the_walk_does_not_expect_loads_as_json_loads_reads_it(
        tmp_path: Path) -> None:
    """A repeated id or table name, ids out of order: json.loads keeps the last of each,
    and so does the store."""
    path = tmp_path / "store.json"
    first, second, third = doc("n1"), doc("n2", token="t2"), doc("n3", token="t3")
    repeated_id = ('{"_meta":{"1":{"schema":1}},"registrations":{'
                   f'"1":{json.dumps({**first, "_key": "n1"})},'
                   f'"2":{json.dumps({**second, "_key": "n2"})},'
                   f'"1":{json.dumps({**third, "_key": "n3"})}}}}}')
    repeated_table = ('{"_meta":{"1":{"schema":1}},"registrations":{'
                      f'"1":{json.dumps({**first, "_key": "n1"})}}},'
                      f'"registrations":{{"1":{json.dumps({**third, "_key": "n3"})}}}}}')
    out_of_order = ('{"_meta":{"1":{"schema":1}},"registrations":{'
                    f'"2":{json.dumps({**second, "_key": "n2"})},'
                    f'"1":{json.dumps({**first, "_key": "n1"})}}}}}')
    for text, nodes in ((repeated_id, ["n3", "n2"]), (repeated_table, ["n3"]),
                        (out_of_order, ["n2", "n1"])):
        with pytest.raises(IrregularSnapshot):
            read_snapshot(text, LoadedRegistrations())
        path.write_text(text)
        store = await opened(path)
        assert [r.node for r in store.registrations()] == nodes


def json_error(text: str) -> str:
    try:
        json.loads(text)
    except ValueError as exc:
        return str(exc)
    raise AssertionError(f"{text} is JSON")


@pytest.mark.parametrize("text, message", [
    ('{"_meta":{"1":{"schema":1}},"registrations":{"1":{"_key":"n1"}}} junk', None),
    ('{"_meta":{"1":{"schema":1}},"registrations":{"1":{"_key":"n1",}}}', None),
    ('{"_meta":{"1":{"schema":1}},"registrations":{"1":{"_key":"n1"}}', None),
    ('\ufeff{"_meta":{"1":{"schema":1}}}', None),
    ('{"_meta":{"1":{"schema":1}},"registrations":[]}',
     "is not a readable store: table 'registrations' is not an object"),
    ('{"_meta":{"1":{"schema":2}},"registrations":{"1":{"_key":"n1"}}}',
     "schema version 2 is not supported"),
    ('{"_meta":{"1":{"schema":1}},"registrations":{"1":{"node":"n1","_key":"n1"}}}',
     "registration 'n1' in the store is invalid: 'dialect'"),
])
async def test_a_broken_snapshot_is_refused_as_ever(tmp_path: Path, text: str,
                                                   message: str | None) -> None:
    """Not JSON: json.loads's own message, as before the one-pass reading."""
    path = tmp_path / "store.json"
    path.write_text(text)
    expected = message or "is not a readable store: " + json_error(text)
    with pytest.raises(StoreError, match=re.escape(expected)):
        await opened(path)


async def test_the_journal_may_mend_or_break_a_registration_of_the_snapshot(
        tmp_path: Path) -> None:
    """Registrations are checked once the journal is replayed, as before: an invalid one
    that a later line replaces or removes is no error; the first one left is."""
    path = tmp_path / "store.json"
    journal = tmp_path / "store.json.journal"
    broken = {"node": "n2", "dialect": "tigase"}  # no account, token…
    path.write_text(json.dumps(database({"n1": doc("n1"), "n2": broken, "n3": broken})))
    mended = (json.dumps(["registrations", "n2", doc("n2")]) + "\n"
              + json.dumps(["registrations", "n3", None]) + "\n")
    journal.write_text(mended)
    store = await opened(path)
    assert [r.node for r in store.registrations()] == ["n1", "n2"]
    journal.write_text(mended + json.dumps(["registrations", "n1", {"node": "n1"}]) + "\n")
    with pytest.raises(StoreError, match="registration 'n1' in the store is invalid: "
                                         "'dialect'"):
        await opened(path)


async def test_a_compaction_writes_the_snapshot_as_json_dump_did(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    store = await opened(path, read_only=False)
    await store.put(reg("n2", token=HEX))
    await store.put(reg("n1", account="bob@example.org", token="t1"))
    await store.set_doc("pending", "n1", {"text": "é \u0000 \ud800", "due": 1e-300})
    await store.compact()
    expected = database({"n2": reg("n2", token=HEX).to_doc(),
                         "n1": reg("n1", account="bob@example.org", token="t1").to_doc()},
                        pending={"n1": {"text": "é \u0000 \ud800", "due": 1e-300}})
    assert path.read_text() == json.dumps(expected, separators=(",", ":"))
    await store.close()


# -- PostgreSQL rows -----------------------------------------------------------------------
async def test_postgresql_builds_registrations_a_chunk_of_rows_at_a_time(
        postgres_server: PostgresServer, postgres_url: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """More rows than a chunk; a row of another shape (an older release's) still loads,
    one that is no object is logged."""
    writer = create_store(postgres_url)
    await writer.open()
    for i in range(11):
        await writer.put(reg(f"n{i:02d}", token=f"{i:064x}"))
    await writer.close()
    older = {k: v for k, v in doc("n99").items() if k != "channel_key"}
    postgres_server.psql(f"INSERT INTO registrations VALUES ('n99', '{json.dumps(older)}'); "
                         "INSERT INTO registrations VALUES ('list', '[1]')",
                         postgres_url.rsplit("/", 1)[1])
    monkeypatch.setattr(postgresql_store, "READ_CHUNK", 4)
    caplog.set_level(logging.ERROR)
    reader = create_store(postgres_url, read_only=True)
    await reader.open()
    try:
        assert len(reader) == 12 and reader.get("n99") == Registration.from_doc(doc("n99"))
        assert reader.get("n07") == reg("n07", token=f"{7:064x}")
        assert "registrations 'list' in the database is not a JSON object" in caplog.text
    finally:
        await reader.close()
