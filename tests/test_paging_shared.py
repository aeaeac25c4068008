"""Pages shared by two active instances on one real, private PostgreSQL (all-active).

Each instance is what ``serve`` runs: its own PostgreSQL store (following the other's
changes through LISTEN/NOTIFY), its own ``SharedState`` (the read-modify-writes), its own
``PageEngine`` and ``lead_pages`` (the pager lock). Their ``send`` records who sent what
and keeps who was paged through the engine, as the notifier plugin does. A pages from
the start (it takes the pager lock first); B waits for the lock.

What must hold: a page opened anywhere escalates on the leader only, each step sent
once; an ack on either instance stops the escalation, and one that comes while the
leader is escalating is never lost (before the escalation's write: the ack wins and the
step is not sent; during it: the ack lands on the escalated page); when the leader loses
its lock the other one takes over the remaining steps, each still sent once; a resolve
on one instance closes the page on the other.

Escalation steps wait 0.2 s; the tests wait for outcomes (``until``), never a fixed time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from postgres import PostgresServer, until

from slixmpp_push.metrics import Metrics
from slixmpp_push.models import Priority
from slixmpp_push.notifier import Page, PageEngine, PageState, Policy, Step
from slixmpp_push.notifier.paging import Change
from slixmpp_push.pager_leader import lead_pages
from slixmpp_push.store import PAGES, Store, create_store
from slixmpp_push.store.shared import SharedState

COMPONENT = "push.example.org"
WAIT = 0.2
#: A step that leaves the test time to act (ack, resolve, cut a lock) before the next.
LONG = 5 * WAIT
#: Three steps and a final notice: the leader escalates twice and sends the notice.
POLICY = Policy("oncall", (Step(("alice@x",), WAIT), Step(("bob@x",), WAIT),
                           Step(("carol@x",), WAIT)), final=("boss@x",))
#: (instance, page id, targets, reason) of every send, in order, of both instances.
Sent = list[tuple[str, str, tuple[str, ...], str]]


@dataclass
class Instance:
    name: str
    url: str
    store: Store
    shared: SharedState
    metrics: Metrics
    engine: PageEngine = field(init=False)
    leader: asyncio.Task[None] | None = None

    def lead(self) -> None:
        """Take part in the pager lock (serve does it at start)."""
        self.leader = asyncio.create_task(
            lead_pages(self.engine, self.url, COMPONENT, self.metrics))

    async def stop_leading(self) -> None:
        if self.leader is not None:
            self.leader.cancel()
            await asyncio.gather(self.leader, return_exceptions=True)
            self.leader = None

    def leader_gauge(self) -> float | None:
        return self.metrics.registry.get_sample_value("slixmpp_push_pager_leader")

    def page(self, page_id: str) -> Page | None:
        return self.engine.find(page_id)

    def stored(self, page_id: str) -> dict[str, Any] | None:
        """The page as this instance's store has it in memory."""
        return self.store.table(PAGES).get(page_id)


async def start(name: str, url: str, policy: Policy, sent: Sent) -> Instance:
    store = create_store(url)
    await store.open()
    shared = SharedState(url, owner=name)
    await shared.open()
    instance = Instance(name, url, store, shared, Metrics())

    async def send(page: Page, targets: tuple[str, ...], reason: str) -> None:
        sent.append((name, page.id, targets, reason))
        page.paged += [target for target in targets if target not in page.paged]
        await instance.engine.note(page, "sent", reason)  # as the notifier plugin does

    instance.engine = PageEngine(store, {policy.name: policy}, send,
                                 instance.metrics.pager(), shared=shared, leading=False)
    instance.engine.resume()
    return instance


async def stop(instance: Instance) -> None:
    await instance.stop_leading()
    await instance.engine.stop()
    await instance.shared.close()
    await instance.store.close()


@asynccontextmanager
async def two_instances(url: str, policy: Policy = POLICY,
                        ) -> AsyncIterator[tuple[Instance, Instance, Sent]]:
    """A (the leader) and B (waiting for the pager lock), and what both send."""
    sent: Sent = []
    a = await start("A", url, policy, sent)
    b = await start("B", url, policy, sent)
    try:
        a.lead()
        await until(lambda: a.engine.leading, "A leads")
        b.lead()  # waits for the lock while A holds it
        yield a, b, sent
    finally:
        await stop(b)
        await stop(a)


def sends(sent: Sent, page_id: str) -> list[tuple[str, tuple[str, ...], str]]:
    """(instance, targets, reason) of the sends of one page."""
    return [(who, targets, reason) for who, page, targets, reason in sent if page == page_id]


async def open_page(instance: Instance) -> Page:
    page, created = await instance.engine.open("db1", "Disk full on db1", "", Priority.HIGH,
                                               POLICY.name, source="alertmanager")
    assert created
    return page


async def test_a_page_opened_on_one_instance_escalates_on_the_leader_only(
        postgres_url: str) -> None:
    async with two_instances(postgres_url) as (a, b, sent):
        page = await open_page(b)
        await until(lambda: any(reason == "final" for *_, reason in sent), "the final notice")
        await until(lambda: (p := b.page(page.id)) is not None and p.state is
                    PageState.EXHAUSTED and "boss@x" in p.paged, "B sees the final notice")
        assert sends(sent, page.id) == [("B", ("alice@x",), "page"),  # the opener: step 1
                                        ("A", ("bob@x",), "page"),
                                        ("A", ("carol@x",), "page"),
                                        ("A", ("boss@x",), "final")]
        # Nothing is left to fire, on either: each step went out once.
        assert a.engine.scheduled() == set() and b.engine.scheduled() == set()
        assert not b.engine.leading and (a.leader_gauge(), b.leader_gauge()) == (1.0, 0.0)
        # Who was paged is kept on the page, wherever the send ran: an ack may come anywhere.
        assert b.page(page.id).paged == ["alice@x", "bob@x", "carol@x", "boss@x"]


async def test_an_ack_on_the_other_instance_stops_the_leaders_escalation(
        postgres_url: str) -> None:
    policy = Policy("oncall", (Step(("alice@x",), WAIT), Step(("bob@x",), LONG),
                               Step(("carol@x",), WAIT)))
    async with two_instances(postgres_url, policy) as (a, b, sent):
        page = await open_page(a)
        await until(lambda: len(sends(sent, page.id)) == 2, "the second step")
        on_b = await until(lambda: b.page(page.id), "B knows the page")
        await until(lambda: "bob@x" in on_b.paged, "B knows bob@x was paged")
        await b.engine.ack(on_b, "bob@x")
        assert on_b.state is PageState.ACKED and on_b.acked_by == "bob@x"
        # The leader follows: its timer for the third step is gone, so it cannot fire.
        await until(lambda: page.state is PageState.ACKED and page.id not in
                    a.engine.scheduled(), "A stops escalating")
        assert page.acked_by == "bob@x"
        assert sends(sent, page.id) == [("A", ("alice@x",), "page"),
                                        ("A", ("bob@x",), "page")]


class AckFirst:
    """A's shared state, with B's ack run between A deciding an escalation and writing it."""

    def __init__(self, shared: SharedState, ack: Callable[[], Awaitable[None]]) -> None:
        self.shared = shared
        self.ack: Callable[[], Awaitable[None]] | None = ack

    async def modify(self, table: str, key: str, change: Change) -> dict[str, Any] | None:
        ack, self.ack = self.ack, None
        if ack is not None:
            await ack()
        return await self.shared.modify(table, key, change)


async def test_an_ack_that_comes_while_the_leader_escalates_wins(postgres_url: str) -> None:
    async with two_instances(postgres_url) as (a, b, sent):
        page = await open_page(b)
        await until(lambda: a.page(page.id), "A knows the page")
        acked = asyncio.Event()

        async def ack_on_b() -> None:
            await b.engine.ack(page, "alice@x")
            acked.set()

        # A's timer fires with the page still open at step 1 in A's memory: A decides to
        # escalate, and B's ack commits before A's write.
        a.engine.shared = AckFirst(a.shared, ack_on_b)
        await until(acked.is_set, "B's ack inside A's escalation")
        on_a = a.page(page.id)
        await until(lambda: on_a.state is PageState.ACKED and not a.engine.scheduled(),
                    "A takes the stored (acknowledged) page as the truth")
        assert sends(sent, page.id) == [("B", ("alice@x",), "page")]  # step 2 never went
        assert a.stored(page.id)["state"] == b.stored(page.id)["state"] == "acked"
        assert on_a.step == 0 and on_a.acked_by == "alice@x"


class AckDuring:
    """A's shared state, starting B's ack while A's escalation holds the page's row."""

    def __init__(self, shared: SharedState, ack: Callable[[], Awaitable[None]]) -> None:
        self.shared = shared
        self.ack: Callable[[], Awaitable[None]] | None = ack
        self.acking: asyncio.Future[None] | None = None

    async def modify(self, table: str, key: str, change: Change) -> dict[str, Any] | None:
        def change_then_ack(doc: dict[str, Any] | None) -> dict[str, Any] | None:
            if self.ack is not None:  # inside A's transaction: the row is locked
                self.acking = asyncio.ensure_future(self.ack())
                self.ack = None
            return change(doc)

        return await self.shared.modify(table, key, change_then_ack)


async def test_an_ack_during_the_leaders_write_lands_on_the_escalated_page(
        postgres_url: str) -> None:
    async with two_instances(postgres_url) as (a, b, sent):
        page = await open_page(b)
        await until(lambda: a.page(page.id), "A knows the page")
        during = AckDuring(a.shared, lambda: b.engine.ack(page, "alice@x"))
        a.engine.shared = during
        await until(lambda: during.acking is not None and during.acking.done(),
                    "B's ack, waiting for A's escalation to commit")
        during.acking.result()  # B's ack raised nothing
        on_a = a.page(page.id)
        await until(lambda: on_a.state is PageState.ACKED and not a.engine.scheduled()
                    and "bob@x" in on_a.paged, "A follows the ack")
        # The escalation won the row: its step went out once; the ack is kept on top of it,
        # and A's record of the send (written after the ack) did not undo it.
        assert sends(sent, page.id) == [("B", ("alice@x",), "page"),
                                        ("A", ("bob@x",), "page")]
        stored = await until(lambda: (doc := b.stored(page.id)) is not None
                             and "bob@x" in doc["paged"] and doc, "B's store follows")
        assert (stored["state"], stored["step"], stored["acked_by"]) == ("acked", 1, "alice@x")
        events = [event for _, event, *_ in stored["history"]]
        assert events.count("acked") == 1 and events.count("step") == 2


async def test_when_the_leader_loses_its_lock_the_other_escalates_the_rest_once(
        postgres_server: PostgresServer, postgres_url: str) -> None:
    policy = Policy("oncall", (Step(("level1@x",), WAIT), Step(("level2@x",), LONG),
                               Step(("level3@x",), WAIT), Step(("level4@x",), WAIT)),
                    final=("boss@x",))
    async with two_instances(postgres_url, policy) as (a, b, sent):
        page, _ = await a.engine.open("db1", "Disk full", "", Priority.HIGH, "oncall")
        await until(lambda: len(sends(sent, page.id)) == 2, "A's first escalation")
        # A's lock connection is cut (a network cut, a database failover): A stops leading
        # at once, B (blocked on the lock) takes it, and A waits for it again.
        database = postgres_url.rsplit("/", 1)[1]
        ended = await asyncio.to_thread(
            postgres_server.psql,
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND granted AND database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())", database)
        assert ended.split() == ["t"]  # one lock held: A's
        await until(lambda: b.engine.leading and not a.engine.leading, "B leads instead")
        await until(lambda: any(reason == "final" for *_, reason in sent), "the final notice")
        assert [(targets, reason) for _, targets, reason in sends(sent, page.id)] == [
            (("level1@x",), "page"), (("level2@x",), "page"), (("level3@x",), "page"),
            (("level4@x",), "page"), (("boss@x",), "final")]
        assert [who for who, *_ in sends(sent, page.id)] == ["A", "A", "B", "B", "B"]
        assert (a.leader_gauge(), b.leader_gauge()) == (0.0, 1.0)
        # A kept trying: when B stops, A leads again.
        await b.stop_leading()
        assert not b.engine.leading and b.leader_gauge() == 0.0
        await until(lambda: a.engine.leading, "A leads again")
        assert a.leader_gauge() == 1.0


async def test_a_resolve_on_one_instance_closes_the_page_on_the_other(
        postgres_url: str) -> None:
    policy = Policy("oncall", (Step(("alice@x",), LONG), Step(("bob@x",), WAIT)))
    async with two_instances(postgres_url, policy) as (a, b, sent):
        page = await open_page(b)
        on_a = await until(lambda: a.page(page.id), "A knows the page")
        assert page.id in a.engine.scheduled()
        await a.engine.resolve(on_a, "carol@x")
        assert on_a.state is PageState.RESOLVED and a.page(page.id) is None
        assert not a.engine.scheduled()
        await until(lambda: b.page(page.id) is None, "B forgets the page")
        assert page.state is PageState.RESOLVED  # B's copy, as its holders see it
        assert b.engine.by_key("db1") is None and b.stored(page.id) is None
        # Opening the key again is a new page, anywhere.
        again = await open_page(b)
        assert again.id != page.id
        assert sends(sent, page.id) == [("B", ("alice@x",), "page")]
