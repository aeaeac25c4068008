"""All active: two `slixmpp-push serve` on one PostgreSQL store, both connected to ejabberd
for the same component domain at the same time.

ejabberd accepts several ``ejabberd_service`` connections for one component domain and
picks one of them at random for each stanza (its default ``domain_balancing``): a
registration may reach one instance and the next publish to it the other, and a reply to
an IQ an instance sent itself may reach the other one. Both instances run with
``[appserver] instances = "all-active"``.

Set-up (tests/ha_support.py), all on 127.0.0.1: a private PostgreSQL (tests/postgres.py);
a real ejabberd (23.01 and 24.12) of this module's own with the component
``push.localhost``; a trusted publisher account sending publishes itself; the recording
fake APNs in a process of its own; the two ``serve`` processes; devices registering as
real accounts of the ejabberd, through ad-hoc commands. Which instance answered a request
is read from the instances' counters (``commands_total``, ``publishes_total``) around it.

What must hold:

- both are healthy and serving: /health 200 with role "active", slixmpp_push_active 1;
  they keep their streams (no reconnection: nothing waits for a reply ejabberd may give
  to the other one); publishes are balanced over both (each one's
  ``slixmpp_push_publishes_total{outcome="result"}`` grows), and after each the device
  is woken (below), nothing twice;
- a registration answered by one is used by the other for the very next publish, and a
  registration removed through one is refused (item-not-found) by the other;
- one killed (SIGKILL) during a storm of publishes and registrations while APNs is down,
  a device with a token APNs refuses among them: once APNs is back, after every publish
  answered ``result`` its device is woken, the notifications the dead one had leased
  included,
  no registration answered ``completed`` is lost, duplicates stay within what a crash
  with requests in flight explains, the refused token's registration is dropped (a
  publish to it answered item-not-found), the survivor never lost its stream, and nothing
  hangs: every request sent after the storm is answered.

"Woken" (:func:`ha_support.unwoken`): APNs accepts a push for the node after the publish
was sent. Two publishes for one node that reach the two instances a moment apart race like
any two requests to two servers; each instance keeps the one it received last, so the
device may end on either count, but never stays asleep after a publish that was answered.

The takeover times (kill → lease taken over → first push of a notification the dead one
had leased) and the duplicates are printed (``pytest -s``) and written to
``active-active-record.json`` in the test's folder; nothing is asserted about them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ha_support as ha
import pytest
from e2e import APNS_APP, execute
from postgres import PostgresServer
from prometheus_client.parser import text_string_to_metric_families
from servers import SERVER_CLASSES, Connections, _xmpp_server_params, own_server
from slixmpp import ClientXMPP
from test_fault_kill9 import log_tail
from test_fault_stream import metric, until

from slixmpp_push.config import ALL_ACTIVE
from slixmpp_push.devserver import DevServer

SEED = int(os.environ.get("ACTIVE_ACTIVE_SEED") or random.randrange(10**6))  # printed
EJABBERD_RELEASES = [key for key in _xmpp_server_params() if key.startswith("ejabberd")]
RECORD = "active-active-record.json"  # in the test's folder: the figures of ha_support.report()
#: Short keepalives: an instance waiting for the answer to its own ping, which ejabberd
#: may hand to the other instance, would drop its stream within the test.
SETTINGS = ha.Settings(instances=ALL_ACTIVE, ping_interval=1.0, ping_timeout=2.0)
BOTH = ("active", "active")
ACCOUNTS = 4
DEVICES_EACH = 4  # registered before the storm; the storm adds up to STORM_REGISTRATIONS
#: At most this many tries for ejabberd's random pick to send a request to each instance
#: in the order a check needs (one in four per try: 60 all miss with odds of 3e-8).
TRIES = 60
BURST = 40  # publishes sent at once to the nodes registered (balanced over both)
DEAD_USER = 0  # token of zeros: no token Apple issued, APNs answers 400 BadDeviceToken
REGISTERED = ("slixmpp_push_commands_total", {"command": "register-device",
                                              "outcome": "completed"})
UNREGISTERED = ("slixmpp_push_commands_total", {"command": "unregister-device",
                                                "outcome": "completed"})
PUBLISHED = ("slixmpp_push_publishes_total", {"outcome": "result"})
REFUSED_GONE = ("slixmpp_push_publishes_total", {"outcome": "item-not-found"})


@pytest.fixture(scope="module", params=EJABBERD_RELEASES)
def ejabberd(request: pytest.FixtureRequest) -> Iterator[DevServer]:
    """An ejabberd of this module's own: no other test's component on its domain."""
    yield from own_server(SERVER_CLASSES[request.param]())


# -- which instance answered ------------------------------------------------------------------
def total(exposition: str, counter: tuple[str, dict[str, str]]) -> float:
    """The sum of the samples of ``counter`` (name, labels) over its other labels."""
    name, labels = counter
    return sum(sample.value for family in text_string_to_metric_families(exposition)
               for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


async def totals(r: ha.Rig, counter: tuple[str, dict[str, str]]) -> dict[str, float]:
    return {instance.name: total(await instance.metrics(), counter)
            for instance in r.instances if instance.process and instance.process.poll() is None}


async def answered_by(r: ha.Rig, counter: tuple[str, dict[str, str]], request: Awaitable[None],
                      ) -> str:
    """Send ``request`` alone; the name of the instance whose ``counter`` it made grow."""
    before = await totals(r, counter)
    await request
    after = await totals(r, counter)
    grew = [name for name, value in after.items() if value > before[name]]
    assert len(grew) == 1, (counter, before, after)
    return grew[0]


async def unregister(device: ClientXMPP, ledger: ha.StormLedger, token: str) -> None:
    """unregister-device for ``token``: it leaves the ledger's registrations, and its
    node is one a publish to is answered item-not-found from now on."""
    _, node = ledger.registered.pop(token)
    ledger.dead.add(node)
    await execute(device, ha.COMPONENT, "unregister-device",
                  {"provider": APNS_APP, "device-token": token})


async def both_active(r: ha.Rig) -> None:
    """/health 200, role active and connected, slixmpp_push_active 1, on both."""
    for instance in r.instances:
        status, body = await instance.get("/health")
        health = json.loads(body)
        assert status == 200, (instance.name, health)
        assert health["role"] == "active" and health["xmpp_connected"], (instance.name, health)
        assert metric(await instance.metrics(), "slixmpp_push_active") == 1, instance.name


async def reconnects(instance: ha.Instance) -> float:
    return total(await instance.metrics(), ("slixmpp_push_xmpp_reconnects_total", {}))


@dataclass(frozen=True)
class Database:
    """The test's database, read behind the instances' backs (as the superuser)."""

    server: PostgresServer
    name: str

    @classmethod
    def of(cls, server: PostgresServer, url: str) -> Database:
        return cls(server, url.rsplit("/", 1)[1])

    def leased_by(self, instance: ha.Instance) -> set[str]:
        """The nodes whose pending notification ``instance`` holds the lease of."""
        return set(self.server.psql(
            f"SELECT key FROM pending WHERE owner LIKE 'pid {instance.pid} on %'",
            self.name).split())

    def pending(self) -> str:
        """The pending table, one line a row: for a failure's message."""
        return self.server.psql(
            "SELECT key, owner, lease_until > now() AS live, version, "
            "doc->'notification'->>'message_count' AS count FROM pending ORDER BY key",
            self.name)


async def all_delivered(r: ha.Rig, ledger: ha.StormLedger, log: Path, database: Database,
                        ) -> None:
    """:func:`ha.wait_woken`; when it fails, what APNs answered for each node not woken,
    what the database still holds and the instance's log."""
    try:
        await ha.wait_woken(r.answers, ledger)
    except AssertionError as exc:
        token_of = {node: token for token, (_, node) in ledger.registered.items()}
        seen = [f"node {node}: acked {ledger.acked[node][-6:]}, APNs answered " + ", ".join(
                    f"{status} #{payload and payload.get('unread-messages')}"
                    for status, token, payload in r.answers.answers()
                    if token == token_of[node])
                for node in ha.unwoken(r.answers, ledger)]
        raise AssertionError("\n".join([str(exc), *seen, "pending (key|owner|live|version|count):",
                                        database.pending(), log_tail(log)])) from None


# -- the tests ------------------------------------------------------------------------------
async def test_both_serve_and_use_each_others_registrations(
        ejabberd: DevServer, postgres_server: PostgresServer, postgres_url: str,
        apns_key: Path, tmp_path: Path, xmpp: Connections) -> None:
    database = Database.of(postgres_server, postgres_url)
    async with ha.rig(ejabberd, postgres_url, tmp_path, apns_key, xmpp, 2, BOTH, SETTINGS) as r:
        await both_active(r)
        ledger = ha.StormLedger()
        counts = itertools.count(1)
        users = itertools.count(1)
        # Registered through one, published to through the other at once (both ways).
        used: Counter[tuple[str, str]] = Counter()
        for _ in range(TRIES):
            user = next(users)
            registrar = await answered_by(r, REGISTERED,
                                          ha.register(r.devices[user % 2], ledger, user))
            publisher = await answered_by(r, PUBLISHED, ha.publish(
                r.storm, ledger, ledger.nodes[-1], next(counts)))
            used[registrar, publisher] += 1
            if used["a", "b"] and used["b", "a"]:
                break
        assert not ledger.errors, ledger.errors
        assert used["a", "b"] and used["b", "a"], used

        # Balanced: a burst of publishes, answered by both.
        before = await totals(r, PUBLISHED)
        await asyncio.gather(*(ha.publish(r.storm, ledger, node, next(counts))
                               for node in itertools.islice(itertools.cycle(ledger.nodes),
                                                            BURST)))
        after = await totals(r, PUBLISHED)
        assert not ledger.errors, ledger.errors
        assert all(after[name] > before[name] for name in before), (before, after)
        await all_delivered(r, ledger, r.a.log, database)
        assert ha.checked_duplicates(r.answers, ledger) == 0  # no crash: nothing twice

        # Removed through one, refused by the other at the next publish (both ways).
        removed: Counter[tuple[str, str]] = Counter()
        for _ in range(TRIES):
            user = next(users)
            device = r.devices[user % 2]
            await ha.register(device, ledger, user)
            token = f"{user:064x}"
            node = ledger.registered[token][1]
            remover = await answered_by(r, UNREGISTERED, unregister(device, ledger, token))
            refuser = await answered_by(r, REFUSED_GONE,
                                        ha.publish(r.storm, ledger, node, next(counts)))
            assert node not in ledger.acked, node
            removed[remover, refuser] += 1
            if removed["a", "b"] and removed["b", "a"]:
                break
        assert not ledger.errors, ledger.errors
        assert removed["a", "b"] and removed["b", "a"], removed

        # Keepalives (every second) went on all along: neither lost its stream for want
        # of a reply that ejabberd handed to the other one.
        for instance in r.instances:
            await until(_up_for(instance, 5 * SETTINGS.ping_interval),
                        f"{instance.name} up for five keepalives")
        await both_active(r)
        for instance in r.instances:
            assert await reconnects(instance) == 0, instance.tail()
        await ha.check_store(postgres_url, ledger)
        for instance in r.instances:
            await ha.stopped(instance)
    ha.report(tmp_path / RECORD, f"balance on {ejabberd.key()}", {
        "publishes answered": {name: after[name] - before[name] for name in before},
        "registered then published": {"/".join(k): n for k, n in used.items()},
        "removed then refused": {"/".join(k): n for k, n in removed.items()}})


def _up_for(instance: ha.Instance, seconds: float) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        health = await instance.health()
        return bool(health and health["uptime_seconds"] >= seconds)
    return check


async def test_one_killed_during_a_storm_loses_nothing(
        ejabberd: DevServer, postgres_server: PostgresServer, postgres_url: str,
        apns_key: Path, tmp_path: Path, xmpp: Connections) -> None:
    print(f"ACTIVE_ACTIVE_SEED={SEED}")
    rng = random.Random(SEED)
    ledger = ha.StormLedger()
    database = Database.of(postgres_server, postgres_url)
    async with ha.rig(ejabberd, postgres_url, tmp_path, apns_key, xmpp, ACCOUNTS, BOTH,
                      SETTINGS) as r:
        await both_active(r)
        await ha.register_all(r, ledger, range(DEAD_USER, ACCOUNTS * DEVICES_EACH + 1))
        ledger.dead.add(ledger.registered[f"{DEAD_USER:064x}"][1])
        await r.apns.command("outage 503 ServiceUnavailable")
        storm = ha.Storm(r, ledger, rng)
        before = await totals(r, PUBLISHED)
        await storm.run(rng.uniform(0.8, 1.5))
        during = await totals(r, PUBLISHED)
        acked_before_kill = ledger.acknowledged
        # Half the nodes get nothing after the kill: what the dead one had leased of
        # them, only a takeover can bring.
        storm.spared = frozenset(ledger.nodes[::2])
        leased = database.leased_by(r.a)
        killed = time.monotonic()
        answered = len(r.answers.answers())
        r.a.kill()
        token_of = {node: token for token, (_, node) in ledger.registered.items()}
        leased_tokens = {token_of[node] for node in leased - ledger.dead if node in token_of}
        assert leased_tokens, f"the killed instance held no lease:\n{r.a.tail()}"

        def leased_delivered() -> bool:
            return any(status == 200 and token in leased_tokens
                       for status, token, _ in r.answers.answers()[answered:])

        async def lease_taken_over() -> bool:
            return bool(metric(await r.b.metrics(), "slixmpp_push_lease_takeovers_total"))

        watch = ha.Watch()
        watch.start("kill to lease taken over", lease_taken_over, killed)
        watch.start("kill to first push A had leased", leased_delivered, killed)
        await storm.run(1.0)  # on, against the survivor alone
        back = time.monotonic()
        await r.apns.command("outage off")
        watch.start("APNs back to first push", ha.first_delivery_after(r.answers, answered), back)
        await storm.run(1.0)  # APNs up: pushes now, and the kept ones
        await storm.settle()
        await all_delivered(r, ledger.deliverable(), r.b.log, database)
        times = await watch.wait()
        # The refused token's registration is gone: the survivor says so at once.
        (dead_node,) = ledger.dead
        gone = ledger.refused[ha.GONE]
        await ha.publish(r.storm, ledger, dead_node, next(storm.counts))
        assert ledger.refused[ha.GONE] == gone + 1, ledger.errors
        # Nothing hangs: the survivor answers at once.
        alive = [node for node in ledger.nodes if node not in ledger.dead]
        unanswered = ledger.unanswered
        await asyncio.gather(*(ha.publish(r.storm, ledger, node, next(storm.counts))
                               for node in alive[:10]))
        assert ledger.unanswered == unanswered, ledger.sent
        await all_delivered(r, ledger.deliverable(), r.b.log, database)
        await survived(r.b)
        await ha.stopped(r.b)

    # Every registration answered completed is in the store (the refused token's is not),
    # every publish answered result delivered; nothing stays pending.
    figures = await ha.checked_storm(r, ledger, postgres_url, ordered=False)
    # The storm did what it is for: both answered before the kill, the survivor after;
    # the dead one held leases, of spared nodes too; the refused token was published to.
    assert acked_before_kill >= 20, ledger.sent
    assert all(during[name] > before[name] for name in before), (before, during)
    assert ledger.acknowledged > acked_before_kill, ledger.sent
    assert storm.spared & leased, "no spared node left to the takeover"
    assert ledger.dead & set(ledger.acked), "no publish to the refused token acknowledged"
    ha.report(tmp_path / RECORD, f"storm on {ejabberd.key()}", {
        **times, **figures, "leased by the killed one": len(leased),
        "publishes answered before the kill": {name: during[name] - before[name]
                                               for name in before}})


async def survived(survivor: ha.Instance) -> None:
    """The survivor took over leases, serves, and never lost its stream."""
    exposition = await survivor.metrics()
    assert (metric(exposition, "slixmpp_push_lease_takeovers_total") or 0) >= 1
    assert metric(exposition, "slixmpp_push_active") == 1
    assert total(exposition, ("slixmpp_push_xmpp_reconnects_total", {})) == 0, survivor.tail()
    assert total(exposition, REFUSED_GONE) >= 1  # the refused token's node, dropped
