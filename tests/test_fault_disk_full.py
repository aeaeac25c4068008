"""Store faults are transient (issue 9): a disk that really fills up, and frees again.

Each test mounts a small tmpfs of its own (as root, or through ``sudo -n``),
puts the store there, fills the rest with a filler file until the kernel says
ENOSPC, and later deletes the filler. Nothing in the app server is replaced.

- ``slixmpp-push serve`` on a full disk answers every ad-hoc command of every
  dialect and every publish that needs the store with ``wait`` /
  ``internal-server-error`` (never ``cancel``, never ``undefined-condition``),
  logs the condition once (no traceback per request), and ``/health`` and
  ``/metrics`` say so; once space is freed it is ready again without any
  traffic, everything works again, and after a ``kill -9`` the store holds
  every registration and publish it acknowledged.
- A store whose snapshot cannot be rewritten (room for journal lines, not for
  a second copy of the store) tries compaction again after a backoff, not at
  every write batch; its journal is reported (metric, /health not ready above
  the bound) and shrinks once the disk has room again.
- The registrar (the device side) keeps a remote disable working on a full disk.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from e2e import APNS_APP, apns_app_toml
from fakes.fake_apns import FakeApns
from fakes.tls import TestCA
from fakes.xmpp_server import (
    ComponentSession,
    FakeComponentServer,
    command_iq,
    error_of,
    form_values,
    publish_iq,
)
from slixmpp.test import SlixTest
from test_fault_kill9 import connected, kill, log_tail
from test_metrics import http
from tokens import apns_token, fcm_token

import slixmpp_push  # noqa: F401  (registers the plugins)
from slixmpp_push import Dialect, Registration
from slixmpp_push.metrics import Metrics
from slixmpp_push.registrar import ClientRegistration
from slixmpp_push.store import CLIENT_REGISTRATIONS, PENDING, StoreStatus, TinyDBStore, status

COMPONENT = "push.localhost"
DOMAIN = "localhost"
SECRET = "disk-full-component-secret"
FCM_CONSOLE = "fcm-console"  # a console app in FCM format: register-push-fcm works
WAIT = ("wait", "internal-server-error")


# -- a small filesystem that really fills up --------------------------------------------
def _privileged(command: list[str]) -> subprocess.CompletedProcess[str]:
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    return subprocess.run(prefix + command, capture_output=True, text=True, check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``small_fs("4m")``: a fresh tmpfs of that size, owned by us, unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        done = _privileged(["mount", "-t", "tmpfs", "-o",
                            f"size={size},mode=0700,uid={os.getuid()},gid={os.getgid()}",
                            "tmpfs", str(folder)])
        if done.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs (this test needs root or passwordless sudo): "
                        f"{done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        _privileged(["umount", str(folder)])


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte; the filler file is returned."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    handle.write(bytes(chunk))
            except OSError as exc:
                assert exc.errno == 28, exc  # ENOSPC, nothing else
    return filler


# -- serve, a fake server and a fake APNs ---------------------------------------------------
def write_config(folder: Path, store: Path, port: int, metrics_port: int, apns: FakeApns,
                 ca: TestCA, key: Path) -> Path:
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
store = "{store}"

[delivery]
reply_within = 1.0
retry_base = 600    # acknowledged publishes stay pending (APNs is down) for the test
rate_interval = 0

[metrics]
listen = "127.0.0.1:{metrics_port}"

[logging]
level = "INFO"

{apns_app_toml(key, apns.endpoint, ca.ca_file)}

[apps."{FCM_CONSOLE}"]
type = "console"
format = "fcm"
""")
    return config


def serve(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "slixmpp_push.cli", "serve", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=config.parent)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Device:
    """One device of one account, registered in one dialect."""

    _users = itertools.count(1)

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect  # "tigase", "p2-apns", "p2-fcm" or "v1"
        self.account = f"user{next(self._users)}@{DOMAIN}"
        self.token = fcm_token(self.account) if dialect == "p2-fcm" \
            else apns_token(self.account)
        self.device_id = secrets.token_hex(8)
        self.node: str | None = None  # once acknowledged
        self.secret: str | None = None  # p2 and v1: publish-options carry it

    def register(self) -> tuple[str, dict[str, str]]:
        if self.dialect == "tigase":
            return "register-device", {"provider": APNS_APP, "device-token": self.token}
        if self.dialect in ("p2-apns", "p2-fcm"):
            return (f"register-push-{self.dialect[3:]}",
                    {"token": self.token, "android-id": self.device_id})
        return "v1-register-push", {"type": "apns", "node": self.device_id,
                                    "token": self.token}

    def unregister(self) -> tuple[str, dict[str, str]]:
        if self.dialect == "tigase":
            return "unregister-device", {"provider": APNS_APP, "device-token": self.token}
        if self.dialect in ("p2-apns", "p2-fcm"):
            return f"unregister-push-{self.dialect[3:]}", {"android-id": self.device_id}
        return "v1-unregister-push", {"type": "apns", "node": self.device_id}


DIALECTS = ("tigase", "p2-apns", "p2-fcm", "v1")


async def run_command(session: ComponentSession, device: Device,
                      command: tuple[str, dict[str, str]]) -> ET.Element:
    node, fields = command
    return await session.request(command_iq(f"{device.account}/phone", COMPONENT, node,
                                            fields))


def completed(reply: ET.Element) -> bool:
    command = reply.find("{http://jabber.org/protocol/commands}command")
    return reply.get("type") == "result" and command is not None \
        and command.get("status") == "completed"


async def register(session: ComponentSession, device: Device) -> ET.Element:
    reply = await run_command(session, device, device.register())
    if completed(reply):
        values = form_values(reply)
        device.node = values["node"][0]
        device.secret = values.get("secret", [None])[0]
    return reply


async def publish(session: ComponentSession, device: Device, count: int) -> ET.Element:
    assert device.node is not None
    options = {"secret": device.secret} if device.secret else None
    return await session.request(publish_iq(DOMAIN, COMPONENT, device.node,
                                            message_count=count, options=options))


def assert_wait(reply: ET.Element, what: str, stored: str) -> None:
    error = error_of(reply)
    assert error is not None and error[:2] == WAIT, f"{what}: {error or 'answered result'}"
    assert error[2] == f"the app server cannot store {stored} right now (try again later)"


async def health(port: int) -> tuple[int, dict[str, Any]]:
    status, body = await http(port, b"GET /health HTTP/1.1\r\n\r\n")
    return status, json.loads(body) if body else {}


async def metric(port: int, name: str) -> float:
    _, body = await http(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


async def test_disk_full_is_answered_wait_logged_once_and_loses_nothing(
        test_ca: TestCA, apns_key: Path, tmp_path: Path,
        small_fs: Callable[[str], Path]) -> None:
    fs = small_fs("4m")
    store_path = fs / "store.json"
    metrics_port = free_port()
    log_path = tmp_path / "serve.log"
    async with FakeApns(test_ca, verify_client=False) as apns, \
            FakeComponentServer(COMPONENT, SECRET) as server:
        apns.set_outage(503, "ServiceUnavailable")  # a publish is acknowledged once pending
        config = write_config(tmp_path, store_path, server.port, metrics_port, apns,
                              test_ca, apns_key)
        process = serve(config, log_path)
        try:
            session = await connected(server, process, -1, log_path)
            # -- healthy: two devices per dialect, one publish pending per APNs node ----
            devices = {dialect: [Device(dialect), Device(dialect)] for dialect in DIALECTS}
            for pair in devices.values():
                for device in pair:
                    assert completed(await register(session, device))
            # The latest acknowledged message count of each APNs device.
            acked = {devices[dialect][0]: 0 for dialect in ("tigase", "p2-apns", "v1")}
            counts = itertools.count(1)
            for device in acked:
                count = next(counts)
                assert (await publish(session, device, count)).get("type") == "result"
                acked[device] = count

            # A restart writes a snapshot and empties the journal: once the disk is
            # full, no journal line fits in the slack of the journal's last block.
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 20) == 0, log_tail(log_path)
            assert (fs / "store.json.journal").stat().st_size == 0
            process = serve(config, log_path)
            session = await connected(server, process, session.index, log_path)

            # -- the disk fills up --------------------------------------------------------
            filler = fill(fs)
            log_before = log_path.stat().st_size
            # Every command of every dialect, and publishes that need to be kept.
            extra: list[Device] = []
            for dialect in DIALECTS:
                reply = await register(session, Device(dialect))
                assert_wait(reply, f"{dialect} registration", "registrations")
                reply = await run_command(session, devices[dialect][1],
                                          devices[dialect][1].unregister())
                assert_wait(reply, f"{dialect} unregistration", "registrations")
            for device in acked:
                assert_wait(await publish(session, device, next(counts)),
                            "publish while APNs is down", "notifications")
            # A storm: 2 s of registrations and publishes, 32 at a time.
            answers: collections.Counter[str] = collections.Counter()

            async def one(i: int) -> None:
                if i % 2:
                    device = Device("tigase")
                    reply = await register(session, device)
                    if completed(reply):
                        extra.append(device)
                else:
                    reply = await publish(session, list(acked)[i % len(acked)], next(counts))
                error = error_of(reply)
                answers["ok" if error is None else "/".join(error[:2])] += 1

            began = time.monotonic()
            storm = 0
            while time.monotonic() - began < 2.0:
                await asyncio.gather(*(one(storm + i) for i in range(32)))
                storm += 32
            assert answers == {"wait/internal-server-error": storm}, answers

            # Logged once, not once per request; no traceback.
            fault_log = log_path.read_bytes()[log_before:].decode(errors="replace")
            assert "Traceback" not in fault_log, fault_log[-3000:]
            assert fault_log.count("store write failed: cannot write") == 1, fault_log[-3000:]
            assert "No space left on device" in fault_log
            store_lines = [line for line in fault_log.splitlines()
                           if "slixmpp_push.store" in line or "refused" in line]
            assert len(store_lines) == 1, store_lines
            assert len(fault_log) < 10_000, fault_log[-3000:]  # before: 1.2 MB a second
            # Health and metrics say so.
            code, details = await health(metrics_port)
            assert code == 503 and details["store"]["writable"] is False, details
            assert "No space left on device" in details["store"]["problem"], details
            failures = await metric(metrics_port, "slixmpp_push_store_write_failures_total")
            assert failures == storm + 11  # 4 registrations, 4 unregistrations, 3 publishes
            assert await metric(metrics_port, "slixmpp_push_store_journal_bytes") == 0

            # -- space again: ready without any traffic (the store probes) ---------------
            filler.unlink()
            deadline = time.monotonic() + 15
            while (await health(metrics_port))[1]["store"]["problem"]:
                assert time.monotonic() < deadline, (await health(metrics_port), log_tail(
                    log_path))
                await asyncio.sleep(0.1)
            assert "store writable again after" in log_path.read_text(errors="replace")
            for dialect in DIALECTS:
                device = Device(dialect)
                assert completed(await register(session, device)), dialect
                extra.append(device)
                gone = devices[dialect].pop()
                assert completed(await run_command(session, gone, gone.unregister()))
            for device in acked:
                count = next(counts)
                assert (await publish(session, device, count)).get("type") == "result"
                acked[device] = count
            kill(process)  # nothing acknowledged may depend on a clean stop
        finally:
            if process.poll() is None:
                kill(process)

    store = TinyDBStore(store_path, read_only=True)
    await store.open()
    try:
        kept = [device for pair in devices.values() for device in pair] + extra
        for device in kept:
            assert device.node is not None
            registration = store.get(device.node)
            assert registration is not None, f"acknowledged {device.dialect} node lost"
            assert (registration.account, registration.token) == (device.account,
                                                                   device.token)
        assert len(store) == len(kept)  # the acknowledged unregistrations are gone
        pending = store.table(PENDING)
        for device, count in acked.items():
            assert device.node is not None
            assert pending[device.node]["notification"]["message_count"] == count
    finally:
        await store.close()


# -- compaction that cannot run ------------------------------------------------------------
def registration(number: int, token: str) -> Registration:
    return Registration(node=f"n{number}", account=f"user{number}@{DOMAIN}", domain=DOMAIN,
                        app=APNS_APP, token=token, dialect=Dialect.TIGASE)


async def test_compaction_backs_off_is_alarmed_and_recovers(
        small_fs: Callable[[str], Path], caplog: pytest.LogCaptureFixture) -> None:
    fs = small_fs("2m")
    path = fs / "store.json"
    limit = 100_000
    store = TinyDBStore(path, compact_after=50, journal_limit=limit)
    metrics = Metrics()
    metrics.watch_store(store.status)
    metrics.set_connected(True)
    await store.open()
    try:
        tokens = {number: apns_token(number) for number in range(2400)}
        for start in range(0, 2400, 100):
            await asyncio.gather(*(store.put(registration(n, tokens[n]))
                                   for n in range(start, start + 100)))
        await store.compact()
        snapshot = path.stat().st_size
        assert snapshot > 600_000
        # Room for journal lines, not for a new snapshot beside the old one.
        free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
        spare = fs / "spare"
        spare.write_bytes(bytes(free - snapshot // 2))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="slixmpp_push"):
            for start in range(0, 600, 10):  # 60 write batches, each past compact_after
                for n in range(start, start + 10):
                    tokens[n] = apns_token((n, "changed"))
                await asyncio.gather(*(store.put(registration(n, tokens[n]))
                                       for n in range(start, start + 10)))
        attempts = [r.getMessage() for r in caplog.records if "compaction" in r.getMessage()]
        # Before: one attempt (a 400 KB rewrite) and one ERROR line per batch, 55 of 60.
        assert 1 <= len(attempts) <= 2, attempts
        assert "No space left on device" in attempts[0] and "next try in 1 s" in attempts[0]
        assert store.status.writable  # journal appends still fit: nothing was refused
        assert store.status.journal_bytes > limit
        assert store.status.journal_bytes == (fs / "store.json.journal").stat().st_size
        ready, details = metrics.health()
        assert not ready
        assert details["store"]["problem"].startswith("store journal is 0.2 MiB, above its "
                                                      "bound of 0.1 MiB: compaction fails: ")
        assert f"slixmpp_push_store_journal_bytes {float(store.status.journal_bytes)}" in \
            metrics.exposition().decode()

        # Space again: the next writes find room (statvfs) before the backoff ends.
        spare.unlink()
        for n in range(600, 700):
            tokens[n] = apns_token((n, "after"))
            await store.put(registration(n, tokens[n]))
            if not store.status.compaction_error:
                break
            await asyncio.sleep(0.05)
        assert not store.status.compaction_error, "compaction did not recover"
        # Emptied; at most the batches written since are in it.
        assert store.status.journal_bytes < 2_000
        assert store.status.journal_bytes == (fs / "store.json.journal").stat().st_size
        assert metrics.health()[1]["store"]["problem"] == ""
    finally:
        await store.close()
    reopened = TinyDBStore(path, read_only=True)
    await reopened.open()
    try:
        assert {r.node: r.token for r in reopened.registrations()} == {
            f"n{n}": token for n, token in tokens.items()}
    finally:
        await reopened.close()


# -- the log policy ---------------------------------------------------------------------------
def test_write_failures_are_logged_once_per_condition_then_counted(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status, "LOG_INTERVAL", 0.2)
    state = StoreStatus()
    full = "cannot write store.json.journal: [Errno 28] No space left on device"
    with caplog.at_level(logging.INFO, logger="slixmpp_push.store"):
        for _ in range(1000):
            state.write_failed(full)
        assert [r.levelname for r in caplog.records] == ["ERROR"]
        assert caplog.records[0].getMessage().startswith(f"store write failed: {full} (")
        time.sleep(0.25)
        for _ in range(500):
            state.write_failed(full)
        state.write_failed("cannot write store.json.journal: [Errno 5] Input/output error")
        state.write_succeeded()
        state.write_succeeded()
    assert [r.getMessage() for r in caplog.records[1:]] == [
        # At the first failure after the interval: 999 unlogged ones and itself.
        f"store still not writable: 1000 more failed write(s): {full}",
        "store write failed: cannot write store.json.journal: [Errno 5] Input/output error "
        "(writes that need the store are answered 'wait' until it is fixed; more failures "
        "are counted, not logged)",
        caplog.records[3].getMessage()]
    assert caplog.records[3].getMessage().startswith(
        "store writable again after 1501 failed write(s) in ")
    assert state.writable and state.failed_writes_total == 1501
    # A spell that starts again at once (a flapping disk) is counted, not logged again.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="slixmpp_push.store"):
        state.write_failed("cannot write store.json.journal: [Errno 5] Input/output error")
        state.write_succeeded()
    assert caplog.records == []


# -- the device side: push_registrar ---------------------------------------------------------
class RegistrarOnAFullDisk(SlixTest):
    """A remote disable still turns push off at the server when the store cannot write."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp())
        done = _privileged(["mount", "-t", "tmpfs", "-o",
                            f"size=1m,mode=0700,uid={os.getuid()},gid={os.getgid()}",
                            "tmpfs", str(self.folder)])
        self.assertEqual(done.returncode, 0, done.stderr)
        self.store = TinyDBStore(self.folder / "registrar.json")
        self.stream_start(mode="client", jid="alice@localhost/phone",
                          plugins=["xep_0030", "xep_0004", "xep_0050", "push_registrar"],
                          plugin_config={"push_registrar": {"store": self.store}})
        self.registrar = self.xmpp["push_registrar"]
        self.run_coro(self.registrar.start())

    def tearDown(self) -> None:
        self.run_coro(self.store.close())
        super().tearDown()
        _privileged(["umount", str(self.folder)])
        self.folder.rmdir()

    def test_remote_disable_on_a_full_disk(self) -> None:
        registration = ClientRegistration(
            account="alice@localhost", app_server="push.localhost", dialect="tigase",
            node="n0de", token=apns_token(), provider=APNS_APP, push_jid="push.localhost")
        self.run_coro(self.store.set_doc(CLIENT_REGISTRATIONS, registration.key,
                                         registration.to_doc()))
        self.run_coro(self.store.compact())  # an empty journal: no slack to write into
        filler = fill(self.folder)
        self.recv("<message from='push.localhost' to='alice@localhost'>"
                  "<pubsub xmlns='http://jabber.org/protocol/pubsub' node='n0de'>"
                  "<affiliation jid='alice@localhost' affiliation='none'/></pubsub></message>")
        # Our server is still told to stop pushing to the dropped node ...
        # The write fails in the store's thread: run the loop until it has.
        for _ in range(100):
            self.wait_(0.05)
            if not self.store.status.writable:
                break
        self.wait_()
        self.send("<iq type='set' id='1'><disable xmlns='urn:xmpp:push:0' "
                  "jid='push.localhost' node='n0de'/></iq>", use_values=False)
        self.recv("<iq type='result' to='alice@localhost/phone' id='1'/>")
        self.wait_()
        # ... nothing else went out (no error reply to the app server's message) ...
        self.assertIsNone(self.xmpp.socket.next_sent(0.2))
        # ... and the record is kept (the write failed), to be dropped later.
        self.assertFalse(self.store.status.writable)
        self.assertIn(registration.key, self.store.table(CLIENT_REGISTRATIONS))
        filler.unlink()
