"""The metrics of a PostgreSQL store and of all-active instances, scraped from /metrics:
database round trips (``slixmpp_push_store_seconds{operation}``) reported by a real
PostgresStore and a real SharedState on the private PostgreSQL, and the queue age and
lease takeovers, present at 0 before anything happens (an alert sees 0, not nothing)."""

from __future__ import annotations

import time

from test_metrics import scrape, value

from slixmpp_push.metrics import STORE_BUCKETS, Metrics
from slixmpp_push.store.postgresql import PostgresStore
from slixmpp_push.store.shared import SharedState


async def test_commits_and_shared_state_round_trips_are_timed(postgres_url: str) -> None:
    metrics = Metrics()
    store = PostgresStore(postgres_url)
    store.observe = metrics.observe_store
    await store.open()  # creates the schema that SharedState works on
    shared = SharedState(postgres_url, owner="test", observe=metrics.observe_store)
    try:
        await store.set_doc("dead_tokens", "a", {"n": 1})
        await store.set_doc("dead_tokens", "b", {"n": 2})
        await shared.open()
        await shared.keep("node", {"n": 3})
        samples = await scrape(metrics)
    finally:
        await shared.close()
        await store.close()
    commits = value(samples, "slixmpp_push_store_seconds_count", operation="commit")
    assert commits >= 1  # two writes: one or two commits (group commit)
    assert value(samples, "slixmpp_push_store_seconds_sum", operation="commit") > 0
    assert value(samples, "slixmpp_push_store_seconds_count", operation="keep") == 1
    # Every commit fell in some bucket up to 5 s; the buckets are the documented ones.
    assert value(samples, "slixmpp_push_store_seconds_bucket", operation="commit",
                 le="5.0") == commits
    bounds = {float(dict(labels)["le"]) for name, labels in samples
              if name == "slixmpp_push_store_seconds_bucket"}
    assert bounds == {*map(float, STORE_BUCKETS), float("inf")}


async def test_queue_age_and_lease_takeovers_are_exposed_from_the_start() -> None:
    metrics = Metrics()
    samples = await scrape(metrics)
    assert value(samples, "slixmpp_push_lease_takeovers_total") == 0
    assert value(samples, "slixmpp_push_queue_oldest_seconds") == 0
    oldest = time.time() - 42
    metrics.queue_oldest.set_function(lambda: time.time() - oldest)
    metrics.lease_takeovers.inc(3)
    samples = await scrape(metrics)
    assert value(samples, "slixmpp_push_queue_oldest_seconds") >= 42
    assert value(samples, "slixmpp_push_lease_takeovers_total") == 3
