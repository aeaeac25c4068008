"""Several active instances delivering from one PostgreSQL database (``all-active``).

Two (or three) Delivery engines, each with its own PostgresStore and SharedState on the
same private database, as two ``serve`` processes have; the providers are scripted
doubles (the leases, the shared rate budget and the settling are under test, not APNs).
Leases are short (0.6 s) so that a takeover happens within the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import pytest
from fakes.scripted import ScriptedProvider
from postgres import until
from test_delivery import APP, RETRY, note, registration

from slixmpp_push import DeliveryPolicy, DeliveryResult, Registration, Submitted
from slixmpp_push.appserver.delivery import Delivery
from slixmpp_push.metrics import Metrics
from slixmpp_push.store.postgresql import PostgresStore
from slixmpp_push.store.shared import SharedState

LEASE = 0.6
FAST_RETRY = DeliveryPolicy(retry_base=0.05, retry_max_delay=0.1, rate_burst=100,
                            rate_interval=0.01)


class Instance:
    """One app server's delivery side: its store, shared state, engine and provider."""

    def __init__(self, name: str, url: str, policy: DeliveryPolicy) -> None:
        self.name = name
        self.store = PostgresStore(url)
        self.shared = SharedState(url, owner=name, lease=LEASE)
        self.provider = ScriptedProvider(APP)
        self.metrics = Metrics()
        self.dead: list[Registration] = []
        self.delivery = Delivery(self.store, {"ios": self.provider}, policy, self._dead,
                                 self.metrics, shared=self.shared)

    async def _dead(self, reg: Registration, result: DeliveryResult) -> None:
        self.dead.append(reg)

    async def start(self) -> None:
        await self.store.open()
        await self.shared.open()
        await self.delivery.start()

    async def stop(self) -> None:
        await self.delivery.stop()
        await self.shared.close()
        await self.store.close()

    async def crash(self) -> None:
        """Gone without a word: timers stopped, leases neither renewed nor let go."""
        await self.delivery.stop()
        await self.shared.close(release=False)
        await self.store.close()

    def counts(self) -> list[int | None]:
        return [r.payload.get("unread-messages") for r in self.provider.sent]  # type: ignore



@pytest.fixture
async def instances(postgres_url: str) -> AsyncIterator[Callable[..., Instance]]:
    async with AsyncExitStack() as stack:
        async def make(name: str, policy: DeliveryPolicy = FAST_RETRY) -> Instance:
            instance = Instance(name, postgres_url, policy)
            await instance.start()
            stack.push_async_callback(instance.stop)
            return instance

        seed = PostgresStore(postgres_url)
        await seed.open()
        await seed.put(registration("n1"))
        await seed.put(registration("n2"))
        await seed.close()
        yield make  # type: ignore[misc]


def pending_rows(instance: Instance) -> dict[str, dict[str, object]]:
    return instance.store.table("pending")


async def test_a_notification_kept_by_a_killed_instance_is_delivered_by_another(
        instances: Callable[..., asyncio.Future[Instance]]) -> None:
    a = await instances("a")
    b = await instances("b")
    await until(lambda: b.store.get("n1"), "b sees the registration")
    a.provider.always = RETRY  # APNs down
    assert await a.delivery.submit(registration("n1"), note(7)) is Submitted.QUEUED
    await until(lambda: "n1" in pending_rows(b), "b sees a's pending row")
    await a.crash()
    # B sweeps it up once A's lease has run out, and delivers it.
    await until(lambda: b.counts() == [7], "b delivers the taken-over notification")
    await until(lambda: not pending_rows(b), "the row is settled")
    assert b.metrics.lease_takeovers._value.get() == 1  # type: ignore[attr-defined]


async def test_a_newer_notification_through_another_instance_replaces_the_leased_one(
        instances: Callable[..., asyncio.Future[Instance]]) -> None:
    a = await instances("a", DeliveryPolicy(retry_base=0.3, retry_max_delay=0.3))
    b = await instances("b")
    a.provider.always = RETRY
    assert await a.delivery.submit(registration("n1"), note(1)) is Submitted.QUEUED
    await until(lambda: "n1" in pending_rows(b), "b sees a's pending row")
    # B gets the next publish for the same node: A holds the lease, so B only replaces
    # the document, and A delivers the newer one at its next attempt (coalescing).
    assert await b.delivery.submit(registration("n1"), note(2)) is Submitted.QUEUED
    assert b.delivery.pending_count == 0  # A's to deliver
    a.provider.always = None
    await until(lambda: not pending_rows(a), "a delivers after the outage")
    assert a.counts()[-1] == 2 and 1 not in a.counts()[a.counts().index(2):]
    assert b.counts() == []


async def test_a_throttled_publish_is_delivered_by_the_instance_that_kept_it(
        instances: Callable[..., asyncio.Future[Instance]]) -> None:
    policy = DeliveryPolicy(rate_burst=1, rate_interval=0.5)
    a = await instances("a", policy)
    b = await instances("b", policy)
    assert await a.delivery.submit(registration("n1"), note(1)) is Submitted.DELIVERED
    # The shared budget of n1 is spent: B keeps the publish, and sends it when allowed.
    assert await b.delivery.submit(registration("n1"), note(2)) is Submitted.THROTTLED
    await until(lambda: b.counts() == [2] and not pending_rows(b), "b sends it later")
    assert a.counts() == [1]


async def test_the_rate_budget_of_a_node_is_one_across_instances(
        instances: Callable[..., asyncio.Future[Instance]]) -> None:
    policy = DeliveryPolicy(rate_burst=2, rate_interval=30.0)
    a = await instances("a", policy)
    b = await instances("b", policy)
    assert await a.delivery.submit(registration("n2"), note(1)) is Submitted.DELIVERED
    assert await b.delivery.submit(registration("n2"), note(2)) is Submitted.DELIVERED
    assert await a.delivery.submit(registration("n2"), note(3)) is Submitted.THROTTLED
    await until(lambda: "n2" in pending_rows(b), "b sees the throttled row")
    assert await b.delivery.submit(registration("n2"), note(4)) is Submitted.QUEUED
    await until(lambda: pending_rows(a).get("n2", {}).get("notification", {})
                .get("message_count") == 4, "the row holds the newest")
    # Another node's budget is its own.
    assert await b.delivery.submit(registration("n1"), note(5)) is Submitted.DELIVERED


async def test_concurrent_publishes_share_the_budget_exactly(
        instances: Callable[..., asyncio.Future[Instance]]) -> None:
    """Requests of one loop turn go in one statement; the budget still holds."""
    policy = DeliveryPolicy(rate_burst=3, rate_interval=30.0)
    a = await instances("a", policy)
    b = await instances("b", policy)
    shared = [a.shared, b.shared] * 10
    waits = await asyncio.gather(*(s.take_rate("n9", 3, 30.0) for s in shared))
    assert sorted(w == 0.0 for w in waits).count(True) == 3
    assert all(0 < w <= 90.0 for w in waits if w)


async def test_settling_an_older_version_keeps_the_newer_one(
        instances: Callable[..., asyncio.Future[Instance]]) -> None:
    a = await instances("a")
    version, mine, stored = await a.shared.keep("n1", {"x": 1})
    assert mine and stored is None
    newer, mine, stored = await a.shared.keep("n1", {"x": 2})
    assert newer > version and mine and stored is None
    left = await a.shared.settle("n1", version)
    assert left is not None and left.doc == {"x": 2} and left.version == newer
    assert await a.shared.settle("n1", newer) is None
    assert await a.shared.claim("n1") is None
    # Written anew after the delete: a version above any the key had, so that a late
    # settle of an old version cannot delete it.
    again, _, _ = await a.shared.keep("n1", {"x": 3})
    assert again > newer
    assert await a.shared.settle("n1", newer) is not None


async def test_an_older_notification_never_replaces_a_newer_one(
        instances: Callable[..., asyncio.Future[Instance]]) -> None:
    """Two instances keeping a node's notifications at once: whichever commits last, the
    one received last stays (the other is coalesced into it)."""
    a = await instances("a")
    b = await instances("b")
    newer = {"notification": {"received_at": 200.0}, "n": "newer"}
    older = {"notification": {"received_at": 100.0}, "n": "older"}
    version, mine, stored = await a.shared.keep("n1", newer)
    assert mine and stored is None
    assert await b.shared.keep("n1", older) == (version, False, newer)  # a's row, unchanged
    assert await a.shared.keep("n1", older) == (version, True, newer)
    leased = await a.shared.claim("n1")
    assert leased is not None and leased.doc == newer and leased.version == version
    later, mine, stored = await b.shared.keep("n1", {**newer, "n": "newest"})
    assert later > version and not mine and stored is None


async def test_unregistering_through_one_instance_drops_what_another_holds(
        instances: Callable[..., asyncio.Future[Instance]]) -> None:
    a = await instances("a", DeliveryPolicy(retry_base=0.2, retry_max_delay=0.2))
    b = await instances("b")
    a.provider.always = RETRY
    assert await a.delivery.submit(registration("n1"), note(1)) is Submitted.QUEUED
    await until(lambda: "n1" in pending_rows(b), "b sees the row")
    await b.delivery.drop("n1")
    await b.store.remove("n1")
    await until(lambda: "n1" not in pending_rows(a), "the row is gone for a too")
    sent = len(a.provider.sent)
    a.provider.always = None
    await asyncio.sleep(0.5)  # a's retry timer fires meanwhile: it must find nothing
    assert len(a.provider.sent) == sent
    assert a.delivery.pending_count == 0


async def test_a_clean_stop_lets_the_leases_go_at_once(
        instances: Callable[..., asyncio.Future[Instance]]) -> None:
    a = await instances("a", DeliveryPolicy(retry_base=0.2, retry_max_delay=0.2))
    b = await instances("b")
    a.provider.always = RETRY
    assert await a.delivery.submit(registration("n1"), note(3)) is Submitted.QUEUED
    await a.stop()
    assert b.metrics.lease_takeovers._value.get() == 0  # type: ignore[attr-defined]
    await until(lambda: b.counts() == [3], "b delivers what a let go")
    assert b.metrics.lease_takeovers._value.get() == 1  # type: ignore[attr-defined]


async def test_rate_batches_sharing_nodes_in_opposite_orders_do_not_deadlock(
        instances: Callable[..., asyncio.Future[Instance]]) -> None:
    """Each instance's publishes of one loop turn go in one statement; two statements
    locking the same nodes in opposite orders would deadlock (PostgreSQL then aborts one,
    and its publishes are answered 'wait')."""
    a = await instances("a")
    b = await instances("b")
    keys = [f"node-{i:05d}" for i in range(3000)]
    for _ in range(5):
        waits = await asyncio.gather(*(a.shared.take_rate(k, 1000, 0.001) for k in keys),
                                     *(b.shared.take_rate(k, 1000, 0.001)
                                       for k in reversed(keys)))
        assert waits == [0.0] * (2 * len(keys))
