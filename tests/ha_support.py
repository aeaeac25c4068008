"""What the high-availability end-to-end tests share: two ``slixmpp-push serve`` processes
on one PostgreSQL store, a fake APNs that outlives them, and a publish storm.

Set-up, all on 127.0.0.1 (:func:`rig`): a real XMPP server serving the component
``push.localhost`` (:data:`COMPONENT`); an account of it, ``storm…@localhost``, plays a
publisher the app server trusts (``[appserver] trusted_publishers``, as a pager is), so
that the test sends publishes itself, through the server, and sees each answer; the fake
APNs in a process of its own (tests/fakes/recording_apns.py), writing down every answer
it gives, whichever app server asked; two ``serve`` processes (:class:`Instance`) with
the same configuration but their metrics ports. Devices register as real accounts of the
server, through ad-hoc commands (:func:`register`).

What the app server acknowledged goes into a :class:`StormLedger`; the checks afterwards
are :func:`test_fault_kill9.check_deliveries` (every publish answered ``result`` is
delivered, modulo coalescing), :func:`check_store` (every registration answered
``completed`` is stored, nothing stays pending) and :func:`checked_duplicates`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from e2e import APNS_APP, apns_app_toml, component_toml, execute
from fakes.control import FakeProcess
from fakes.recording_apns import RecordedAnswers
from fakes.xmpp_server import publish_iq
from servers import Connections, make_account
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout
from test_fault_kill9 import Ledger, check_deliveries, delivered_by_node
from test_fault_stream import until
from test_metrics import http

from slixmpp_push.config import ONE_ACTIVE
from slixmpp_push.devserver import DevServer, _free_ports
from slixmpp_push.store import PENDING, create_store

COMPONENT = "push.localhost"  # the component of every server fixture
STORM_REGISTRATIONS = 12  # registrations a storm adds to those made before it
MAX_IN_FLIGHT = 32
#: How the app server's publish errors may legitimately read while instances change:
#: the app server's own 'wait' (store or queue trouble), and the XMPP server's bounce
#: while no instance is connected (never an answer that makes a server drop a
#: registration).
TRANSIENT = {("wait", "internal-server-error"), ("wait", "remote-server-timeout")}
#: What the app server answers for a node it dropped (a dead token): legitimate for the
#: nodes in StormLedger.dead only.
GONE = ("cancel", "item-not-found")


# -- the instances ---------------------------------------------------------------------------
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

    async def metrics(self) -> str:
        """Its /metrics exposition."""
        return (await self.get("/metrics"))[1].decode()

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


@dataclass(frozen=True)
class Settings:
    """What the instances' config says besides the addresses (the same for both)."""

    instances: str = ONE_ACTIVE
    ping_interval: float = 5.0
    ping_timeout: float = 10.0


def write_config(folder: Path, name: str, server: DevServer, store: str, publisher: str,
                 apns_port: int, ca_file: Path, key: Path, metrics_port: int,
                 settings: Settings) -> Path:
    """Both instances' config: the same but for the metrics port (one host here)."""
    config = folder / f"{name}.toml"
    config.write_text(f"""
{component_toml(server, folder)}ping_interval = {settings.ping_interval}
ping_timeout = {settings.ping_timeout}

[appserver]
store = "{store}"
instances = "{settings.instances}"
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
async def rig(server: DevServer, store: str, folder: Path, key: Path, xmpp: Connections,
              accounts: int = 1, roles: tuple[str, str] = ("active", "standby"),
              settings: Settings = Settings()) -> AsyncIterator[Rig]:
    """A started, then B, each waited for until it has its role in ``roles``; the
    publisher and ``accounts`` device accounts; every process is stopped afterwards."""
    record = folder / "apns-answers.txt"
    publisher = await make_account(server, "storm")
    async with FakeProcess("fakes.recording_apns", "--ca-dir", str(folder / "ca"),
                           "--record", str(record)) as apns:
        ports = _free_ports(2, "127.0.0.1")
        instances = [
            Instance(name, write_config(folder, name, server, store, publisher.jid, apns.port,
                                        folder / "ca" / "ca.pem", key, port, settings),
                     port, folder / f"{name}.log")
            for name, port in zip("ab", ports, strict=True)]
        try:
            for instance, role in zip(instances, roles, strict=True):
                instance.start()
                await instance.until(role)
            storm = await xmpp.client(server, publisher, resource="storm")
            a, b = instances
            the_rig = Rig(a, b, apns, RecordedAnswers(record), storm)
            for _ in range(accounts):
                account = await make_account(server, "dev")
                the_rig.devices.append(await xmpp.client(server, account, resource="phone"))
            yield the_rig
        finally:
            for instance in instances:
                if instance.process is not None:
                    with contextlib.suppress(ProcessLookupError):
                        instance.process.send_signal(signal.SIGCONT)
                instance.kill()


async def stopped(instance: Instance) -> None:
    """SIGTERM; it must exit 0."""
    instance.signal(signal.SIGTERM)
    assert await instance.exit_code() == 0, instance.tail()


# -- the device side and the publisher -------------------------------------------------------
@dataclass
class StormLedger(Ledger):
    """What the app server acknowledged, and the transient refusals (TRANSIENT) seen."""

    refused: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Nodes whose token the provider condemns: answered GONE once dropped.
    dead: set[str] = field(default_factory=set)
    #: (node, count) → the wall clock at which the publish was sent.
    sent_at: dict[tuple[str, int], float] = field(default_factory=dict)

    @property
    def acknowledged(self) -> int:
        """Publishes answered ``result``."""
        return sum(len(counts) for counts in self.acked.values())

    def deliverable(self) -> StormLedger:
        """The ledger without the publishes to dead nodes (never delivered)."""
        return StormLedger(registered=self.registered, nodes=self.nodes, acked={
            node: counts for node, counts in self.acked.items() if node not in self.dead},
            published=self.published, sent_at=self.sent_at)


async def register_all(r: Rig, ledger: StormLedger, users: range) -> None:
    """A device for each of ``users`` (its token), on the device accounts in turn."""
    await asyncio.gather(*(register(r.devices[user % len(r.devices)], ledger, user)
                           for user in users))
    assert set(ledger.registered) >= {f"{user:064x}" for user in users}, ledger.errors


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
    ledger.sent_at[node, count] = time.time()
    iq = storm.make_iq_set(ito=COMPONENT)
    iq.append(ET.fromstring(publish_iq(str(storm.boundjid), COMPONENT, node,
                                       message_count=count))[0])
    try:
        await iq.send(timeout=timeout)
    except IqTimeout:
        ledger.unanswered += 1
    except IqError as error:
        said = (error.iq["error"]["type"], error.iq["error"]["condition"])
        if said not in TRANSIENT and not (said == GONE and node in ledger.dead):
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


# -- measuring and checking ----------------------------------------------------------------
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


def report(path: Path, name: str, figures: dict[str, Any]) -> None:
    """Print ``figures`` (``pytest -s``) and add them under ``name`` to the JSON ``path``."""
    print(f"\n{name}: {json.dumps(figures)}")
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, name: figures}, indent=1))


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


def unwoken(answers: RecordedAnswers, ledger: StormLedger) -> dict[str, list[int]]:
    """node → the publishes answered ``result`` after whose sending APNs accepted no push
    for the node's device.

    With several active instances a node's publishes reach them in any order and each
    instance keeps the one it received last (coalescing), so the device may end on an
    older count than the highest acknowledged. What must hold is what a push is for: after
    every acknowledged publish the device is woken (and fetches what is new).
    """
    token_of = {node: token for token, (_, node) in ledger.registered.items()}
    last: dict[str, float] = {}
    for token, _, at in answers.delivered_at():
        last[token] = max(last.get(token, 0.0), at)
    missing = {node: [count for count in counts
                      if last.get(token_of.get(node, ""), 0.0) < ledger.sent_at[node, count]]
               for node, counts in ledger.acked.items()}
    return {node: counts for node, counts in missing.items() if counts}


async def wait_woken(answers: RecordedAnswers, ledger: StormLedger, timeout: float = 30.0,
                     ) -> None:
    """Until :func:`unwoken` is empty; AssertionError naming the nodes after ``timeout``."""
    deadline = time.monotonic() + timeout
    while missing := unwoken(answers, ledger):
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(missing)} node(s) not woken after an acknowledged "
                                 f"publish: {sorted(missing.items())[:10]}")
        await asyncio.sleep(0.1)


async def check_store(url: str, ledger: StormLedger) -> None:
    """Every registration answered ``completed`` (but for a dead token) is in the store,
    none of the dead ones is, and nothing stays pending."""
    store = create_store(url, read_only=True)
    await store.open()
    try:
        for token, (account, node) in ledger.registered.items():
            registration = store.get(node)
            if node in ledger.dead:
                assert registration is None, f"dead token's registration {node} is kept"
                continue
            assert registration is not None, f"acknowledged registration {node} is lost"
            assert (registration.account, registration.token) == (account, token)
        assert dict(store.table(PENDING)) == {}
    finally:
        await store.close()


async def checked_storm(r: Rig, ledger: StormLedger, url: str, *, ordered: bool = True,
                        ) -> dict[str, Any]:
    """After a storm: no unexpected answer, the store (:func:`check_store`), every publish
    answered ``result`` delivered (but to dead nodes) — in order (``ordered``: one active
    instance), or at least followed by a push (:func:`unwoken`: several) —, duplicates
    within what a crash explains; the storm's figures for :func:`report`."""
    assert not ledger.errors, ledger.errors[:10]
    await check_store(url, ledger)
    deliverable = ledger.deliverable()
    if ordered:
        check_deliveries(r.answers, deliverable)
    else:
        assert not unwoken(r.answers, deliverable)
    delivered = delivered_by_node(r.answers, deliverable)
    return {"acknowledged": ledger.acknowledged,
            "refused": {"/".join(k): n for k, n in ledger.refused.items()},
            "delivered": sum(len(c) for c in delivered.values()),
            "duplicates": checked_duplicates(r.answers, ledger),
            "unanswered": ledger.unanswered, "registrations": len(ledger.registered)}
