"""Store benchmark: TinyDB and PostgreSQL side by side, in one run.

    python benchmarks/store.py [--sizes 10000 100000] [--backend tinydb|postgresql|both]
                               [--rounds 5] [--no-rss]

For each size and back end: publish lookup (``store.get``, from memory in both),
durable register latency (``await store.put`` one at a time, then 2,000 at once),
cold start (opening a store that holds the registrations, writable, as ``serve``
does), memory per registration (tracemalloc) and the resident memory of a real
``slixmpp-push serve`` holding them. PostgreSQL runs in a private cluster
(tests/postgres.py) started with the server's default durability (fsync,
synchronous_commit and full_page_writes on), as in production, on the same disk as
the TinyDB files; the settings are printed. It is stopped and removed at the end.

Targets: issue 5's lookup <= 20 µs, durable register p99 <= 20 ms, cold start
<= 3 s at 100k registrations; issue 11's memory <= 500 bytes per registration
(tracemalloc), resident memory of ``serve`` at 100k <= 1.5x with an empty store,
cold start <= 1.5x a plain json.load of the same data. Each figure is printed with
a baseline measured in the same run on this machine:
- lookup: a plain dict lookup of the same keys;
- durable register: appending one line to a file and fsyncing it (the floor of
  any durable write), and for PostgreSQL one bare INSERT in its own transaction
  (no trigger, no store);
- cold start: json.load of the TinyDB file, and for PostgreSQL a bare
  ``SELECT key, doc FROM registrations`` followed by json.loads of each row (the
  same data into Python). Measured ``--rounds`` times, alternating with its
  baseline: the medians, and the median of the per-round ratios;
- resident memory (VmRSS), and the time from starting ``serve`` to its connection
  (it loads the store and starts its providers first): the same ``serve`` with an
  empty store. Each ``serve`` is a fresh process started from a config file as an
  operator writes it (the store, an APNs app pointed at the fake APNs in its own
  process); its memory is read a second after it connected to this process, which
  plays the XMPP server (XEP-0114 handshake), once everything is loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The benchmarks' helpers, the package, and tests/ for its private PostgreSQL.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import FakeApnsChild, machine, pct, write_p8_key
from e2e import apns_app_toml
from publish_throughput import COMPONENT, ServerStream

from slixmpp_push import Dialect, Registration, TinyDBStore
from slixmpp_push.store import Store, create_store

BACKENDS = {"tinydb": ("tinydb",), "postgresql": ("postgresql",),
            "both": ("tinydb", "postgresql")}
SEQUENTIAL_WRITES = 300
CONCURRENT_WRITES = 2_000
FILL_BATCH = 2_000
LOOKUP_US, REGISTER_P99_MS, COLD_START_S = 20.0, 20.0, 3.0  # issue 5
BYTES_PER_REGISTRATION, RSS_RATIO, COLD_START_RATIO = 500.0, 1.5, 1.5  # issue 11, at:
ISSUE_11_SIZE = 100_000
#: After connecting, serve is left this long before its memory is read.
RSS_SETTLE_S = 1.0


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


async def measure(make: Callable[[bool], Store], size: int, starts: int,
                  baseline: Callable[[], Awaitable[float]],
                  serve: Callable[[], Awaitable[dict[str, float]]] | None,
                  ) -> dict[str, float]:
    """The figures of the store ``make(read_only)`` opens, filled with ``size``;
    ``baseline()`` times the cold start's baseline (json.load of the same data), taken
    after each of the ``starts`` cold starts; ``serve()`` runs serve on it."""
    store = make(False)
    await store.open()
    await fill(store, size)
    await store.close()  # TinyDB: writes the snapshot
    figures = {} if serve is None else await serve()  # before the writes below

    # Memory first, in a store of its own: tracemalloc slows allocation down.
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    probe = make(True)
    await probe.open()
    memory, peak = (value - before for value in tracemalloc.get_traced_memory())
    tracemalloc.stop()
    await probe.close()
    del probe
    gc.collect()

    # Cold start, alternating with its baseline (the machine's load drifts).
    cold_starts, baselines = [], []
    for start in range(starts):
        if start:
            await store.close()
            del store
            gc.collect()
        began = time.perf_counter()
        store = make(False)
        await store.open()
        cold_starts.append(time.perf_counter() - began)
        baselines.append(await baseline())

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
    return figures | {
        "lookup_us": lookup * 1e6, "cold_start_s": statistics.median(cold_starts),
        "baseline_s": statistics.median(baselines),
        "cold_ratio": statistics.median(c / b for c, b in zip(cold_starts, baselines,
                                                               strict=True)),
        "write_p50_ms": statistics.median(writes) * 1e3, "write_p99_ms": pct(writes, 0.99) * 1e3,
        "burst_wall_ms": wall * 1e3, "burst_p99_ms": pct(list(together), 0.99) * 1e3,
        "bytes_per_registration": memory / size, "peak_per_registration": peak / size,
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
    gc.collect()
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
async def measure_tinydb(size: int, rounds: int, serve: Serve | None) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="bench-store-"))
    path = folder / "store.json"
    try:
        async def json_load() -> float:
            return json_load_seconds(path)

        figures = await measure(lambda read_only: TinyDBStore(path, read_only=read_only), size,
                                rounds, json_load,
                                None if serve is None else lambda: serve.run(str(path)))
        baseline = fsync_baseline(folder, SEQUENTIAL_WRITES)
        figures["file_mb"] = path.stat().st_size / 1e6
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    figures["fsync_p50_ms"] = statistics.median(baseline) * 1e3
    figures["fsync_p99_ms"] = pct(baseline, 0.99) * 1e3
    return figures


def serve_config(folder: Path, name: str, port: int, secret: str, appserver: str,
                 rest: str) -> Path:
    """``folder/name.toml``: a ``serve`` config for the benchmarks' component on
    127.0.0.1:``port`` (its secret written beside it), ``appserver`` the lines of its
    ``[appserver]`` table, ``rest`` the tables after it."""
    (folder / "component.secret").write_text(secret + "\n")
    config = folder / f"{name}.toml"
    config.write_text(f"""
[xmpp]
mode = "component"
jid = "{COMPONENT}"
host = "127.0.0.1"
port = {port}
secret_file = "{folder / 'component.secret'}"

[appserver]
{appserver}
{rest}""")
    return config


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


async def select_and_decode_seconds(url: str, password: str) -> float:
    """A bare SELECT of the registrations, and json.loads of each: the same data as the
    store's, into Python (on a connection made beforehand, as the store's is)."""
    import asyncpg

    conn = await asyncpg.connect(url, password=password)
    try:
        gc.collect()
        began = time.perf_counter()
        for _, doc in await conn.fetch("SELECT key, doc FROM registrations"):
            json.loads(doc)
        return time.perf_counter() - began
    finally:
        await conn.close()


async def measure_postgres(postgres: Postgres, size: int, rounds: int,
                           serve: Serve | None) -> dict[str, float]:
    import asyncpg

    url, password = postgres.new_database(), postgres.server.password
    figures = await measure(
        lambda read_only: create_store(url, password=password, read_only=read_only), size,
        rounds, lambda: select_and_decode_seconds(url, password),
        None if serve is None else lambda: serve.run(url))
    conn = await asyncpg.connect(url, password=password)
    try:
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


# -- serve's resident memory ---------------------------------------------------------------
class Serve:
    """Real ``slixmpp-push serve`` processes, one at a time, for their resident memory:
    the fake APNs they use is started once, the XMPP server's end is this process."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="bench-serve-"))
        self.fake = FakeApnsChild()
        self.apps = ""
        self.password_file: Path | None = None

    async def start(self, database_password: str | None) -> None:
        await self.fake.start()
        key = write_p8_key(self.folder)
        self.apps = apns_app_toml(key, self.fake.endpoint, self.fake.ca_file)
        if database_password is not None:
            self.password_file = self.folder / "store.password"
            self.password_file.write_text(database_password + "\n")
            self.password_file.chmod(0o600)

    async def stop(self) -> None:
        await self.fake.stop()
        shutil.rmtree(self.fake.folder, ignore_errors=True)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _config(self, store: str, port: int, secret: str) -> Path:
        password = (f'store_password_file = "{self.password_file}"\n'
                    if store.startswith("postgresql://") else "")
        return serve_config(self.folder, "serve", port, secret,
                            f'store = "{store}"\n{password}', self.apps)

    async def run(self, store: str) -> dict[str, float]:
        """A fresh ``serve`` on ``store``: how long it took to connect (``ready_s``: it
        loads the store and starts its providers first), and its VmRSS then (MB)."""
        loop = asyncio.get_running_loop()
        secret = secrets.token_hex(12)
        accepted: asyncio.Queue[Any] = asyncio.Queue()
        server = await loop.create_server(lambda: ServerStream(secret, accepted, []),
                                          "127.0.0.1", 0)
        config = self._config(store, server.sockets[0].getsockname()[1], secret)
        log = self.folder / "serve.log"
        output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        began = time.perf_counter()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "slixmpp_push.cli", "serve", "--config", str(config),
                stdout=output, stderr=subprocess.STDOUT, cwd=self.folder)
        finally:
            os.close(output)
        try:
            connected = asyncio.ensure_future(accepted.get())
            ended = asyncio.ensure_future(process.wait())
            await asyncio.wait([connected, ended], timeout=120,
                               return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
            if not connected.done():
                connected.cancel()
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
                raise RuntimeError(f"serve did not connect:\n{tail}")
            ready = time.perf_counter() - began
            await asyncio.sleep(RSS_SETTLE_S)
            status = Path(f"/proc/{process.pid}/status").read_text()
            found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
            assert found is not None
            return {"rss_mb": int(found.group(1)) / 1024, "ready_s": ready}
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()
                    await process.wait()
            server.close()


# -- the table -----------------------------------------------------------------------------
def report(results: dict[str, dict[str, float]], dict_us: float, size: int) -> None:
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
        cold.append(f"json.load {tiny['baseline_s']:.2f} s")
    if pg:
        cold.append(f"SELECT + json.loads {pg['baseline_s']:.2f} s")
    row("cold start", "cold_start_s", "s", COLD_START_S, "; ".join(cold))
    # Issue 11's targets are for 100k registrations: fixed costs weigh on fewer.
    at_scale = size >= ISSUE_11_SIZE
    row("cold start / baseline", "cold_ratio", "×", COLD_START_RATIO if at_scale else None,
        "median of the rounds' ratios")
    row("memory per registration", "bytes_per_registration", "B",
        BYTES_PER_REGISTRATION if at_scale else None,
        "tracemalloc; peak while opening " + ", ".join(
            f"{results[n]['peak_per_registration']:.0f} B" for n in names))
    if all("rss_mb" in results[n] for n in names):
        row("serve ready after start", "ready_s", "s", None, "empty store " + ", ".join(
            f"{results[n]['ready_empty_s']:.2f} s" for n in names))
        row("serve's resident memory", "rss_mb", "MB", None, "empty store " + ", ".join(
            f"{results[n]['rss_empty_mb']:.1f} MB" for n in names))
        row("resident memory / empty store", "rss_ratio", "×", RSS_RATIO if at_scale else None,
            "VmRSS")


async def run(args: argparse.Namespace) -> None:
    backends = BACKENDS[args.backend]
    print(machine())
    postgres = await asyncio.to_thread(Postgres.start) if "postgresql" in backends else None
    serve = None if args.no_rss else Serve()
    try:
        if "tinydb" in backends:
            print(f"TinyDB: file + journal in {tempfile.gettempdir()} on "
                  f"{filesystem(Path(tempfile.gettempdir()))}, fsync per group commit")
        if postgres is not None:
            print(postgres.settings())
        empty: dict[str, dict[str, float]] = {}
        if serve is not None:
            await serve.start(postgres.server.password if postgres is not None else None)
            if "tinydb" in backends:
                empty["tinydb"] = await serve.run(str(serve.folder / "empty.json"))
            if postgres is not None:
                empty["postgresql"] = await serve.run(postgres.new_database())
        for size in args.sizes:
            results = {}
            if "tinydb" in backends:
                results["tinydb"] = await measure_tinydb(size, args.rounds, serve)
            if postgres is not None:
                results["postgresql"] = await measure_postgres(postgres, size, args.rounds,
                                                               serve)
            for name, figures in results.items():
                if name in empty:
                    figures["rss_empty_mb"] = empty[name]["rss_mb"]
                    figures["ready_empty_s"] = empty[name]["ready_s"]
                    figures["rss_ratio"] = figures["rss_mb"] / empty[name]["rss_mb"]
            extra = ""
            if "tinydb" in results:
                extra = f" (TinyDB file {results['tinydb']['file_mb']:.1f} MB)"
            print(f"\n{size:,} registrations{extra}")
            report(results, dict_lookup_us(size), size)
    finally:
        if serve is not None:
            await serve.stop()
        if postgres is not None:
            await asyncio.to_thread(postgres.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="both")
    parser.add_argument("--rounds", type=int, default=5,
                        help="cold starts per size and back end, each with its baseline")
    parser.add_argument("--no-rss", action="store_true",
                        help="skip the resident memory of serve processes")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
