"""Publishes/s of one app server against two all-active ones sharing one PostgreSQL.

    python benchmarks/cluster.py [--seconds 8] [--warmup 2] [--window 100] [--rate 400]
                                 [--registrations 10000] [--json FILE] [--keep]

Three set-ups, one after the other, each measured the same way:

(a) one ``slixmpp-push serve`` on a TinyDB store (the default set-up, today's baseline);
(b) one ``serve`` with ``[appserver] instances = "all-active"`` on a PostgreSQL store;
(c) two such ``serve`` processes sharing that database.

Every app server is a real ``serve`` process started from a config file, with the default
``[delivery]`` policy (the per-node rate limit on: in all-active mode it is one budget
per node in the database, taken by one statement per event-loop turn) and its metrics
port, read before and after each phase. The XMPP server's end of the component
connections is the load generator of ``publish_throughput.py`` (this process, speaking
XEP-0114 as a server would), here balancing as ejabberd does by default: each publish
goes to a random connection, for a random one of the registered nodes. The fake APNs
(answering 200) runs in its own process, PostgreSQL in its own private cluster with the
server's default durability (``tests/postgres.py``, as ``store.py`` starts it). The
registrations are written before the run: through the TinyDB store API, then copied into
the database with ``slixmpp-push store migrate``.

Two phases per set-up: the ceiling (``--window`` publishes outstanding per app server,
each reply sends the next) and a fixed offered rate (``--rate`` publishes/s, open loop,
the same for the three: round trip p50/p99 and CPU per publish at equal load). CPU is
read from /proc for each app server, for the PostgreSQL server with all its backends,
for the fake APNs and for this process; "others" is what the rest of the machine used.

Checked after each set-up (the exit status is 1 otherwise): every publish answered
``result``; the app servers' counters agree (publishes answered, requests to APNs = the
fake's count); nothing stays pending (metrics, and the database's ``pending`` table);
no ERROR line in the app servers' logs, nor in PostgreSQL's. A publish to a node with a
push in flight on the same instance is kept pending and sent after it, and one more
meanwhile replaces the pending one (coalesced): so requests <= results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# tests/ for the private PostgreSQL and the APNs app's TOML; the package; the benchmarks.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CpuMeter, FakeApnsChild, machine, pct, tree_cpu_seconds, write_p8_key
from e2e import apns_app_toml
from prometheus_client.parser import text_string_to_metric_families
from publish_throughput import PUBLISH, Phase, ServerStream, ms, seed
from store import Postgres, serve_config

from slixmpp_push.config import ALL_ACTIVE, ONE_ACTIVE
from slixmpp_push.devserver import _free_ports

PREFIX = "slixmpp_push_"
GENERATOR, FAKE, DATABASE = "load generator", "fake APNs", "PostgreSQL"
#: One app server's /metrics: (sample name, its labels) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# ===================================================================================
# The load generator: publish_throughput's ServerStream, balanced over connections
# ===================================================================================
def _balancer_state(name: str) -> Any:
    """A ServerStream attribute that a :class:`Connection` keeps in its balancer."""
    return property(lambda self: getattr(self.balancer, name),
                    lambda self, value: setattr(self.balancer, name, value))


class Balancer(ServerStream):
    """The XMPP server's end of every connection of the component, balancing as ejabberd
    does by default: each publish to a random connection, here for a random node. Its
    ``saturate``/``paced`` (ServerStream's) drive all connections as one: a reply on any
    of them frees a slot of the one window."""

    def __init__(self, secret: str, nodes: list[str], rng: random.Random) -> None:
        super().__init__(secret, asyncio.Queue(), nodes)
        self.connections: list[ServerStream] = []  # Connections, once their handshake is done
        self.random = rng
        self.sent_to: Counter[int] = Counter()  # publishes per connection

    def send(self, count: int) -> None:
        now = time.perf_counter()
        batches: list[list[str]] = [[] for _ in self.connections]
        pick, nodes, spread = self.random.choice, self.nodes, self.random.randrange
        for _ in range(count):
            ident = f"{self.counter:064x}"  # as long as Prosody's ids
            self.counter += 1
            self.outstanding[ident.encode()] = now
            batches[spread(len(batches))].append(PUBLISH.format(id=ident, node=pick(nodes)))
        for index, (connection, publishes) in enumerate(zip(self.connections, batches,
                                                            strict=True)):
            if publishes:
                self.sent_to[index] += len(publishes)
                connection.transport.write("".join(publishes).encode())  # type: ignore[union-attr]
        self.all_answered.clear()


#: What a Connection's replies are matched against and counted in: the balancer's.
SHARED = ("outstanding", "all_answered", "refill", "log", "results", "errors", "error_samples")


class Connection(ServerStream):
    """One component connection (one app server) of a :class:`Balancer`: the replies it
    reads are matched against, and counted in, the balancer's state, and a reply that
    frees a slot lets the balancer send the next publish wherever it picks."""

    outstanding = _balancer_state("outstanding")
    all_answered = _balancer_state("all_answered")
    refill = _balancer_state("refill")
    log = _balancer_state("log")
    results = _balancer_state("results")
    errors = _balancer_state("errors")
    error_samples = _balancer_state("error_samples")

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer
        kept = {name: getattr(balancer, name) for name in SHARED}
        super().__init__(balancer.secret, balancer.accepted, balancer.nodes)
        for name, value in kept.items():  # which ServerStream.__init__ just emptied
            setattr(balancer, name, value)

    def send(self, count: int) -> None:
        self.balancer.send(count)


# ===================================================================================
# The app servers: serve processes
# ===================================================================================
@dataclass(frozen=True)
class Setup:
    """One of the three measured set-ups."""

    key: str  # a, b, c
    label: str
    store: str  # a TinyDB file or a postgresql:// URL
    instances: str
    count: int  # serve processes

    @property
    def database(self) -> bool:
        return self.store.startswith("postgresql://")


@dataclass
class Instance:
    """One ``slixmpp-push serve`` process, its config, log and metrics port."""

    name: str
    folder: Path
    metrics_port: int
    process: asyncio.subprocess.Process | None = None

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def write_config(self, setup: Setup, port: int, secret: str, password_file: Path,
                     apps: str) -> Path:
        database = (f'instances = "{setup.instances}"\n'
                    f'store_password_file = "{password_file}"\n') if setup.database else ""
        return serve_config(self.folder, self.name, port, secret,
                            f'store = "{setup.store}"\n{database}',
                            f'[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n\n{apps}')

    async def start(self, config: Path) -> None:
        log = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "slixmpp_push.cli", "serve", "--config", str(config),
                stdout=log, stderr=subprocess.STDOUT, cwd=self.folder)
        finally:
            os.close(log)

    async def metrics(self) -> Samples:
        """Its /metrics."""
        def fetch() -> str:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as answer:
                return str(answer.read().decode())

        samples: Samples = {}
        for family in text_string_to_metric_families(await asyncio.to_thread(fetch)):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    async def stop(self) -> int:
        """SIGTERM; its exit status (it is killed after 30 s)."""
        process = self.process
        if process is None:
            return 0
        if process.returncode is not None:
            return process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
            return -9

    def exited(self) -> str | None:
        """None while it runs; else its exit status and the end of its log."""
        if self.process is None or self.process.returncode is None:
            return None
        tail = self.log.read_text(errors="replace").splitlines()[-15:]
        return f"{self.name} exited with status {self.process.returncode}:\n" + "\n".join(tail)

    def problems(self) -> list[str]:
        """The ERROR and Traceback lines of its log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]


def total(samples: list[Samples], name: str, **labels: str) -> float:
    """The sum of a metric over the instances' samples whose labels include ``labels``."""
    return sum(value for one in samples for (sample, have), value in one.items()
               if sample == PREFIX + name and set(labels.items()) <= set(have))


def store_round_trips(samples: list[Samples]) -> dict[str, tuple[float, float]]:
    """operation -> (database round trips, seconds in them), summed over the instances."""
    trips: dict[str, tuple[float, float]] = {}
    for one in samples:
        for (sample, labels), value in one.items():
            operation = dict(labels).get("operation")
            if operation is None or not sample.startswith(PREFIX + "store_seconds_"):
                continue
            count, seconds = trips.get(operation, (0.0, 0.0))
            if sample.endswith("_count"):
                trips[operation] = (count + value, seconds)
            elif sample.endswith("_sum"):
                trips[operation] = (count, seconds + value)
    return trips


async def connected(balancer: Balancer, instances: list[Instance], timeout: float = 120) -> None:
    """Wait until every instance has connected (serve opens its store and providers first);
    RuntimeError with its log if one exits meanwhile."""
    deadline = time.monotonic() + timeout
    while len(balancer.connections) < len(instances):
        with contextlib.suppress(TimeoutError):
            balancer.connections.append(await asyncio.wait_for(balancer.accepted.get(), 0.5))
        for instance in instances:
            if (ended := instance.exited()) is not None:
                raise RuntimeError(ended)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(balancer.connections)} of {len(instances)} app servers "
                               f"connected within {timeout:g} s")


def database_errors(log: Path, start: int) -> list[str]:
    """The ERRORs PostgreSQL logged after byte ``start`` of its log, counted by message."""
    with open(log, "rb") as handle:
        handle.seek(start)
        lines = handle.read().decode(errors="replace").splitlines()
    errors = Counter(line.split("ERROR:", 1)[1].strip() for line in lines if "ERROR:" in line)
    return [f"PostgreSQL logged {count} × ERROR: {message}" for message, count in errors.items()]


# ===================================================================================
# One set-up
# ===================================================================================
@dataclass
class Measured:
    """What one phase of one set-up measured."""

    phase: Phase
    instances: list[str]  # CPU names of the app servers
    trips: dict[str, tuple[float, float]]  # database round trips during the phase
    split: list[int]  # publishes sent to each connection

    @property
    def rate(self) -> float:
        return self.phase.rate

    def cpu_us(self, *names: str) -> float:
        """µs of CPU the named processes spent per publish answered."""
        if not self.phase.rate:
            return float("nan")
        return sum(self.phase.cpu.get(name, 0.0) for name in names) / self.phase.rate * 1e6

    @property
    def app_us(self) -> float:
        return self.cpu_us(*self.instances)

    @property
    def all_us(self) -> float:
        """µs of CPU per publish of every process of the set-up: app servers, PostgreSQL,
        fake APNs, load generator."""
        return self.cpu_us(*(name for name in self.phase.cpu if name != "others"))

    def bound(self, cores: int) -> float:
        """Publishes/s the set-up could sustain on ``cores`` idle cores at this CPU cost:
        each app server has one core at most (one event loop), all together ``cores``."""
        return min(len(self.instances) * 1e6 / self.app_us, cores * 1e6 / self.all_us)

    @property
    def busy(self) -> float:
        """Share of the whole machine in use (1.0 = one core)."""
        return sum(self.phase.cpu.values())

    @property
    def rate_statements(self) -> tuple[float, float] | None:
        """(publishes per rate-budget statement, its mean round trip in ms), all-active."""
        count, seconds = self.trips.get("rate", (0.0, 0.0))
        return (self.phase.sent / count, seconds / count * 1e3) if count else None


@dataclass
class Outcome:
    setup: Setup
    ceiling: Measured
    paced: Measured
    results: int  # over both phases, warm-ups included
    requests: int  # at the fake APNs
    problems: list[str] = field(default_factory=list)


async def run_setup(setup: Setup, args: argparse.Namespace, folder: Path, nodes: list[str],
                    fake: FakeApnsChild, apps: str, password_file: Path,
                    postgres: Postgres | None) -> Outcome:
    loop = asyncio.get_running_loop()
    secret = secrets.token_hex(12)
    balancer = Balancer(secret, nodes, random.Random(args.seed))
    server = await loop.create_server(lambda: Connection(balancer), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ports = _free_ports(setup.count)
    instances = [Instance(f"{setup.key}{i + 1}", folder, ports[i]) for i in range(setup.count)]
    problems: list[str] = []
    database_log = postgres.server.log if postgres is not None and setup.database else None
    log_start = database_log.stat().st_size if database_log is not None else 0
    try:
        for instance in instances:
            await instance.start(instance.write_config(setup, port, secret, password_file,
                                                       apps))
        await connected(balancer, instances)
        names = [f"app server {i + 1}" for i in range(setup.count)]
        pids: dict[str, Any] = {GENERATOR: "self", FAKE: fake.pid}
        pids |= {name: instance.pid for name, instance in zip(names, instances, strict=True)}
        if postgres is not None and setup.database:
            postmaster = postgres.server.pid
            pids[DATABASE] = lambda: tree_cpu_seconds(postmaster)
        requests_before = await fake.count()

        async def phase(run: Any) -> Measured:
            before = [await instance.metrics() for instance in instances]
            split = Counter(balancer.sent_to)
            measured = await run(CpuMeter(**pids))
            after = [await instance.metrics() for instance in instances]
            trips_before, trips_after = store_round_trips(before), store_round_trips(after)
            trips = {op: (count - trips_before.get(op, (0, 0))[0],
                          seconds - trips_before.get(op, (0, 0))[1])
                     for op, (count, seconds) in trips_after.items()}
            sent = [balancer.sent_to[i] - split[i] for i in range(setup.count)]
            return Measured(measured, names, trips, sent)

        window = args.window * setup.count
        ceiling = await phase(lambda meter: balancer.saturate(window, args.warmup,
                                                               args.seconds, meter))
        paced = await phase(lambda meter: balancer.paced(args.rate, args.warmup,
                                                          args.seconds, meter))
        # Everything answered: what was kept pending must drain, then the counts agree.
        deadline = time.monotonic() + 30
        while True:
            samples = [await instance.metrics() for instance in instances]
            if total(samples, "retry_queue_depth") == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        left = total(samples, "retry_queue_depth")
        if left:
            problems.append(f"{left:.0f} notifications still pending 30 s after the last "
                            "publish was answered")
        requests = await fake.wait_for(requests_before + balancer.results, timeout=2)
        requests -= requests_before
        answered = total(samples, "publishes_total", outcome="result")
        sent_ok = total(samples, "provider_requests_total", status="200")
        if balancer.errors:
            problems.append(f"{balancer.errors} publishes answered with an error")
        if answered != balancer.results:
            problems.append(f"the app servers counted {answered:.0f} publishes answered "
                            f"'result', the load generator {balancer.results}")
        if sent_ok != requests:
            problems.append(f"the app servers counted {sent_ok:.0f} requests accepted by APNs, "
                            f"the fake APNs received {requests}")
        if postgres is not None and setup.database:
            rows = postgres.server.psql("SELECT count(*) FROM pending",
                                        database=setup.store.rsplit("/", 1)[1]).strip()
            if rows != "0":
                problems.append(f"{rows} rows left in the database's pending table")
    finally:
        for instance in instances:
            status = await instance.stop()
            if status != 0:
                problems.append(f"{instance.name} exited with status {status}")
            problems += [f"{instance.name} log: {line}" for line in instance.problems()[:5]]
        server.close()
    if database_log is not None:
        problems += database_errors(database_log, log_start)
    for sample in balancer.error_samples:
        problems.append("error reply: " + sample.decode(errors="replace"))
    return Outcome(setup, ceiling, paced, balancer.results, requests, problems)


# ===================================================================================
# Printing
# ===================================================================================
def describe(name: str, measured: Measured) -> None:
    phase = measured.phase
    database = measured.cpu_us(DATABASE)
    print(f"  {name:<22} {phase.rate:7.0f} publishes/s   rtt p50 {ms(pct(phase.rtts, .5))} "
          f"p99 {ms(pct(phase.rtts, .99))}   sent to each app server "
          f"{' / '.join(str(n) for n in measured.split)}"
          + (f"   ERRORS {phase.errors}" if phase.errors else ""))
    print(f"  {'':<22} CPU per publish: app servers {measured.app_us:.0f} µs"
          + (f", PostgreSQL {database:.0f} µs" if DATABASE in phase.cpu else "")
          + f", fake APNs {measured.cpu_us(FAKE):.0f} µs, load generator "
          f"{measured.cpu_us(GENERATOR):.0f} µs")
    print(f"  {'':<22} CPU (share of one core): {CpuMeter.describe(phase.cpu)}; machine busy "
          f"{measured.busy * 100:.0f} % of 200 %")
    if measured.trips:
        sent = phase.sent or 1
        print(f"  {'':<22} database round trips per publish (mean ms): " + ", ".join(
            f"{op} {count / sent:.3f} ({seconds / count * 1e3:.2f})"
            for op, (count, seconds) in sorted(measured.trips.items()) if count))


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def summary(outcomes: list[Outcome], rate: float) -> None:
    a, b, c = outcomes
    cores = os.cpu_count() or 1
    width = 24
    print()
    print(f"{'':36}" + "".join(f"{o.setup.label:>{width}}" for o in outcomes))

    def row(label: str, values: list[str]) -> None:
        print(f"{label:36}" + "".join(f"{v:>{width}}" for v in values))

    def statements(measured: Measured) -> str:
        found = measured.rate_statements
        return "-" if found is None else f"{found[0]:.1f} / {found[1]:.2f}"

    for name, phase in (("ceiling", "ceiling"), (f"paced {rate:g}/s", "paced")):
        measured = [getattr(o, phase) for o in outcomes]
        if phase == "ceiling":
            row("ceiling, publishes/s", [f"{m.rate:.0f}" for m in measured])
        else:
            row(f"{name}: rtt p50 / p99 ms",
                [f"{pct(m.phase.rtts, .5) * 1e3:.2f} / {pct(m.phase.rtts, .99) * 1e3:.2f}"
                 for m in measured])
        row("  CPU µs/publish: app servers", [f"{m.app_us:.0f}" for m in measured])
        row("                  PostgreSQL", [f"{m.cpu_us(DATABASE):.0f}" if DATABASE in
                                              m.phase.cpu else "-" for m in measured])
        row("                  all processes", [f"{m.all_us:.0f}" for m in measured])
        row("  machine busy % (others)", [f"{m.busy * 100:.0f} ({m.phase.cpu['others'] * 100:.0f})"
                                           for m in measured])
        row("  publishes per rate statement / ms", [statements(m) for m in measured])
    row(f"bound on {cores} idle cores, publishes/s", [f"{o.ceiling.bound(cores):.0f}"
                                                       for o in outcomes])
    row("results / APNs requests (coalesced)",
        [f"{o.results} / {o.requests} ({o.results - o.requests})" for o in outcomes])
    print()
    print(f"(b)/(a): ceiling {ratio(b.ceiling.rate, a.ceiling.rate)}; app-server CPU per "
          f"publish {ratio(b.ceiling.app_us, a.ceiling.app_us)} at the ceiling, "
          f"{ratio(b.paced.app_us, a.paced.app_us)} paced; bound "
          f"{ratio(b.ceiling.bound(cores), a.ceiling.bound(cores))}")
    print(f"(c)/(b): ceiling {ratio(c.ceiling.rate, b.ceiling.rate)}; app-server CPU per "
          f"publish {ratio(c.ceiling.app_us, b.ceiling.app_us)} at the ceiling, "
          f"{ratio(c.paced.app_us, b.paced.app_us)} paced; bound "
          f"{ratio(c.ceiling.bound(cores), b.ceiling.bound(cores))}")
    cpu = c.ceiling.phase.cpu
    print(f"(c) at its ceiling: machine busy {c.ceiling.busy * 100:.0f} % of {cores * 100} %: "
          f"app servers {sum(cpu[n] for n in c.ceiling.instances) * 100:.0f} %, PostgreSQL "
          f"{cpu.get(DATABASE, 0) * 100:.0f} %, fake APNs {cpu[FAKE] * 100:.0f} %, load "
          f"generator {cpu[GENERATOR] * 100:.0f} %, others {cpu['others'] * 100:.0f} %")


def figures(outcome: Outcome) -> dict[str, float | None]:
    """The summary's figures of one set-up (``--json``: to take medians over runs)."""
    found: dict[str, float | None] = {
        "results": outcome.results, "coalesced": outcome.results - outcome.requests,
        "bound": outcome.ceiling.bound(os.cpu_count() or 1)}
    for phase in ("ceiling", "paced"):
        measured: Measured = getattr(outcome, phase)
        statements = measured.rate_statements
        found |= {
            f"{phase}_rate": measured.rate, f"{phase}_app_us": measured.app_us,
            f"{phase}_pg_us": measured.cpu_us(DATABASE) if outcome.setup.database else None,
            f"{phase}_all_us": measured.all_us,
            f"{phase}_p50_ms": pct(measured.phase.rtts, .5) * 1e3,
            f"{phase}_p99_ms": pct(measured.phase.rtts, .99) * 1e3,
            f"{phase}_busy": measured.busy * 100,
            f"{phase}_others": measured.phase.cpu["others"] * 100,
            f"{phase}_apps": sum(measured.phase.cpu[n] for n in measured.instances) * 100,
            f"{phase}_pg": measured.phase.cpu.get(DATABASE, 0.0) * 100,
            f"{phase}_fake": measured.phase.cpu[FAKE] * 100,
            f"{phase}_batch": statements[0] if statements else None,
            f"{phase}_statement_ms": statements[1] if statements else None,
        }
    return found


async def main(args: argparse.Namespace) -> int:
    print(f"cluster: {machine()}")
    folder = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    fake = FakeApnsChild()
    postgres: Postgres | None = None
    outcomes: list[Outcome] = []
    try:
        await fake.start()
        key = write_p8_key(folder)
        apps = apns_app_toml(key, fake.endpoint, fake.ca_file)
        began = time.monotonic()
        nodes = await seed(folder / "store.json", args.registrations)
        postgres = await asyncio.to_thread(Postgres.start)
        url = postgres.new_database()
        password_file = folder / "store.password"
        password_file.write_text(postgres.server.password + "\n")
        password_file.chmod(0o600)
        migrate = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "slixmpp_push.cli", "store", "migrate",
            "--from", str(folder / "store.json"), "--to", url,
            "--to-password-file", str(password_file), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        output = (await migrate.communicate())[0].decode().strip()
        if migrate.returncode != 0:
            raise RuntimeError(f"store migrate failed: {output}")
        print(f"  {args.registrations} registrations through TinyDBStore.put, then `store migrate` "
              f"to PostgreSQL, in {time.monotonic() - began:.1f} s")
        print(f"  {postgres.settings()}")
        print(f"  per phase {args.warmup:g} s warm-up + {args.seconds:g} s measured; ceiling: "
              f"{args.window} publishes outstanding per app server; paced: {args.rate:g}/s")
        setups = [Setup("a", "(a) TinyDB, one", str(folder / "store.json"), ONE_ACTIVE, 1),
                  Setup("b", "(b) PG all-active, one", url, ALL_ACTIVE, 1),
                  Setup("c", "(c) PG all-active, two", url, ALL_ACTIVE, 2)]
        for setup in setups:
            print(f"\n{setup.label}: {setup.count} serve process(es), store "
                  f"{'PostgreSQL' if setup.database else 'TinyDB'}, instances = "
                  f"{setup.instances!r}")
            outcome = await run_setup(setup, args, folder, nodes, fake, apps, password_file,
                                      postgres)
            describe("ceiling", outcome.ceiling)
            describe(f"paced {args.rate:g}/s", outcome.paced)
            if outcome.paced.rate < args.rate * 0.95:
                print(f"  the offered {args.rate:g}/s is above what this set-up sustains: "
                      "lower --rate")
            for problem in outcome.problems:
                print(f"  PROBLEM: {problem}")
            outcomes.append(outcome)
    finally:
        await fake.stop()
        if postgres is not None:
            await asyncio.to_thread(postgres.stop)
        shutil.rmtree(fake.folder, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    summary(outcomes, args.rate)
    if args.json is not None:
        args.json.write_text(json.dumps({o.setup.key: figures(o) for o in outcomes}, indent=1))
    return 1 if any(o.problems for o in outcomes) else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--window", type=int, default=100,
                        help="publishes outstanding per app server when finding the ceiling")
    parser.add_argument("--rate", type=float, default=400.0,
                        help="offered publishes/s of the paced phase (all set-ups)")
    parser.add_argument("--registrations", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1, help="of the random balancing")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the summary's figures there (medians over runs)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (configs, the app servers' logs)")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments)))
