"""Store benchmark: TinyDB and PostgreSQL side by side, in one run.

    python benchmarks/store.py [--sizes 10000 100000] [--backend tinydb|postgresql|both]

For each size and back end: publish lookup (``store.get``, from memory in both),
durable register latency (``await store.put`` one at a time, then 2,000 at once),
cold start (opening a store that holds the registrations, writable, as ``serve``
does) and memory. PostgreSQL runs in a private cluster (tests/postgres.py) started
with the server's default durability (fsync, synchronous_commit and full_page_writes
on), as in production, on the same disk as the TinyDB files; the settings are
printed. It is stopped and removed at the end.

Targets (issue 5): lookup <= 20 µs, durable register p99 <= 20 ms, cold
start <= 3 s at 100k registrations. Each figure is printed with a baseline
measured in the same run on this machine:
- lookup: a plain dict lookup of the same keys;
- durable register: appending one line to a file and fsyncing it (the floor of
  any durable write), and for PostgreSQL one bare INSERT in its own transaction
  (no trigger, no store);
- cold start: json.load of the TinyDB file, and for PostgreSQL a bare
  ``SELECT key, doc FROM registrations`` (not decoded).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The benchmarks' helpers, the package, and tests/ for its private PostgreSQL.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, pct

from slixmpp_push import Dialect, Registration, TinyDBStore
from slixmpp_push.store import Store, create_store

BACKENDS = {"tinydb": ("tinydb",), "postgresql": ("postgresql",),
            "both": ("tinydb", "postgresql")}
SEQUENTIAL_WRITES = 300
CONCURRENT_WRITES = 2_000
FILL_BATCH = 2_000
LOOKUP_US, REGISTER_P99_MS, COLD_START_S = 20.0, 20.0, 3.0  # issue 5


def registration(i: int) -> Registration:
    return Registration(node=f"node{i:08d}xx", account=f"user{i}@example.org",
                        domain="example.org", app="tigase:messenger:apns:1",
                        token=f"{i:064x}", dialect=Dialect.TIGASE,
                        voip_token=f"{i + 7:064x}", created=1.7e9, updated=1.7e9)


async def fill(store: Store, size: int) -> None:
    for start in range(0, size, FILL_BATCH):
        await asyncio.gather(*(store.put(registration(i))
                               for i in range(start, min(size, start + FILL_BATCH))))


async def timed_put(store: Store, i: int) -> float:
    began = time.perf_counter()
    await store.put(registration(i))
    return time.perf_counter() - began


def fsync_baseline(folder: Path, count: int) -> list[float]:
    times = []
    fd = os.open(folder / "baseline.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    line = json.dumps(["registrations", "x", registration(0).to_doc()]).encode() + b"\n"
    try:
        for _ in range(count):
            began = time.perf_counter()
            os.write(fd, line)
            os.fsync(fd)
            times.append(time.perf_counter() - began)
    finally:
        os.close(fd)
    return times


async def measure(make: Callable[[bool], Store], size: int) -> dict[str, float]:
    """The figures of the store ``make(read_only)`` opens, filled with ``size``."""
    store = make(False)
    await store.open()
    await fill(store, size)
    await store.close()  # TinyDB: writes the snapshot

    # Memory first, in a store of its own: tracemalloc slows allocation down.
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    probe = make(True)
    await probe.open()
    memory = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    await probe.close()
    del probe
    gc.collect()

    began = time.perf_counter()
    store = make(False)
    await store.open()
    cold_start = time.perf_counter() - began

    keys = [f"node{i:08d}xx" for i in range(0, size, max(1, size // 10000))]
    rounds = 20
    began = time.perf_counter()
    for _ in range(rounds):
        for key in keys:
            store.get(key)
    lookup = (time.perf_counter() - began) / (rounds * len(keys))

    # One at a time: each waits for its own commit.
    writes = [await timed_put(store, size + i) for i in range(SEQUENTIAL_WRITES)]
    first = size + SEQUENTIAL_WRITES
    began = time.perf_counter()
    together = await asyncio.gather(*(timed_put(store, first + i)
                                      for i in range(CONCURRENT_WRITES)))
    wall = time.perf_counter() - began
    await store.close()
    return {
        "lookup_us": lookup * 1e6, "cold_start_s": cold_start,
        "write_p50_ms": statistics.median(writes) * 1e3, "write_p99_ms": pct(writes, 0.99) * 1e3,
        "burst_wall_ms": wall * 1e3, "burst_p99_ms": pct(list(together), 0.99) * 1e3,
        "bytes_per_registration": memory / size,
    }


def dict_lookup_us(size: int) -> float:
    keys = [f"node{i:08d}xx" for i in range(0, size, max(1, size // 10000))]
    plain = {key: object() for key in keys}
    rounds = 20
    began = time.perf_counter()
    for _ in range(rounds):
        for key in keys:
            plain.get(key)
    return (time.perf_counter() - began) / (rounds * len(keys)) * 1e6


def json_load_seconds(path: Path) -> float:
    began = time.perf_counter()
    with open(path) as handle:
        json.load(handle)
    return time.perf_counter() - began


def filesystem(path: Path) -> str:
    """The type of the file system ``path`` is on (/proc/mounts), or '?'."""
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, point, fstype, *_ = line.split()
            if str(path.resolve()).startswith(point.rstrip("/") + "/") and len(point) > len(best):
                best, kind = point, fstype
    except OSError:
        pass
    return kind


# -- TinyDB --------------------------------------------------------------------------------
async def measure_tinydb(size: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="bench-store-"))
    path = folder / "store.json"
    try:
        figures = await measure(lambda read_only: TinyDBStore(path, read_only=read_only), size)
        figures["json_load_s"] = json_load_seconds(path)
        baseline = fsync_baseline(folder, SEQUENTIAL_WRITES)
        figures["file_mb"] = path.stat().st_size / 1e6
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    figures["fsync_p50_ms"] = statistics.median(baseline) * 1e3
    figures["fsync_p99_ms"] = pct(baseline, 0.99) * 1e3
    return figures


# -- PostgreSQL ----------------------------------------------------------------------------
@dataclass
class Postgres:
    server: Any  # tests/postgres.py PostgresServer
    role: str

    @classmethod
    def start(cls) -> Postgres:
        from postgres import PASSWORD_ROLE, PostgresServer

        server = PostgresServer(durable=True)
        try:
            server.start()
        except BaseException:
            server.remove()
            raise
        return cls(server, PASSWORD_ROLE)

    def settings(self) -> str:
        names = ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method",
                 "shared_buffers")
        listed = ", ".join(f"'{name}'" for name in names)
        found = self.server.psql("SELECT string_agg(name || '=' || current_setting(name), ', ' "
                                 f"ORDER BY name) FROM pg_settings WHERE name IN ({listed})")
        version = self.server.psql("SHOW server_version").split()[0]
        return (f"PostgreSQL {version}, private cluster on 127.0.0.1 (TCP, SCRAM), data on "
                f"{filesystem(self.server.data)}: {found.strip()}")

    def new_database(self) -> str:
        return self.server.url(self.server.create_database(owner=self.role), user=self.role)

    def stop(self) -> None:
        self.server.remove()


async def measure_postgres(postgres: Postgres, size: int) -> dict[str, float]:
    import asyncpg

    url, password = postgres.new_database(), postgres.server.password
    figures = await measure(
        lambda read_only: create_store(url, password=password, read_only=read_only), size)
    conn = await asyncpg.connect(url, password=password)
    try:
        began = time.perf_counter()
        await conn.fetch("SELECT key, doc FROM registrations")
        figures["select_s"] = time.perf_counter() - began
        await conn.execute("CREATE TABLE bare (key text PRIMARY KEY, doc json NOT NULL)")
        doc = json.dumps(registration(0).to_doc())
        inserts = []
        for i in range(SEQUENTIAL_WRITES):
            began = time.perf_counter()
            await conn.execute("INSERT INTO bare (key, doc) VALUES ($1, $2)", str(i), doc)
            inserts.append(time.perf_counter() - began)
    finally:
        await conn.close()
    figures["insert_p50_ms"] = statistics.median(inserts) * 1e3
    figures["insert_p99_ms"] = pct(inserts, 0.99) * 1e3
    return figures


# -- the table -----------------------------------------------------------------------------
def report(results: dict[str, dict[str, float]], dict_us: float) -> None:
    tiny, pg = results.get("tinydb"), results.get("postgresql")
    labels = {"tinydb": "TinyDB", "postgresql": "PostgreSQL"}
    names = [name for name in labels if name in results]
    head = f"{'':34}" + "".join(f"{labels[n]:>12}" for n in names)
    if tiny and pg:
        head += f"{'PG/TinyDB':>11}"
    print(f"{head}   {'target':<12}{'met':<11}baseline (same run)")

    def row(label: str, key: str, unit: str, target: float | None, baseline: str) -> None:
        line = f"{label + ', ' + unit:34}" + "".join(f"{results[n][key]:12.2f}" for n in names)
        if tiny and pg:
            line += f"{pg[key] / tiny[key]:11.1f}"
        if target is None:
            aim = met = "-"
        else:
            aim = f"<= {target:g} {unit}"
            met = " / ".join("yes" if results[n][key] <= target else "NO" for n in names)
        print(f"{line}   {aim:<12}{met:<11}{baseline}".rstrip())

    def floors(quantile: str) -> str:
        found = []
        if tiny:
            found.append(f"append+fsync {tiny['fsync_' + quantile]:.2f}")
        if pg:
            found.append(f"bare INSERT {pg['insert_' + quantile]:.2f}")
        return "; ".join(found)

    row("publish lookup", "lookup_us", "µs", LOOKUP_US, f"dict {dict_us:.2f}")
    row("durable register p50", "write_p50_ms", "ms", None, floors("p50_ms"))
    row("durable register p99", "write_p99_ms", "ms", REGISTER_P99_MS, floors("p99_ms"))
    row(f"{CONCURRENT_WRITES:,} puts at once, all done", "burst_wall_ms", "ms", None, "")
    row(f"{CONCURRENT_WRITES:,} puts at once, p99 each", "burst_p99_ms", "ms", None, "")
    cold = []
    if tiny:
        cold.append(f"json.load {tiny['json_load_s']:.2f}")
    if pg:
        cold.append(f"bare SELECT {pg['select_s']:.2f}")
    row("cold start", "cold_start_s", "s", COLD_START_S, "; ".join(cold))
    row("memory per registration", "bytes_per_registration", "B", None, "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="both")
    args = parser.parse_args()
    backends = BACKENDS[args.backend]
    print(machine())
    postgres = Postgres.start() if "postgresql" in backends else None
    try:
        if "tinydb" in backends:
            print(f"TinyDB: file + journal in {tempfile.gettempdir()} on "
                  f"{filesystem(Path(tempfile.gettempdir()))}, fsync per group commit")
        if postgres is not None:
            print(postgres.settings())
        for size in args.sizes:
            results = {}
            if "tinydb" in backends:
                results["tinydb"] = asyncio.run(measure_tinydb(size))
            if postgres is not None:
                results["postgresql"] = asyncio.run(measure_postgres(postgres, size))
            extra = ""
            if "tinydb" in results:
                extra = f" (TinyDB file {results['tinydb']['file_mb']:.1f} MB)"
            print(f"\n{size:,} registrations{extra}")
            report(results, dict_lookup_us(size))
    finally:
        if postgres is not None:
            postgres.stop()


if __name__ == "__main__":
    main()
