"""Store benchmark: lookups, durable registration writes, cold start, memory.

    python benchmarks/store.py [--sizes 10000 100000]

Targets (issue 5): lookup <= 20 µs, durable register p99 <= 20 ms, cold
start <= 3 s at 100k registrations. Each figure is printed with a baseline
measured in the same run on this machine:
- lookup: a plain dict lookup of the same keys;
- durable register: appending one line to a file and fsyncing it (the
  floor of any durable write);
- cold start: json.load of a file of the same size.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slixmpp_push import Dialect, Registration, TinyDBStore


def registration(i: int) -> Registration:
    return Registration(node=f"node{i:08d}xx", account=f"user{i}@example.org",
                        domain="example.org", app="tigase:messenger:apns:1",
                        token=f"{i:064x}", dialect=Dialect.TIGASE,
                        voip_token=f"{i + 7:064x}", created=1.7e9, updated=1.7e9)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def fill(path: Path, size: int) -> None:
    store = TinyDBStore(path)
    await store.open()
    batch = 2000
    for start in range(0, size, batch):
        await asyncio.gather(*(store.put(registration(i))
                               for i in range(start, min(size, start + batch))))
    await store.close()  # writes the snapshot


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


async def measure(size: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="bench-store-"))
    path = folder / "store.json"
    await fill(path, size)

    began = time.perf_counter()
    with open(path) as handle:
        json.load(handle)
    json_load = time.perf_counter() - began

    # Memory first, in a store of its own: tracemalloc slows allocation down.
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    probe = TinyDBStore(path, read_only=True)
    await probe.open()
    memory = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del probe
    gc.collect()

    began = time.perf_counter()
    store = TinyDBStore(path)
    await store.open()
    cold_start = time.perf_counter() - began

    keys = [f"node{i:08d}xx" for i in range(0, size, max(1, size // 10000))]
    plain = {key: object() for key in keys}
    rounds = 20
    began = time.perf_counter()
    for _ in range(rounds):
        for key in keys:
            store.get(key)
    lookup = (time.perf_counter() - began) / (rounds * len(keys))
    began = time.perf_counter()
    for _ in range(rounds):
        for key in keys:
            plain.get(key)
    dict_lookup = (time.perf_counter() - began) / (rounds * len(keys))

    writes = []
    for i in range(300):  # one at a time: each waits for its own fsync
        began = time.perf_counter()
        await store.put(registration(size + i))
        writes.append(time.perf_counter() - began)
    await store.close()
    baseline = fsync_baseline(folder, 300)
    return {
        "size": size, "lookup_us": lookup * 1e6, "dict_lookup_us": dict_lookup * 1e6,
        "write_p50_ms": statistics.median(writes) * 1e3,
        "write_p99_ms": percentile(writes, 0.99) * 1e3,
        "fsync_p99_ms": percentile(baseline, 0.99) * 1e3,
        "cold_start_s": cold_start, "json_load_s": json_load,
        "bytes_per_registration": memory / size,
        "file_mb": path.stat().st_size / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    for size in args.sizes:
        r = asyncio.run(measure(size))
        print(f"\n{size:,} registrations (file {r['file_mb']:.1f} MB)")
        print(f"  lookup            {r['lookup_us']:7.2f} µs   (dict {r['dict_lookup_us']:.2f} µs, "
              f"ratio {r['lookup_us'] / r['dict_lookup_us']:.1f})   target <= 20 µs")
        print(f"  durable register  p50 {r['write_p50_ms']:.2f} ms, p99 {r['write_p99_ms']:.2f} ms "
              f"(bare append+fsync p99 {r['fsync_p99_ms']:.2f} ms, ratio "
              f"{r['write_p99_ms'] / r['fsync_p99_ms']:.1f})   target p99 <= 20 ms")
        print(f"  cold start        {r['cold_start_s']:.2f} s   (json.load alone "
              f"{r['json_load_s']:.2f} s, ratio {r['cold_start_s'] / r['json_load_s']:.1f})"
              "   target <= 3 s at 100k")
        print(f"  memory            {r['bytes_per_registration']:.0f} bytes per registration")


if __name__ == "__main__":
    main()
