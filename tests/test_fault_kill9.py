"""Crash safety: `slixmpp-push serve` is killed with SIGKILL 20 times during a
storm of registrations and publishes, and restarted after each kill.

Set-up, all on 127.0.0.1: a fake XEP-0114 server in the test process
(tests/fakes/xmpp_server.py) plays the user's XMPP server: it accepts the
component and sends it ad-hoc ``register-device`` commands (from
``userN@localhost/dev``, each with its own device token) and publishes (from
``localhost``, to nodes already registered, each with its own
``message-count``). A fake APNs in the test process receives the pushes; it is
down (503) during part of the storm, so that acknowledged publishes sit in the
store's pending table when the process is killed.

What must hold at the end:

(a) the store always loads: the process starts (and connects) after every
    kill, stops cleanly at the end, and the store opens read-only;
(b) every registration answered ``completed`` is in the store with the node
    it was given (and its token);
(c) every publish answered ``result`` was delivered (APNs answered 200) —
    except that a newer acknowledged notification for the same node may
    replace an older pending one (coalescing): per node, the latest
    acknowledged notification was delivered, nothing acknowledged is missing
    unless a later acknowledged one for that node was delivered, and the last
    push the device got is not older than the latest acknowledged one.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from e2e import APNS_APP, apns_app_toml
from fakes.fake_apns import FakeApns
from fakes.tls import TestCA
from fakes.xmpp_server import (
    ComponentGone,
    ComponentSession,
    FakeComponentServer,
    command_iq,
    error_of,
    form_values,
    publish_iq,
)

from slixmpp_push import Dialect, Registration, StoreError
from slixmpp_push.store import PENDING, TinyDBStore

COMPONENT = "push.localhost"
DOMAIN = "localhost"
SECRET = "kill9-component-secret"
KILLS = 20
SEED = int(os.environ.get("KILL9_SEED") or random.randrange(10**6))  # printed on failure
#: Rounds whose storm runs while APNs is down (503); in the rounds of
#: OUTAGE_ENDS_MID_ROUND it comes back while the storm goes on.
OUTAGE_ROUNDS = frozenset({4, 5, 6, 7, 8, 9, 13, 14, 17})
OUTAGE_ENDS_MID_ROUND = frozenset({9, 14})
MAX_IN_FLIGHT = 48


class RecordingApns(FakeApns):
    """The fake APNs, also remembering what it answered to each request."""

    def __init__(self, ca: TestCA) -> None:
        super().__init__(ca, verify_client=False)
        self.answers: list[tuple[str, int, Any]] = []  # token, status, payload

    def _decide(self, headers: dict[str, str], token: str, body: bytes,
                ) -> tuple[int, str, int | None]:
        status, reason, retry_after = super()._decide(headers, token, body)
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        self.answers.append((token, status, payload))
        return status, reason, retry_after

    def delivered(self) -> list[tuple[str, Any]]:
        return [(token, payload) for token, status, payload in self.answers if status == 200]


@dataclass
class Ledger:
    """What the app server acknowledged."""

    registered: dict[str, tuple[str, str]] = field(default_factory=dict)  # token → account, node
    nodes: list[str] = field(default_factory=list)  # acknowledged nodes, for publishes
    acked: dict[str, list[int]] = field(default_factory=dict)  # node → message counts
    published: dict[str, list[int]] = field(default_factory=dict)  # node → counts sent
    sent: dict[str, int] = field(default_factory=dict)  # what was sent (for the report)
    unanswered: int = 0
    errors: list[str] = field(default_factory=list)


def write_config(folder: Path, port: int, fake: FakeApns, ca: TestCA, key: Path) -> Path:
    (folder / "component.secret").write_text(SECRET + "\n")
    config = folder / "push.toml"
    config.write_text(f"""
[xmpp]
mode = "component"
jid = "{COMPONENT}"
host = "127.0.0.1"
port = {port}
secret_file = "component.secret"

[appserver]
store = "data/store.json"

[delivery]
reply_within = 2.0
retry_base = 0.1
retry_max_delay = 0.4
rate_interval = 0

[logging]
level = "INFO"

{apns_app_toml(key, fake.endpoint, ca.ca_file)}
""")
    return config


#: `slixmpp-push serve` with the store compacting (snapshot + new journal) after
#: every COMPACT_AFTER journal lines instead of 20,000, so that kills also land
#: during compactions: the CLI's own main(), one class default changed. Even
#: rounds run it; odd rounds and the final start run the CLI as installed.
COMPACT_AFTER = 150
SERVE = f"""
import sys
from slixmpp_push.cli import main
from slixmpp_push.store import TinyDBStore, location

class SmallJournalStore(TinyDBStore):
    def __init__(self, path, **options):
        options.setdefault("compact_after", {COMPACT_AFTER})
        super().__init__(path, **options)

location.TinyDBStore = SmallJournalStore
sys.exit(main(sys.argv[1:]))
"""


def start_serve(config: Path, log: Any, small_journal: bool) -> subprocess.Popen[bytes]:
    program = ["-c", SERVE] if small_journal else ["-m", "slixmpp_push.cli"]
    return subprocess.Popen(
        [sys.executable, *program, "serve", "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT, cwd=config.parent)


def log_tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


async def connected(server: FakeComponentServer, process: subprocess.Popen[bytes],
                    after: int, log_path: Path) -> ComponentSession:
    """The serve process's new session; fails if the process dies instead."""
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise AssertionError(f"slixmpp-push serve exited with {process.returncode} "
                                 f"instead of starting:\n{log_tail(log_path)}")
        try:
            return await server.wait_session(after=after, timeout=0.2)
        except TimeoutError:
            if time.monotonic() > deadline:
                raise AssertionError("slixmpp-push serve did not connect within 30 s:\n"
                                     + log_tail(log_path)) from None


async def register(session: ComponentSession, ledger: Ledger, user: int) -> None:
    account = f"user{user}@{DOMAIN}"
    token = f"{user:064x}"
    ledger.sent["register"] = ledger.sent.get("register", 0) + 1
    try:
        reply = await session.request(command_iq(f"{account}/dev", COMPONENT, "register-device",
                                                 {"provider": APNS_APP, "device-token": token}))
    except (ComponentGone, TimeoutError):
        ledger.unanswered += 1
        return
    command = reply.find("{http://jabber.org/protocol/commands}command")
    if reply.get("type") != "result" or command is None:
        ledger.errors.append(f"register {account}: {error_of(reply)}")
        return
    if command.get("status") == "completed":
        (node,) = form_values(reply)["node"]
        ledger.registered[token] = (account, node)
        ledger.nodes.append(node)


async def publish(session: ComponentSession, ledger: Ledger, node: str, count: int) -> None:
    ledger.sent["publish"] = ledger.sent.get("publish", 0) + 1
    ledger.published.setdefault(node, []).append(count)
    try:
        reply = await session.request(publish_iq(DOMAIN, COMPONENT, node, message_count=count))
    except (ComponentGone, TimeoutError):
        ledger.unanswered += 1
        return
    if reply.get("type") == "result":
        ledger.acked.setdefault(node, []).append(count)
    else:
        error = error_of(reply)
        # internal-server-error/wait is a legitimate answer (queue trouble); never
        # an answer that makes a server disable the registration.
        if error is None or error[:2] != ("wait", "internal-server-error"):
            ledger.errors.append(f"publish {node} #{count}: {error}")


async def storm(session: ComponentSession, ledger: Ledger, rng: random.Random,
                users: itertools.count[int], counts: itertools.count[int],
                duration: float) -> set[asyncio.Task[None]]:
    """Registrations and publishes, back to back, for ``duration`` seconds."""
    tasks: set[asyncio.Task[None]] = set()
    end = time.monotonic() + duration
    while time.monotonic() < end and session.alive:
        if len(tasks) < MAX_IN_FLIGHT:
            if not ledger.nodes or rng.random() < 0.15:
                job = register(session, ledger, next(users))
            else:
                job = publish(session, ledger, rng.choice(ledger.nodes), next(counts))
            task = asyncio.ensure_future(job)
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(rng.uniform(0.0, 0.006))
    return tasks


def kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    process.wait(10)


@pytest.fixture
def serve_log(tmp_path: Path) -> Iterator[BinaryIO]:
    """The serve processes' output, all rounds in one file (read back on failure)."""
    with open(tmp_path / "serve.log", "ab") as log:
        yield log


async def test_kill9_during_a_storm(test_ca: TestCA, apns_key: Path, tmp_path: Path,
                                    serve_log: BinaryIO) -> None:
    print(f"KILL9_SEED={SEED}")  # the storm's schedule (timing varies anyway)
    rng = random.Random(SEED)
    ledger = Ledger()
    users = itertools.count(1)
    counts = itertools.count(1)
    pending_at_kills = 0  # acknowledged, undelivered, only in the store when killed
    log = serve_log
    log_path = tmp_path / "serve.log"
    store_path = tmp_path / "data" / "store.json"
    async with RecordingApns(test_ca) as apns, \
            FakeComponentServer(COMPONENT, SECRET) as server:
        config = write_config(tmp_path, server.port, apns, test_ca, apns_key)
        process: subprocess.Popen[bytes] | None = None
        try:
            last_session = -1
            for round_ in range(KILLS):
                log.write(f"\n===== round {round_}\n".encode())
                log.flush()
                if round_ in OUTAGE_ROUNDS:
                    apns.set_outage(503, "ServiceUnavailable")
                else:
                    apns.end_outage()
                process = start_serve(config, log, small_journal=round_ % 2 == 0)
                session = await connected(server, process, last_session, log_path)
                last_session = session.index
                # Kill at a random moment: mostly mid-storm, sometimes right
                # after start-up (while pending notifications are resumed).
                duration = rng.choice([0.0, 0.05]) if rng.random() < 0.15 \
                    else rng.uniform(0.3, 1.5)
                if round_ in OUTAGE_ENDS_MID_ROUND:
                    tasks = await storm(session, ledger, rng, users, counts, duration / 2)
                    apns.end_outage()
                    tasks |= await storm(session, ledger, rng, users, counts, duration / 2)
                else:
                    tasks = await storm(session, ledger, rng, users, counts, duration)
                if not tasks and ledger.nodes:
                    # Everything was answered already (answers take about a millisecond):
                    # one more publish on its way, so that this kill cuts a request short.
                    tasks = {asyncio.ensure_future(publish(
                        session, ledger, rng.choice(ledger.nodes), next(counts)))}
                    await asyncio.sleep(0)  # written to the socket, not yet answered
                kill(process)
                process = None
                await asyncio.wait_for(session.closed.wait(), 10)
                if tasks:
                    await asyncio.wait(tasks, timeout=15)
                # Before any restart can repair anything: what a crash left.
                pending_at_kills += await check_after_kill(store_path, apns, ledger, round_)

            # The last start: no outage; everything acknowledged must arrive.
            apns.end_outage()
            log.write(b"\n===== final\n")
            log.flush()
            process = start_serve(config, log, small_journal=False)
            await connected(server, process, last_session, log_path)
            try:
                await wait_delivered(apns, ledger, log_path)
            finally:
                dump(tmp_path / "kill9-record.json", apns, ledger)
            process.send_signal(signal.SIGTERM)
            # Wait without blocking the loop: the fakes must answer while it stops.
            code = await asyncio.to_thread(process.wait, 15)
            assert code == 0, log_tail(log_path)
            process = None
        finally:
            if process is not None:
                kill(process)

    assert not ledger.errors, ledger.errors[:10]
    # The storm did what it is for: many answers, and kills that cut requests short.
    assert len(ledger.registered) >= 40, ledger
    assert sum(len(v) for v in ledger.acked.values()) >= 200, ledger.sent
    assert ledger.unanswered > 0
    assert pending_at_kills > 0, "no kill found acknowledged notifications pending"

    # (a) the store loads (read-only, as `devices list` does) and (b) holds every
    # acknowledged registration with the node it was given.
    store = TinyDBStore(store_path, read_only=True)
    await store.open()
    try:
        for token, (account, node) in ledger.registered.items():
            registration = store.get(node)
            assert registration is not None, f"acknowledged registration {node} is lost"
            assert (registration.account, registration.token, registration.app) == (
                account, token, APNS_APP)
        # Everything was delivered: nothing stays pending.
        assert dict(store.table(PENDING)) == {}
    finally:
        await store.close()

    # (c) what was acknowledged was delivered (modulo coalescing).
    check_deliveries(apns, ledger)


async def check_after_kill(store_path: Path, apns: RecordingApns, ledger: Ledger,
                           round_: int) -> int:
    """The store as the kill left it opens read-only (as `devices list` does);
    it holds every acknowledged registration, and for every node the latest
    acknowledged notification is delivered already or pending (or a newer one).
    Returns how many nodes had it only pending."""
    store = TinyDBStore(store_path, read_only=True)
    try:
        await store.open()
    except StoreError as exc:
        raise AssertionError(f"after kill {round_}: the store does not open read-only: "
                             f"{exc}") from exc
    try:
        for token, (account, node) in ledger.registered.items():
            registration = store.get(node)
            assert registration is not None, f"after kill {round_}: registration {node} lost"
            assert (registration.account, registration.token) == (account, token)
        delivered = delivered_by_node(apns, ledger)
        pending = store.table(PENDING)
        only_pending = 0
        for node, acked in ledger.acked.items():
            latest = max(acked)
            if max(delivered.get(node, [0])) >= latest:
                continue
            doc = pending.get(node)
            kept = doc["notification"]["message_count"] if doc else None
            assert kept is not None and kept >= latest, (
                f"after kill {round_}: node {node}: acknowledged #{latest} is neither "
                f"delivered nor pending (pending: {kept}, acked {acked}, "
                f"delivered {delivered.get(node)})")
            only_pending += 1
        return only_pending
    finally:
        await store.close()


def dump(path: Path, apns: RecordingApns, ledger: Ledger) -> None:
    """Everything seen, for a post-mortem of a failure (kept in the test's tmp_path)."""
    path.write_text(json.dumps({
        "registered": ledger.registered, "acked": ledger.acked, "sent": ledger.sent,
        "answers": apns.answers}, indent=0))


def delivered_by_node(apns: RecordingApns, ledger: Ledger) -> dict[str, list[int]]:
    """node → message counts APNs accepted, in the order they arrived."""
    node_of = {token: node for token, (_, node) in ledger.registered.items()}
    account_of = {node: account for account, node in ledger.registered.values()}
    delivered: dict[str, list[int]] = {}
    for token, payload in apns.delivered():
        node = node_of.get(token)
        if node is None:
            continue  # a registration whose answer the kill cut off
        assert payload["account"] == account_of[node]
        delivered.setdefault(node, []).append(payload["unread-messages"])
    return delivered


async def wait_delivered(apns: RecordingApns, ledger: Ledger, log_path: Path,
                         timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        delivered = delivered_by_node(apns, ledger)
        missing = {node: max(counts) for node, counts in ledger.acked.items()
                   if max(delivered.get(node, [0])) < max(counts)}
        if not missing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(missing)} acknowledged notification(s) never "
                                 f"delivered: {sorted(missing.items())[:10]}\n"
                                 + log_tail(log_path))
        await asyncio.sleep(0.1)


def check_deliveries(apns: RecordingApns, ledger: Ledger) -> None:
    """Per node, with L its latest acknowledged notification.

    A publish sent after L, whose answer the kill cut off, may have been
    persisted and so legitimately replace L: "L or newer" is what counts.
    Counts only grow, so a delivered count above L is such a newer publish.
    """
    delivered = delivered_by_node(apns, ledger)
    for node, acked in ledger.acked.items():
        got = delivered.get(node, [])
        assert set(got) <= set(ledger.published[node]), (node, got)  # sanity
        latest = max(acked)
        assert any(count >= latest for count in got), (
            f"node {node}: latest acknowledged #{latest} never delivered, nor anything "
            f"newer (acked {acked}, delivered {got})")
        for count in acked:
            assert count in got or any(later in got for later in acked if later > count) \
                or any(newer > latest for newer in got), (
                f"node {node}: acknowledged #{count} was neither delivered nor replaced "
                f"by a later delivered one (acked {acked}, delivered {got})")
        # The device ends on the newest news, never on an older one.
        assert got[-1] >= latest, (node, acked, got)


# -- what a crash can leave in the journal --------------------------------------------------
def _registration(node: str) -> Registration:
    return Registration(node=node, account="user@localhost", domain=DOMAIN, app=APNS_APP,
                        token=f"token-{node}", dialect=Dialect.TIGASE)


async def test_torn_journal_tail_opens_read_only(tmp_path: Path) -> None:
    """A SIGKILL in the middle of a journal append (a write of several pages can
    stop part-way) leaves a torn last line, never acknowledged. `serve` drops
    it; `devices list` (read-only) must read the store as well."""
    path = tmp_path / "store.json"
    good = json.dumps(["registrations", "n1", _registration("n1").to_doc()])
    torn = json.dumps(["registrations", "n2", _registration("n2").to_doc()])[:40]
    path.with_name("store.json.journal").write_text(good + "\n" + torn)
    reader = TinyDBStore(path, read_only=True)
    await reader.open()
    assert reader.get("n1") is not None and reader.get("n2") is None
    await reader.close()


SHORT_WRITE = """
import asyncio, os, resource, signal, sys
from slixmpp_push import Dialect, Registration, StoreError, TinyDBStore

def reg(node):
    return Registration(node=node, account="user@localhost", domain="localhost",
                        app="app", token="token-" + node, dialect=Dialect.TIGASE)

async def main(path):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit: a short write, EFBIG
    store = TinyDBStore(path)
    await store.open()
    await store.put(reg("n1"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Room for 50 more bytes, as on a disk that is filling up.
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(store.journal_path) + 50, hard))
    try:
        await store.put(reg("n2"))
        print("acknowledged n2", flush=True)
    except StoreError:
        print("refused n2", flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
    for node in ("n3", "n4"):
        await store.put(reg(node))
        print("acknowledged", node, flush=True)
    os._exit(0)  # a crash: no close, no snapshot

asyncio.run(main(sys.argv[1]))
"""


async def test_short_journal_write_is_never_acknowledged(tmp_path: Path) -> None:
    """A write the disk can only take part of (here RLIMIT_FSIZE, as with a full
    disk) must not be acknowledged, and must not damage later appends."""
    path = tmp_path / "store.json"
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SHORT_WRITE, str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(run.communicate(), 30)
    text = output.decode()
    acknowledged = {line.split()[1] for line in text.splitlines()
                    if line.startswith("acknowledged ")}
    assert {"n3", "n4"} <= acknowledged, text
    store = TinyDBStore(path)
    await store.open()  # must load
    try:
        kept = {registration.node for registration in store.registrations()}
    finally:
        await store.close()
    assert acknowledged | {"n1"} <= kept, (text, kept)
