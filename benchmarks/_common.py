"""Helpers shared by publish_throughput.py and latency_prosody.py.

- :class:`FakeApnsChild`: the fake APNs (tests/fakes/fake_apns.py) in its own
  process, asked over its stdin how many requests it received (``count``) and
  when each arrived (``times``: CLOCK_MONOTONIC, system-wide on Linux, so
  comparable with this process's ``time.monotonic()``). It keeps only
  ``(token, time, payload body)`` per request, nothing per request goes to a pipe, so it
  costs the machine what the fake itself costs.
- :func:`write_p8_key`: a throwaway EC P-256 signing key (token auth).
- :func:`apns_app`: the AppConfig pointing at the fake.
- :func:`pct`, :func:`machine`: percentiles and a one-line description of the box.
- :func:`cpu_seconds`, :func:`tree_cpu_seconds`, :class:`CpuMeter`: CPU used by
  processes (a process tree: a PostgreSQL server and its backends).

Run as a script, this file is that fake APNs process::

    python benchmarks/_common.py fake-apns --ca-dir DIR    # prints PORT n
"""

from __future__ import annotations

import asyncio
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

APNS_APP = "tigase:messenger:apns:1"
TOPIC = "org.example.chat"
KEY_ID = "BENCH12345"
TEAM_ID = "TEAM123456"


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        load = "?"
    import os
    return (f"{os.cpu_count()} CPU ({model}), Python {platform.python_version()}, "
            f"load average {load}, {time.strftime('%Y-%m-%d %H:%M')}")


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU time of ``root`` and of every process below it, those still running and those
    that ended (a PostgreSQL postmaster's backends come and go): the sum over the living
    of their own and their reaped children's time (/proc/PID/stat utime, stime, cutime,
    cstime). A process that ends is reaped by its parent, so its time stays counted."""
    import os

    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, seconds)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat)."""
    import os

    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU share of some processes over an interval: ``start()``, then ``shares()``.

    Each process is a PID (``"self"``: this one), or a function that returns the CPU
    seconds of what it stands for (``lambda: tree_cpu_seconds(postmaster)``)."""

    def __init__(self, **pids: int | str | Callable[[], float]) -> None:
        self.pids = pids
        self._begin: dict[str, float] = {}
        self._at = 0.0

    @staticmethod
    def _seconds(pid: int | str | Callable[[], float]) -> float:
        return pid() if callable(pid) else cpu_seconds(pid)

    def start(self) -> None:
        self._at = time.monotonic()
        self._begin = {name: self._seconds(pid) for name, pid in self.pids.items()}
        self._machine = _machine_busy()

    def shares(self) -> dict[str, float]:
        """name -> fraction of one core used since start(); ``others``: the rest of
        the machine (other people's work on this shared box)."""
        elapsed = time.monotonic() - self._at
        shares = {name: (self._seconds(pid) - self._begin[name]) / elapsed
                  for name, pid in self.pids.items()}
        machine = (_machine_busy() - self._machine) / elapsed
        shares["others"] = max(0.0, machine - sum(shares.values()))
        return shares

    @staticmethod
    def describe(shares: dict[str, float]) -> str:
        return ", ".join(f"{name} {share * 100:.0f} %" for name, share in shares.items())


def write_p8_key(folder: Path) -> Path:
    """A throwaway APNs token-auth key (.p8 is PKCS#8 PEM of an EC P-256 key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = folder / f"AuthKey_{KEY_ID}.p8"
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def apns_app(endpoint: str, ca_file: Path, key_file: Path,
             include_body: bool = False):  # -> AppConfig
    from slixmpp_push import AppConfig

    return AppConfig(id=APNS_APP, type="apns", topic=TOPIC, key_file=str(key_file),
                     key_id=KEY_ID, team_id=TEAM_ID, endpoint=endpoint,
                     ca_file=str(ca_file), include_body=include_body, timeout=10.0)


class FakeApnsChild:
    """The fake APNs in a child process; ``await count()``, ``await times()``."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="bench-apns-"))
        self.port = 0
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "fake-apns",
            "--ca-dir", str(self.folder), cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            limit=1 << 26)  # ``times`` answers in one JSON line
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), 30)
        if not line.startswith(b"PORT "):
            raise RuntimeError(f"fake APNs did not start: {line!r}")
        self.port = int(line.split()[1])

    async def _ask(self, command: str) -> bytes:
        assert self._process is not None
        assert self._process.stdin is not None and self._process.stdout is not None
        async with self._lock:
            self._process.stdin.write(command.encode() + b"\n")
            await self._process.stdin.drain()
            return await asyncio.wait_for(self._process.stdout.readline(), 30)

    async def count(self) -> int:
        return int(await self._ask("count"))

    async def times(self) -> list[tuple[str, float, str]]:
        """(token, monotonic arrival, payload "body" or "") of every request so far,
        in arrival order."""
        return [tuple(x) for x in json.loads(await self._ask("times"))]  # type: ignore[misc]

    async def wait_for(self, count: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            seen = await self.count()
            if seen >= count or time.monotonic() > deadline:
                return seen
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        assert process.stdin is not None
        process.stdin.close()  # the child stops at end of input
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.terminate()
            await process.wait()


# -- the child side ---------------------------------------------------------------
async def _serve_fake_apns(ca_dir: str) -> None:
    from tests.fakes.fake_apns import FakeApns
    from tests.fakes.tls import TestCA

    fake = FakeApns(TestCA(Path(ca_dir)))
    seen: list[tuple[str, float, str]] = []

    def record(entry: Any) -> None:  # token, arrival, and the payload's "body" if any
        body = entry.body.get("body", "") if isinstance(entry.body, dict) else ""
        seen.append((entry.token, entry.received, body))

    fake._record = record  # type: ignore[method-assign]
    await fake.start()
    print(f"PORT {fake.port}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while command := (await reader.readline()).strip():
            if command == b"count":
                answer = str(len(seen))
            elif command == b"times":
                answer = json.dumps(seen)
            else:
                answer = "?"
            sys.stdout.write(answer + "\n")
            sys.stdout.flush()
    finally:
        await fake.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["fake-apns"] and sys.argv[2:3] == ["--ca-dir"]:
        asyncio.run(_serve_fake_apns(sys.argv[3]))
    else:
        sys.exit(__doc__)
