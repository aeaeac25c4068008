"""The packed registrations table (``store/packed.py``): every value comes back exactly,
the node and account indexes stay right through replacements, removals, growth and
arena rewrites (checked against a plain dict at every step), and a frozen copy is
independent of the table. The store's behaviour on top is in ``test_store.py`` and
``test_store_compact.py``; the memory it saves is measured by ``benchmarks/store.py``.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from test_store_compact import HEX, doc

from slixmpp_push import Dialect, Registration
from slixmpp_push.store import packed
from slixmpp_push.store.packed import RegistrationTable

ODD_VALUES = [HEX, HEX.upper(), "0123456789ABCDEFabcdef" * 3, HEX[:-1], "ab cd", "", "t",
              "ab" * 80, "ab" * 300, "é" * 200, "\ud800 lone surrogate", "x" * 70_000,
              12345, 1.5, True, None, ["a", 1], {"k": None}]


def registration(node: str = "n1", **values: Any) -> Registration:
    return Registration.from_doc(doc(node, **values))


def exactly(registration: Registration | None) -> str:
    """The document as JSON text: equal only if every value and its type came back."""
    assert registration is not None
    return json.dumps(registration.to_doc())


@pytest.mark.parametrize("value", ODD_VALUES)
def test_every_field_comes_back_exactly_by_put_and_by_put_stored(value: Any) -> None:
    given = doc(token=value, voip_token=value, secret=value, device_id=value,
                device_key=value, channel=value, channel_key=value, domain=value, app=value)
    if isinstance(value, (list, dict)):  # not a dict key: no app or domain of this shape
        given.update(domain="example.org", app="ios")
    by_object, by_doc = RegistrationTable(), RegistrationTable()
    by_object.put(Registration.from_doc(given))
    assert by_doc.put_stored("n1", dict(given))
    for table in (by_object, by_doc):
        assert exactly(table.get("n1")) == json.dumps(given)
        assert table.get("n1") == Registration.from_doc(given)
        (listed,) = table.values()
        assert exactly(listed) == json.dumps(given)
        (frozen,) = table.frozen()
        assert exactly(frozen) == json.dumps(given)
        (written,) = table.frozen().docs()  # what a compaction writes
        assert json.dumps(written) == json.dumps(given)


@pytest.mark.parametrize("created, updated", [
    (0.0, 0.0), (1.5, 1.5), (1.5, 2.5), (-0.0, 0.0), (7, 7), (7, 7.0), (float("nan"), 1.0),
    (1e-300, 1e-300), (None, 2.0)])
def test_timestamps_come_back_as_given(created: Any, updated: Any) -> None:
    given = doc(created=created, updated=updated)
    table = RegistrationTable()
    table.put(Registration.from_doc(given))
    table.put_stored("n2", doc("n2", created=created, updated=updated))
    for node in ("n1", "n2"):
        back = table[node].to_doc()
        assert json.dumps([back["created"], back["updated"]]) == json.dumps([created, updated])
    if type(created) is float and created and created == updated:
        for node in ("n1", "n2"):
            built = table[node]
            assert built.updated is built.created  # one float, as Registration keeps it


def test_long_nodes_and_accounts_are_found() -> None:
    table = RegistrationTable()
    long_node, long_account = "n" * 300, "a" * 2000 + "@example.org"
    table.put(registration(long_node, account=long_account))
    table.put(registration("n" * 255, account=long_account))
    table.put(registration("short", account="é@example.org"))
    assert table[long_node].account == long_account and "n" * 299 not in table
    assert [r.node for r in table.by_account(long_account)] == [long_node, "n" * 255]
    assert [r.node for r in table.by_account("é@example.org")] == ["short"]
    assert table.pop(long_node) == registration(long_node, account=long_account)
    assert [r.node for r in table.by_account(long_account)] == ["n" * 255]


def test_what_cannot_be_held_is_refused_and_changes_nothing() -> None:
    table = RegistrationTable()
    table.put(registration("n1"))
    for bad in (registration(None), registration("n2", account=None)):  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="node and account must be text"):
            table.put(bad)
    odd = registration("n3")
    odd.dialect = "nope"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="'nope' is not a valid Dialect"):
        table.put(odd)
    assert list(table) == ["n1"] and len(table) == 1
    # put_stored leaves what is not this release's document to Registration.from_doc.
    older = {k: v for k, v in doc().items() if k != "channel"}
    for key, document in (("n1", older), ("other", doc("n1")), ("n1", doc(dialect="nope")),
                          ("n1", {**doc(), "extra": 1}), ("n1", doc(account=7)),
                          ("n1", doc(app=["not", "hashable"]))):
        assert not table.put_stored(key, document)
    assert exactly(table["n1"]) == json.dumps(doc("n1"))


def test_a_replaced_registration_moves_to_the_end() -> None:
    table = RegistrationTable()
    for node in ("n1", "n2", "n3"):
        table.put(registration(node))
    table.put(registration("n1", token="t-new"))
    assert list(table) == ["n2", "n3", "n1"] and len(table) == 3
    assert table["n1"].token == "t-new"
    assert [r.node for r in table.by_account("alice@example.org")] == ["n2", "n3", "n1"]
    assert table.discard("n2") and not table.discard("n2")
    assert table.pop("n2") is None and table.get("n2") is None
    with pytest.raises(KeyError):
        table["n2"]
    assert table.count_by_app() == {"ios": 2}


def test_the_indexes_agree_with_a_dict_through_growth_removals_and_rewrites(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Random puts, replacements and removals over few accounts (long probe chains,
    many removed slots); the arena is rewritten early and often."""
    monkeypatch.setattr(packed, "MIN_COMPACTION", 512)
    rng = random.Random(11)
    table, model = RegistrationTable(), {}
    rewrites = 0
    for step in range(6000):
        node = f"n{rng.randrange(400)}"
        if rng.random() < 0.35:
            assert table.discard(node) == (model.pop(node, None) is not None)
        else:
            new = registration(node, account=f"u{rng.randrange(25)}@example.org",
                               token=rng.choice([HEX, f"t{step}"]),
                               voip_token=rng.choice([None, HEX]),
                               app=rng.choice(["ios", "android"]), created=float(step),
                               updated=float(step))
            if rng.random() < 0.5:
                table.put(new)
            else:
                assert table.put_stored(node, new.to_doc())
            model.pop(node, None)
            model[node] = new
        rewrites = max(rewrites, table._generation)
        if step % 500 == 0 or step == 5999:
            assert list(table) == list(model) and len(table) == len(model)
            assert list(table.values()) == list(model.values())
            for account in {r.account for r in model.values()} | {"nobody@example.org"}:
                assert table.by_account(account) == [
                    r for r in model.values() if r.account == account]
        assert table.get(node) == model.get(node)
    assert rewrites > 5  # the arena was rewritten, and everything was still found
    counts: dict[str, int] = {}
    for kept in model.values():
        counts[kept.app] = counts.get(kept.app, 0) + 1
    assert table.count_by_app() == counts


def test_an_iteration_fails_when_the_arena_is_rewritten(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed, "MIN_COMPACTION", 0)
    table = RegistrationTable()
    for number in range(10):
        table.put(registration(f"n{number}"))
    nodes = iter(table)
    assert next(nodes) == "n0"
    for number in range(6):
        table.discard(f"n{number}")  # dead records outgrow the live ones: rewritten
    with pytest.raises(RuntimeError, match="changed during iteration"):
        next(nodes)
    assert list(table) == [f"n{number}" for number in range(6, 10)]


def test_a_frozen_copy_and_a_copy_do_not_follow_the_table() -> None:
    table = RegistrationTable()
    table.put(registration("n1"))
    table.put(registration("n2", voip_token=HEX))
    frozen, twin = table.frozen(), table.copy()
    table.put(registration("n1", token="changed"))
    table.discard("n2")
    table.put(registration("n3"))
    assert len(frozen) == 2
    assert list(frozen) == [registration("n1"), registration("n2", voip_token=HEX)]
    assert list(twin.values()) == list(frozen)
    twin.put(registration("n4"))
    assert "n4" not in table and list(twin) == ["n1", "n2", "n4"]
    assert list(table) == ["n1", "n3"]


def test_a_typical_registration_takes_about_150_bytes() -> None:
    """Records and both indexes, for APNs registrations as Siskin makes them (a fixed
    count: the figure only depends on the code, not on the machine)."""
    table = RegistrationTable()
    for number in range(10_000):
        table.put_stored(f"{number:012d}", doc(f"{number:012d}",
                                               account=f"user{number}@example.org"))
    assert len(table) == 10_000
    assert table.nbytes / len(table) < 200
    assert table.get("000000000042") == registration("000000000042",
                                                     account="user42@example.org")
    assert table["000000000042"].dialect is Dialect.TIGASE


def test_a_load_sized_in_advance_takes_repeated_nodes_as_a_dict_would() -> None:
    """A hand-edited file may hold a node twice: the later document wins."""
    table = RegistrationTable()
    table.reserve(5)
    documents = [("n1", doc("n1")), ("n2", doc("n2", voip_token=HEX)),
                 ("n1", doc("n1", token="t-later")), ("n3", doc("n3", updated=2.0))]
    for key, document in documents * 3:  # more than reserved: the indexes grow
        assert table.put_stored(key, document)
    assert list(table) == ["n2", "n1", "n3"] and len(table) == 3
    assert table["n1"].token == "t-later"
    assert [r.node for r in table.by_account("alice@example.org")] == ["n2", "n1", "n3"]
    assert [json.dumps(d) for d in table.frozen().docs()] == [
        json.dumps(doc("n2", voip_token=HEX)), json.dumps(doc("n1", token="t-later")),
        json.dumps(doc("n3", updated=2.0))]
