"""Hot standby: two `slixmpp-push serve` on one PostgreSQL store, one active, one waiting.

Set-up (tests/ha_support.py), all on 127.0.0.1: a private PostgreSQL (tests/postgres.py);
a real Prosody (0.12 and 13) with ``component_conflict_resolve = "kick_old"`` and the app
server's component ``push.localhost``; a trusted publisher account sending publishes
itself; the recording fake APNs in a process of its own; two ``serve`` processes with the
same configuration but their metrics ports; devices registering as real accounts of the
Prosody, through ad-hoc commands.

What must hold:

- one instance is active (connected, serving), the other a standby: /health/live 200,
  /health and /health/ready 503 saying "standby" and who is active, slixmpp_push_active 0;
  a standby stops at once, with status 0, on SIGTERM;
- the active one killed (SIGKILL) during a storm of publishes and registrations while
  APNs is down: the standby takes over, and once APNs is back every publish answered
  ``result`` is delivered (a newer one for the same node may replace an older one, as
  the app server coalesces), no registration answered ``completed`` is lost, and
  duplicates stay within what a crash with requests in flight explains;
- an active one that loses its lock connection (pg_terminate_backend) stops serving, and
  exits 1: here it is frozen (SIGSTOP, a hung host) when it loses it, the standby takes
  over (Prosody replaces the frozen one's stream: kick_old), and when it wakes it exits
  without taking the component back;
- the database stopped: the active one exits 1, the standby waits, and an instance
  started meanwhile waits too instead of failing; once the database is back, one of them
  is active again with every registration. A database that refuses the login, or has no
  such name, is no reason to wait: ``serve`` stops at once with one line.

The takeover times (kill → lock → XMPP session → first push) and the duplicates are
printed (``pytest -s``) and written to ``standby-record.json`` in the test's folder;
nothing is asserted about them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devservers import Prosody13Server
from ha_support import (
    COMPONENT,
    Instance,
    Storm,
    StormLedger,
    Watch,
    checked_duplicates,
    checked_storm,
    first_delivery_after,
    publish,
    register,
    register_all,
    report,
    rig,
    stopped,
)
from postgres import PASSWORD_ROLE, PostgresServer
from servers import SERVER_CLASSES, Connections, _xmpp_server_params, own_server
from test_fault_kill9 import check_deliveries, wait_delivered
from test_fault_stream import metric, until

from slixmpp_push import StoreError
from slixmpp_push.config import parse_config
from slixmpp_push.devserver import ProsodyServer
from slixmpp_push.server import serve

SEED = int(os.environ.get("STANDBY_SEED") or random.randrange(10**6))  # printed
ACCOUNTS = 4
DEVICES_EACH = 4  # registered before the storm; the storm adds up to STORM_REGISTRATIONS
PROSODY_RELEASES = [key for key in _xmpp_server_params() if key.startswith("prosody")]
RECORD = "standby-record.json"  # in the test's folder: the figures of report()


@pytest.fixture(scope="module", params=PROSODY_RELEASES)
def prosody(request: pytest.FixtureRequest) -> Iterator[ProsodyServer]:
    """Prosody replacing a component's stale connection by a new one."""
    cls = SERVER_CLASSES[request.param]
    assert issubclass(cls, ProsodyServer)
    options: dict[str, Any] = {"extra_config": ['component_conflict_resolve = "kick_old"']}
    if cls is Prosody13Server:
        options["cloud_notify_extensions"] = False  # not needed: no publish from Prosody
    yield from own_server(cls(**options))


def connected_and_active(instance: Instance) -> Any:
    async def check() -> bool:
        health = await instance.health()
        return bool(health and health["role"] == "active" and health["xmpp_connected"])
    return check


def took_lock(instance: Instance) -> Any:
    return lambda: f"taking over {COMPONENT}" in instance.text()


# -- the tests ------------------------------------------------------------------------------
async def test_the_active_killed_during_a_storm_loses_nothing(
        prosody: ProsodyServer, postgres_url: str, apns_key: Path, tmp_path: Path,
        xmpp: Connections) -> None:
    print(f"STANDBY_SEED={SEED}")
    rng = random.Random(SEED)
    ledger = StormLedger()
    async with rig(prosody, postgres_url, tmp_path, apns_key, xmpp, ACCOUNTS) as r:
        # Tokens from 1: a token of zeros only is no token Apple issued.
        await register_all(r, ledger, range(1, ACCOUNTS * DEVICES_EACH + 1))
        await r.apns.command("outage 503 ServiceUnavailable")
        storm = Storm(r, ledger, rng)
        await storm.run(rng.uniform(0.8, 1.5))
        acked_before_kill = ledger.acknowledged
        # Half the nodes get nothing after the kill: only the pending notifications the
        # dead instance left, resumed by the new one, can bring them their latest news.
        storm.spared = frozenset(ledger.nodes[::2])
        killed = time.monotonic()
        r.a.kill()
        watch = Watch()
        watch.start("kill to lock taken", took_lock(r.b), killed)
        watch.start("kill to XMPP session", connected_and_active(r.b), killed)
        await storm.run(1.0)  # through the gap and on, against the new active one
        await watch.wait()
        back = time.monotonic()
        answered = len(r.answers.answers())
        await r.apns.command("outage off")
        watch.start("APNs back to first push", first_delivery_after(r.answers, answered), back)
        await storm.run(1.0)  # APNs up: pushes now, and the kept ones
        await storm.settle()
        await wait_delivered(r.answers, ledger, r.b.log)
        times = await watch.wait()
        health = await r.b.health()
        assert health is not None and health["role"] == "active"
        exposition = await r.b.metrics()
        assert metric(exposition, "slixmpp_push_takeovers_total") == 1
        assert metric(exposition, "slixmpp_push_active") == 1
        await stopped(r.b)

    # Every registration answered completed is in the store, every publish answered
    # result delivered; nothing stays pending.
    figures = await checked_storm(r, ledger, postgres_url)
    # The storm did what it is for: answers before the kill and after the takeover, and
    # requests the kill cut short or that found no instance connected.
    assert acked_before_kill >= 20, ledger.sent
    assert ledger.acknowledged > acked_before_kill, ledger.sent
    assert ledger.unanswered + sum(ledger.refused.values()) > 0, ledger.sent
    assert len(storm.spared & set(ledger.acked)) >= 3, "too few nodes left to the takeover"
    report(tmp_path / RECORD, f"storm on {prosody.key()}", {**times, **figures})


async def test_a_standby_says_so_stops_at_once_and_takes_over(
        prosody: ProsodyServer, postgres_url: str, apns_key: Path, tmp_path: Path,
        xmpp: Connections) -> None:
    async with rig(prosody, postgres_url, tmp_path, apns_key, xmpp) as r:
        # The standby: alive, not ready, and it says who is active.
        health = await r.b.health()
        assert health is not None
        assert health["live"] is True and health["ready"] is False
        assert health["xmpp_connected"] is False
        assert f"slixmpp-push pid {r.a.pid} on " in health["standby"], health
        assert await r.b.get("/health/ready") == (503, b"not ready: standby\n")
        assert await r.b.get("/health/live") == (200, b"live\n")
        exposition = await r.b.metrics()
        assert metric(exposition, "slixmpp_push_active") == 0
        assert metric(exposition, "slixmpp_push_ready") == 0
        assert f"standby: {COMPONENT} is served by slixmpp-push pid" in r.b.text()
        # The active one says it is.
        active = await r.a.health()
        assert active is not None and active["role"] == "active" and active["ready"]
        # A standby stops at once on SIGTERM, with status 0.
        signalled = time.monotonic()
        await stopped(r.b)
        sigterm_exit = round(time.monotonic() - signalled, 3)
        r.b.start()
        await r.b.until("standby")

        # A takeover with APNs up, under a steady stream of publishes to a few devices.
        ledger = StormLedger()
        for user in range(1, 5):
            await register(r.devices[0], ledger, user)
        counts = itertools.count(1)
        sent: set[asyncio.Task[None]] = set()

        async def steady() -> None:
            for node in itertools.cycle(ledger.nodes):
                task = asyncio.ensure_future(publish(r.storm, ledger, node, next(counts), 2.0))
                sent.add(task)
                task.add_done_callback(sent.discard)
                await asyncio.sleep(0.005)

        publisher = asyncio.ensure_future(steady())
        try:
            await until(lambda: len(r.answers.delivered()) >= 40, "pushes through A")
            answered = len(r.answers.answers())
            killed = time.monotonic()
            r.a.kill()
            watch = Watch()
            watch.start("kill to lock taken", took_lock(r.b), killed)
            watch.start("kill to XMPP session", connected_and_active(r.b), killed)
            watch.start("kill to first push", first_delivery_after(r.answers, answered), killed)
            times = await watch.wait()
            await asyncio.sleep(0.3)  # and on for a while through B
        finally:
            publisher.cancel()
            if sent:
                await asyncio.wait(set(sent), timeout=5)
        assert not ledger.errors, ledger.errors
        await wait_delivered(r.answers, ledger, r.b.log)
        check_deliveries(r.answers, ledger)
        exposition = await r.b.metrics()
        assert metric(exposition, "slixmpp_push_takeovers_total") == 1
        assert metric(exposition, "slixmpp_push_active") == 1
        await stopped(r.b)
    report(tmp_path / RECORD, f"takeover on {prosody.key()}",
           {**times, "standby SIGTERM to exit": sigterm_exit,
            "acknowledged": ledger.acknowledged,
            "duplicates": checked_duplicates(r.answers, ledger),
            "unanswered": ledger.unanswered,
            "refused": {"/".join(k): n for k, n in ledger.refused.items()}})


async def test_an_active_that_lost_its_lock_stops_serving(
        prosody: ProsodyServer, postgres_server: PostgresServer, postgres_url: str,
        apns_key: Path, tmp_path: Path, xmpp: Connections) -> None:
    async with rig(prosody, postgres_url, tmp_path, apns_key, xmpp) as r:
        ledger = StormLedger()
        await register(r.devices[0], ledger, 1)
        (node,) = ledger.nodes
        # A hangs (a paused VM), and its lock connection is cut meanwhile.
        r.a.signal(signal.SIGSTOP)
        database = postgres_url.rsplit("/", 1)[1]
        ended = postgres_server.psql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE application_name LIKE 'slixmpp-push pid {r.a.pid} on %'", database)
        assert ended.strip() == "1"
        # B takes over although A's stream is still open: Prosody replaces it (kick_old).
        await r.b.until("active")
        await publish(r.storm, ledger, node, 1)
        assert ledger.acked == {node: [1]}, ledger.errors
        await until(lambda: r.answers.delivered(), "the push through B")
        # A wakes up, finds its lock gone, and stops instead of serving.
        r.a.signal(signal.SIGCONT)
        assert await r.a.exit_code() == 1, r.a.tail()
        assert f"lost the connection holding the active lock of {COMPONENT}" in r.a.text()
        # It did not take the component back: B's stream never dropped.
        health = await r.b.health()
        assert health is not None and health["xmpp_connected"], health
        exposition = await r.b.metrics()
        assert "slixmpp_push_xmpp_reconnects_total{" not in exposition, exposition
        await publish(r.storm, ledger, node, 2)
        assert ledger.acked == {node: [1, 2]}, ledger.errors
        await stopped(r.b)


async def test_the_database_stopped_and_started_again(
        prosody: ProsodyServer, own_postgres: PostgresServer, apns_key: Path, tmp_path: Path,
        xmpp: Connections) -> None:
    url = own_postgres.url(own_postgres.create_database())
    async with rig(prosody, url, tmp_path, apns_key, xmpp) as r:
        ledger = StormLedger()
        await register(r.devices[0], ledger, 1)
        (node,) = ledger.nodes
        await asyncio.to_thread(own_postgres.stop)
        # The active one cannot know who is active now: it stops.
        assert await r.a.exit_code() == 1, r.a.tail()
        assert "lost the connection holding the active lock" in r.a.text()

        async def waiting_for_the_database(instance: Instance) -> bool:
            health = await instance.health()
            return bool(health and health["standby"].startswith("database unreachable"))

        await until(lambda: waiting_for_the_database(r.b), "B waits for the database")
        # Started again while the database is down (systemd's restart), it waits too.
        r.a.start()
        await until(lambda: waiting_for_the_database(r.a), "A waits for the database")
        await asyncio.to_thread(own_postgres.start)

        async def roles() -> list[str] | None:
            found = [await instance.health() for instance in r.instances]
            if any(health is None for health in found):
                return None
            seen = sorted(health["role"] + ("+xmpp" if health["xmpp_connected"] else "")
                          for health in found if health is not None)
            return seen if "active+xmpp" in seen else None

        assert await until(roles, "one active again") == ["active+xmpp", "standby"]
        await publish(r.storm, ledger, node, 1)
        assert ledger.acked == {node: [1]}, ledger.errors
        await until(lambda: r.answers.delivered(), "the push after the restart")
        for instance in r.instances:
            await stopped(instance)


async def test_a_database_refusing_the_login_is_no_reason_to_wait(
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    (tmp_path / "component.secret").write_text("secret\n")
    nowhere = postgres_server.url("nowhere")
    without_password = postgres_server.url("postgres", PASSWORD_ROLE)
    cases = [(nowhere, f'{nowhere}: database "nowhere" does not exist'),
             (without_password, f'{without_password}: password authentication failed for '
                                f'user "{PASSWORD_ROLE}" (no password was given)')]
    for url, message in cases:
        config = parse_config({"xmpp": {"jid": COMPONENT,
                                        "secret_file": "component.secret"},
                               "appserver": {"store": url},
                               "apps": {"ios": {"type": "console"}}}, tmp_path)
        with pytest.raises(StoreError) as info:
            await asyncio.wait_for(serve(config, handle_signals=False), 30)
        assert str(info.value) == message
