"""Hot standby: two `slixmpp-push serve` on one PostgreSQL store, one active, one waiting.

Set-up, all on 127.0.0.1: a private PostgreSQL (tests/postgres.py); a real Prosody (0.12
and 13) with ``component_conflict_resolve = "kick_old"`` and the app server's component
``push.localhost``; an account of it, ``storm…@localhost``, plays a publisher the app
server trusts (``[appserver] trusted_publishers``, as a pager is), so that the test sends
publishes itself, through Prosody, and sees each answer; the fake APNs in a process of its
own (tests/fakes/recording_apns.py), writing down every answer it gives, whichever app
server asked; two ``serve`` processes with the same configuration but their metrics
ports. Devices register as real accounts of the Prosody, through ad-hoc commands.

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
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from devservers import Prosody13Server
from e2e import APNS_APP, apns_app_toml, execute
from fakes.control import FakeProcess
from fakes.recording_apns import RecordedAnswers
from fakes.xmpp_server import publish_iq
from postgres import PASSWORD_ROLE, PostgresServer
from servers import SERVER_CLASSES, Connections, _xmpp_server_params, make_account, own_server
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout
from test_fault_kill9 import Ledger, check_deliveries, delivered_by_node, wait_delivered
from test_fault_stream import metric, until
from test_metrics import http

from slixmpp_push import StoreError
from slixmpp_push.config import parse_config
from slixmpp_push.devserver import ProsodyServer, _free_ports
from slixmpp_push.server import serve
from slixmpp_push.store import PENDING, create_store

COMPONENT = "push.localhost"  # the Prosody fixture's component
SEED = int(os.environ.get("STANDBY_SEED") or random.randrange(10**6))  # printed
ACCOUNTS = 4
DEVICES_EACH = 4  # registered before the storm; the storm adds up to STORM_REGISTRATIONS
STORM_REGISTRATIONS = 12
MAX_IN_FLIGHT = 32
#: How the app server's publish errors may legitimately read while instances change:
#: the app server's own 'wait' (store or queue trouble), and Prosody's bounce while no
#: instance is connected (never an answer that makes a server drop a registration).
TRANSIENT = {("wait", "internal-server-error"), ("wait", "remote-server-timeout")}
PROSODY_RELEASES = [key for key in _xmpp_server_params() if key.startswith("prosody")]


@pytest.fixture(scope="module", params=PROSODY_RELEASES)
def prosody(request: pytest.FixtureRequest) -> Iterator[ProsodyServer]:
    """Prosody replacing a component's stale connection by a new one."""
    cls = SERVER_CLASSES[request.param]
    assert issubclass(cls, ProsodyServer)
    options: dict[str, Any] = {"extra_config": ['component_conflict_resolve = "kick_old"']}
    if cls is Prosody13Server:
        options["cloud_notify_extensions"] = False  # not needed: no publish from Prosody
    yield from own_server(cls(**options))


# -- the two instances -----------------------------------------------------------------------
@dataclass
class Instance:
    """One ``slixmpp-push serve`` process, its config and its log."""

    name: str
    config: Path
    metrics_port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            log.write(f"===== start {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "slixmpp_push.cli", "serve", "--config",
                 str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                cwd=self.config.parent)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.name} ---\n" + "\n".join(self.text().splitlines()[-lines:])

    async def health(self) -> dict[str, Any] | None:
        """GET /health (None while nothing answers)."""
        try:
            _, body = await http(self.metrics_port, b"GET /health HTTP/1.1\r\n\r\n")
        except OSError:
            return None
        return json.loads(body) if body else None

    async def get(self, path: str) -> tuple[int, bytes]:
        return await http(self.metrics_port, f"GET {path} HTTP/1.1\r\n\r\n".encode())

    async def until(self, role: str, timeout: float = 30.0) -> dict[str, Any]:
        """Its /health once it is ``role``: "active" (and connected) or "standby"."""
        async def check() -> dict[str, Any] | None:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}")
            health = await self.health()
            if health is None or health["role"] != role:
                return None
            return health if role == "standby" or health["xmpp_connected"] else None

        try:
            result: dict[str, Any] = await until(check, f"{self.name} {role}", timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.tail()}") from None
        return result

    async def exit_code(self, timeout: float = 20.0) -> int:
        """Wait (without blocking the loop) until it exits."""
        assert self.process is not None
        try:
            return await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still runs after {timeout} s:\n"
                                 + self.tail()) from None

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def write_config(folder: Path, name: str, prosody: ProsodyServer, store: str, publisher: str,
                 apns_port: int, ca_file: Path, key: Path, metrics_port: int) -> Path:
    """Both instances' config: the same but for the metrics port (one host here)."""
    (folder / "component.secret").write_text(prosody.component.secret + "\n")
    config = folder / f"{name}.toml"
    config.write_text(f"""
[xmpp]
mode = "component"
jid = "{prosody.component.jid}"
host = "{prosody.host}"
port = {prosody.component_port}
secret_file = "component.secret"
ping_interval = 5

[appserver]
store = "{store}"
trusted_publishers = ["{publisher}"]

[metrics]
listen = "127.0.0.1:{metrics_port}"

[delivery]
reply_within = 2.0
retry_base = 0.1
retry_max_delay = 0.4
rate_interval = 0

{apns_app_toml(key, f"127.0.0.1:{apns_port}", ca_file)}
""")
    return config


@dataclass
class Rig:
    """Everything one test runs: the two instances, the fake APNs and its record."""

    a: Instance
    b: Instance
    apns: FakeProcess
    answers: RecordedAnswers
    storm: ClientXMPP
    devices: list[ClientXMPP] = field(default_factory=list)

    @property
    def instances(self) -> tuple[Instance, Instance]:
        return self.a, self.b


@contextlib.asynccontextmanager
async def rig(prosody: ProsodyServer, store: str, folder: Path, key: Path,
              xmpp: Connections, accounts: int = 1) -> Any:
    """A active, B standby, the publisher and ``accounts`` device accounts; every process
    is stopped afterwards."""
    record = folder / "apns-answers.txt"
    publisher = await make_account(prosody, "storm")
    async with FakeProcess("fakes.recording_apns", "--ca-dir", str(folder / "ca"),
                           "--record", str(record)) as apns:
        ports = _free_ports(2, "127.0.0.1")
        instances = [
            Instance(name, write_config(folder, name, prosody, store, publisher.jid, apns.port,
                                        folder / "ca" / "ca.pem", key, port),
                     port, folder / f"{name}.log")
            for name, port in zip("ab", ports, strict=True)]
        a, b = instances
        try:
            a.start()
            await a.until("active")
            b.start()
            await b.until("standby")
            storm = await xmpp.client(prosody, publisher, resource="storm")
            the_rig = Rig(a, b, apns, RecordedAnswers(record), storm)
            for _ in range(accounts):
                account = await make_account(prosody, "dev")
                the_rig.devices.append(await xmpp.client(prosody, account, resource="phone"))
            yield the_rig
        finally:
            for instance in instances:
                if instance.process is not None:
                    with contextlib.suppress(ProcessLookupError):
                        instance.process.send_signal(signal.SIGCONT)
                instance.kill()


# -- the device side and the publisher -------------------------------------------------------
@dataclass
class StormLedger(Ledger):
    """What the app server acknowledged, and the transient refusals (TRANSIENT) seen."""

    refused: Counter[tuple[str, str]] = field(default_factory=Counter)


async def register(device: ClientXMPP, ledger: StormLedger, user: int) -> None:
    """register-device for one more device of ``device``'s account (its own token)."""
    token = f"{user:064x}"
    ledger.sent["register"] = ledger.sent.get("register", 0) + 1
    try:
        values = await execute(device, COMPONENT, "register-device",
                               {"provider": APNS_APP, "device-token": token})
    except IqTimeout:
        ledger.unanswered += 1
        return
    except IqError as error:
        said = (error.iq["error"]["type"], error.iq["error"]["condition"])
        if said not in TRANSIENT:
            ledger.errors.append(f"register {token[-6:]}: {said}")
        ledger.refused[said] += 1
        return
    (node,) = values["node"]
    ledger.registered[token] = (str(device.boundjid.bare), node)
    ledger.nodes.append(node)


async def publish(storm: ClientXMPP, ledger: StormLedger, node: str, count: int,
                  timeout: float = 5.0) -> None:
    """A publish as a trusted publisher sends it; its answer into the ledger."""
    ledger.sent["publish"] = ledger.sent.get("publish", 0) + 1
    ledger.published.setdefault(node, []).append(count)
    iq = storm.make_iq_set(ito=COMPONENT)
    iq.append(ET.fromstring(publish_iq(str(storm.boundjid), COMPONENT, node,
                                       message_count=count))[0])
    try:
        await iq.send(timeout=timeout)
    except IqTimeout:
        ledger.unanswered += 1
    except IqError as error:
        said = (error.iq["error"]["type"], error.iq["error"]["condition"])
        if said not in TRANSIENT:
            ledger.errors.append(f"publish {node} #{count}: {said}")
        ledger.refused[said] += 1
    else:
        ledger.acked.setdefault(node, []).append(count)


@dataclass
class Storm:
    """Publishes (and a few registrations) back to back, at most MAX_IN_FLIGHT at once."""

    rig: Rig
    ledger: StormLedger
    rng: random.Random
    counts: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    users: Iterator[int] = field(default_factory=lambda: itertools.count(1000))
    registrations_left: int = STORM_REGISTRATIONS
    spared: frozenset[str] = frozenset()  # nodes not published to (any more)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, duration: float) -> None:
        end = time.monotonic() + duration
        while time.monotonic() < end:
            if len(self.tasks) < MAX_IN_FLIGHT:
                if self.registrations_left and self.rng.random() < 0.02:
                    self.registrations_left -= 1
                    user = next(self.users)
                    job = register(self.rig.devices[user % len(self.rig.devices)],
                                   self.ledger, user)
                else:
                    node = self.rng.choice([n for n in self.ledger.nodes if n not in self.spared])
                    job = publish(self.rig.storm, self.ledger, node, next(self.counts))
                task = asyncio.ensure_future(job)
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            await asyncio.sleep(self.rng.uniform(0.0, 0.004))

    async def settle(self) -> None:
        """Until every request sent has its answer (or timed out)."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=20)


class Watch:
    """When, after a moment, something first became true (polled every 10 ms)."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, check: Any, since: float) -> None:
        async def poll() -> None:
            while True:
                result = check()
                if asyncio.iscoroutine(result):
                    result = await result
                if result:
                    self.seen[name] = round(time.monotonic() - since, 3)
                    return
                await asyncio.sleep(0.01)

        self._tasks.append(asyncio.ensure_future(poll()))

    async def wait(self, timeout: float = 30.0) -> dict[str, float]:
        done, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()
        assert not pending, f"not seen within {timeout} s: only {self.seen}"
        return self.seen


def report(folder: Path, name: str, figures: dict[str, Any]) -> None:
    print(f"\n{name}: {json.dumps(figures)}")
    path = folder / "standby-record.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, name: figures}, indent=1))


def connected_and_active(instance: Instance) -> Any:
    async def check() -> bool:
        health = await instance.health()
        return bool(health and health["role"] == "active" and health["xmpp_connected"])
    return check


def took_lock(instance: Instance) -> Any:
    return lambda: f"taking over {COMPONENT}" in instance.text()


def first_delivery_after(answers: RecordedAnswers, seen: int) -> Any:
    return lambda: any(status == 200 for status, _, _ in answers.answers()[seen:])


def checked_duplicates(answers: RecordedAnswers, ledger: StormLedger) -> int:
    """How many pushes APNs accepted once more (the same node and message count), after
    checking they are within what a crash explains: one request per node may be in
    flight when the process dies, so at most one duplicate per node."""
    counts = Counter((token, payload["unread-messages"])
                     for token, payload in answers.delivered())
    extra = {key: n - 1 for key, n in counts.items() if n > 1}
    per_node = Counter(token for token, _ in extra)
    assert all(n <= 1 for n in extra.values()), extra
    assert all(n <= 1 for n in per_node.values()), extra
    assert set(per_node) <= set(ledger.registered), extra
    return sum(extra.values())


async def stopped(instance: Instance) -> None:
    """SIGTERM; it must exit 0."""
    instance.signal(signal.SIGTERM)
    assert await instance.exit_code() == 0, instance.tail()


# -- the tests ------------------------------------------------------------------------------
async def test_the_active_killed_during_a_storm_loses_nothing(
        prosody: ProsodyServer, postgres_url: str, apns_key: Path, tmp_path: Path,
        xmpp: Connections) -> None:
    print(f"STANDBY_SEED={SEED}")
    rng = random.Random(SEED)
    ledger = StormLedger()
    async with rig(prosody, postgres_url, tmp_path, apns_key, xmpp, ACCOUNTS) as r:
        # Tokens from 1: a token of zeros only is no token Apple issued.
        await asyncio.gather(*(register(r.devices[user % ACCOUNTS], ledger, user)
                               for user in range(1, ACCOUNTS * DEVICES_EACH + 1)))
        assert len(ledger.registered) == ACCOUNTS * DEVICES_EACH, ledger.errors
        await r.apns.command("outage 503 ServiceUnavailable")
        storm = Storm(r, ledger, rng)
        await storm.run(rng.uniform(0.8, 1.5))
        acked_before_kill = sum(len(counts) for counts in ledger.acked.values())
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
        exposition = (await r.b.get("/metrics"))[1].decode()
        assert metric(exposition, "slixmpp_push_takeovers_total") == 1
        assert metric(exposition, "slixmpp_push_active") == 1
        await stopped(r.b)

    assert not ledger.errors, ledger.errors[:10]
    # The storm did what it is for: answers before the kill and after the takeover, and
    # requests the kill cut short or that found no instance connected.
    acknowledged = sum(len(counts) for counts in ledger.acked.values())
    assert acked_before_kill >= 20, ledger.sent
    assert acknowledged > acked_before_kill, ledger.sent
    assert ledger.unanswered + sum(ledger.refused.values()) > 0, ledger.sent
    assert len(storm.spared & set(ledger.acked)) >= 3, "too few nodes left to the takeover"
    # Every registration answered completed is in the store; nothing stays pending.
    store = create_store(postgres_url, read_only=True)
    await store.open()
    try:
        for token, (account, node) in ledger.registered.items():
            registration = store.get(node)
            assert registration is not None, f"acknowledged registration {node} is lost"
            assert (registration.account, registration.token) == (account, token)
        assert dict(store.table(PENDING)) == {}
    finally:
        await store.close()
    check_deliveries(r.answers, ledger)
    delivered = delivered_by_node(r.answers, ledger)
    report(tmp_path, f"storm on {prosody.key()}", {
        **times, "acknowledged": acknowledged,
        "refused": {"/".join(k): n for k, n in ledger.refused.items()},
        "delivered": sum(len(c) for c in delivered.values()),
        "duplicates": checked_duplicates(r.answers, ledger), "unanswered": ledger.unanswered,
        "registrations": len(ledger.registered)})


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
        exposition = (await r.b.get("/metrics"))[1].decode()
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
        exposition = (await r.b.get("/metrics"))[1].decode()
        assert metric(exposition, "slixmpp_push_takeovers_total") == 1
        assert metric(exposition, "slixmpp_push_active") == 1
        await stopped(r.b)
    report(tmp_path, f"takeover on {prosody.key()}",
           {**times, "standby SIGTERM to exit": sigterm_exit,
            "acknowledged": sum(len(c) for c in ledger.acked.values()),
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
        exposition = (await r.b.get("/metrics"))[1].decode()
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
