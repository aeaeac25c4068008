"""The delivery engine: immediate send, durable queue, retries, rate limit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from fakes.scripted import ScriptedProvider

from slixmpp_push import (
    AppConfig,
    DeliveryPolicy,
    DeliveryResult,
    Dialect,
    MemoryStore,
    Notification,
    Outcome,
    Registration,
    Store,
    Submitted,
    TinyDBStore,
)
from slixmpp_push.appserver.delivery import Delivery, QueueFull, RateLimiter

APP = AppConfig(id="ios", type="apns", topic="org.example")
RETRY = DeliveryResult(Outcome.RETRY, 503, "ServiceUnavailable")


def registration(node: str = "n1") -> Registration:
    return Registration(node=node, account="a@example.org", domain="example.org", app="ios",
                        token="t-" + node, dialect=Dialect.TIGASE)


def note(count: int) -> Notification:
    return Notification(message_count=count, received_at=time.time())


class Harness:
    def __init__(self, store: Store, policy: DeliveryPolicy) -> None:
        self.store = store
        self.provider = ScriptedProvider(APP)
        self.dead: list[Registration] = []
        self.delivery = Delivery(store, {"ios": self.provider}, policy, self._dead)

    async def _dead(self, reg: Registration, result: DeliveryResult) -> None:
        self.dead.append(reg)

    def counts(self) -> list[int | None]:
        return [r.payload.get("unread-messages") for r in self.provider.sent]  # type: ignore

    async def settle(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.delivery.pending_count or self.delivery._inflight:
            assert time.monotonic() < deadline, "delivery did not settle"
            await asyncio.sleep(0.02)


async def harness(policy: DeliveryPolicy, store: Store | None = None) -> Harness:
    store = store if store is not None else MemoryStore()
    await store.open()
    for node in ("n1", "n2"):
        await store.put(registration(node))
    return Harness(store, policy)


async def test_delivered_at_once() -> None:
    h = await harness(DeliveryPolicy())
    assert await h.delivery.submit(registration(), note(1)) is Submitted.DELIVERED
    assert h.counts() == [1]
    assert h.store.table("pending") == {}


async def test_rate_limit_coalesces_a_burst_into_the_latest() -> None:
    h = await harness(DeliveryPolicy(rate_burst=2, rate_interval=0.2))
    answers = [await h.delivery.submit(registration(), note(i)) for i in range(1, 11)]
    assert answers[:2] == [Submitted.DELIVERED, Submitted.DELIVERED]
    assert set(answers[2:]) == {Submitted.THROTTLED, Submitted.QUEUED}
    assert "n1" in h.store.table("pending")  # durably kept while throttled
    await h.settle()
    assert h.counts() == [1, 2, 10]  # nothing dropped: the latest went out


async def test_retry_honours_retry_after_then_delivers() -> None:
    h = await harness(DeliveryPolicy(retry_base=0.01))
    h.provider.script.append(DeliveryResult(Outcome.RETRY, 429, "TooManyRequests",
                                            retry_after=0.4))
    assert await h.delivery.submit(registration(), note(1)) is Submitted.QUEUED
    assert h.store.table("pending")["n1"]["attempts"] == 1
    await h.settle()
    first, second = h.provider.times
    assert second - first >= 0.39
    assert h.store.table("pending") == {}


async def test_newer_notification_replaces_the_pending_one_during_an_outage() -> None:
    h = await harness(DeliveryPolicy(retry_base=0.1, retry_max_delay=0.2))
    h.provider.always = RETRY
    for i in (1, 2, 3):
        assert await h.delivery.submit(registration(), note(i)) is Submitted.QUEUED
    assert h.delivery.pending_count == 1
    await asyncio.sleep(0.5)
    h.provider.always = None
    await h.settle()
    assert h.counts()[-1] == 3 and 1 not in h.counts()[1:]


async def test_gives_up_after_the_bound() -> None:
    h = await harness(DeliveryPolicy(retry_base=0.05, retry_max_delay=0.1, give_up_after=0.3))
    h.provider.always = RETRY
    await h.delivery.submit(registration(), note(1))
    await h.settle(timeout=3)
    assert h.delivery.stats["given_up"] == 1
    assert h.store.table("pending") == {}


async def test_slow_provider_is_queued_durably_then_settled_once() -> None:
    h = await harness(DeliveryPolicy(reply_within=0.05))
    h.provider.delay = 0.3
    began = time.monotonic()
    assert await h.delivery.submit(registration(), note(1)) is Submitted.QUEUED
    assert time.monotonic() - began < 0.25
    assert "n1" in h.store.table("pending")
    await h.settle()
    assert h.counts() == [1]  # not sent twice
    assert h.store.table("pending") == {}


async def test_a_provider_crash_is_retried_not_lost() -> None:
    h = await harness(DeliveryPolicy(retry_base=0.05))
    h.provider.script.append(RuntimeError("bug in a provider"))
    assert await h.delivery.submit(registration(), note(1)) is Submitted.QUEUED
    await h.settle()
    assert h.counts() == [1, 1]


async def test_dead_token_is_reported_and_nothing_kept() -> None:
    h = await harness(DeliveryPolicy())
    h.provider.script.append(DeliveryResult(Outcome.DEAD_TOKEN, 410, "Unregistered"))
    assert await h.delivery.submit(registration(), note(1)) is Submitted.DEAD_TOKEN
    assert [r.node for r in h.dead] == ["n1"]
    assert h.store.table("pending") == {}


async def test_pending_for_an_unregistered_node_is_dropped() -> None:
    h = await harness(DeliveryPolicy(retry_base=0.2))
    h.provider.script.append(RETRY)
    await h.delivery.submit(registration(), note(1))
    await h.store.remove("n1")
    await h.settle()
    assert h.counts() == [1]


async def test_queue_full_refuses_instead_of_dropping() -> None:
    h = await harness(DeliveryPolicy(max_pending=1, rate_burst=1, rate_interval=10))
    await h.delivery.submit(registration("n1"), note(1))
    await h.delivery.submit(registration("n1"), note(2))  # throttled: pending
    await h.delivery.submit(registration("n2"), note(1))  # n2 has its own bucket: sent
    with pytest.raises(QueueFull):
        await h.delivery.submit(registration("n2"), note(2))


async def test_pending_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    h = await harness(DeliveryPolicy(retry_base=5), TinyDBStore(path))
    h.provider.always = RETRY
    assert await h.delivery.submit(registration(), note(7)) is Submitted.QUEUED
    await h.delivery.stop()
    await h.store.close()

    again = Harness(TinyDBStore(path), DeliveryPolicy())
    await again.store.open()
    again.delivery.resume()
    # It was due in ~5 s: resume keeps the schedule. Make it due now to check content.
    again.delivery._schedule("n1", time.time())
    await again.settle()
    assert again.counts() == [7]
    await again.store.close()


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    delivery = Delivery(MemoryStore(), {}, DeliveryPolicy(retry_base=1, retry_max_delay=8),
                        on_dead_token=None)  # type: ignore[arg-type]
    for attempts, ceiling in ((1, 1), (2, 2), (3, 4), (4, 8), (9, 8)):
        delays = [delivery._backoff(attempts, None) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > 0  # jittered
    assert delivery._backoff(1, 30.0) == 30.0


def test_rate_limiter_refills() -> None:
    limiter = RateLimiter(burst=2, interval=1.0)
    assert limiter.take("n", 100.0) == 0 and limiter.take("n", 100.0) == 0
    assert limiter.take("n", 100.0) == pytest.approx(1.0)
    assert limiter.take("n", 101.5) == 0
    assert RateLimiter(burst=1, interval=0).take("n", 0) == 0
