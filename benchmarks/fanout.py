"""Issue 11's fan-out target: paging 10,000 devices through push_notifier vs bare aioapns.

    python benchmarks/fanout.py [--devices 10000] [--rounds 3]

The fake APNs runs in its own process (``_common.FakeApnsChild``: it keeps what it
receives and writes nothing per request). Everything else runs in this process, one
HTTP/2 connection each, 200 requests in flight (``push_notifier.FAN_OUT``), each side on
a warm connection, interleaved in every round:

* **bare aioapns** (the baseline, as in ``publish_throughput.py``): stock
  ``aioapns.APNs`` (token auth) and a loop of 200 workers sending one prebuilt
  ``NotificationRequest`` per device token;
* **bare loop on our pool**: the same loop through ``ApnsProvider``'s connection pool,
  i.e. aioapns with our protocol (flow control, the lean send path): what our own code
  costs above the send path;
* **push_notifier**: ``notify("group:everyone", ...)`` over N accounts with one device
  each (a critical notice: the pager's payload), the default delivery policy (the
  per-node rate limit on): target expansion, registration lookup, requests from
  templates, the delivery engine's bookkeeping, the provider's classification, the report.

Every device's request must reach the fake (checked: the script exits 1 otherwise).
Printed per side: the median time (and pushes/s), the ratio push_notifier / bare aioapns
against the target (<= 1.25) and "target met", the ratio to the bare loop on our pool,
and the time to page 1,000 devices.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import FakeApnsChild, apns_app, cpu_seconds, machine, write_p8_key
from aioapns import NotificationRequest, PushType
from apns_send import stock_client
from slixmpp import ComponentXMPP

import slixmpp_push  # noqa: F401  (registers the plugins)
from slixmpp_push import (
    AppConfig,
    DeliveryPolicy,
    Dialect,
    MemoryStore,
    Notification,
    Priority,
    Registration,
)
from slixmpp_push.notifier.plugin import FAN_OUT
from slixmpp_push.payloads import build_request
from slixmpp_push.providers.apns import ApnsProvider
from slixmpp_push.providers.base import ApnsRequest

TARGET = 1.25  # push_notifier / bare aioapns
TITLE, BODY = "DiskFull", "db1 97% full"


def token(i: int) -> str:
    return f"{i + 1:064x}"  # never all zeros: the fake refuses that one


def account(i: int) -> str:
    return f"user{i}@example.org"


def sample_request(app: AppConfig) -> ApnsRequest:
    """What push_notifier sends the first device: the bare loops send the same payload."""
    request = build_request(
        Registration(node="n", account=account(0), domain="example.org", app=app.id,
                     token=token(0), dialect=Dialect.TIGASE),
        Notification(title=TITLE, body=BODY, priority=Priority.CRITICAL, message_count=1),
        app, time.time())
    assert isinstance(request, ApnsRequest)
    return request


Send = Callable[[NotificationRequest], Awaitable[Any]]


class Timed:
    """Wall time and this process's CPU time of what runs inside ``with``."""

    def __enter__(self) -> Timed:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu


async def bare_loop(send: Send, request: ApnsRequest, first: int, devices: int) -> Timed:
    """``devices`` requests through ``send``, FAN_OUT workers sharing one iterator."""

    def requests() -> Iterator[NotificationRequest]:
        for i in range(first, first + devices):
            yield NotificationRequest(device_token=token(i), message=request.payload,
                                      priority=request.priority, push_type=PushType.ALERT,
                                      time_to_live=3600)

    pending = requests()

    async def worker() -> None:
        for notification in pending:
            result = await send(notification)
            assert result.is_successful, result.description

    with Timed() as timed:
        await asyncio.gather(*(worker() for _ in range(FAN_OUT)))
    return timed


async def stock_aioapns(app: AppConfig, first: int, devices: int) -> Timed:
    """The baseline: stock aioapns, pointed at the fake (as ``apns_send.py`` builds it)."""
    assert app.endpoint is not None and app.key_file is not None and app.ca_file is not None
    client = stock_client(app.endpoint, Path(app.ca_file), Path(app.key_file))
    request = sample_request(app)
    await bare_loop(client.send_notification, request, first - 1, 1)  # warm connection
    timed = await bare_loop(client.send_notification, request, first, devices)
    client.pool.close()
    return timed


async def our_pool(app: AppConfig, first: int, devices: int) -> Timed:
    """The same loop on ApnsProvider's pool (our protocol under aioapns)."""
    provider = ApnsProvider(app)
    await provider.start()
    pool = provider.pool
    assert pool is not None
    request = sample_request(app)
    await bare_loop(pool.send_notification, request, first - 1, 1)
    timed = await bare_loop(pool.send_notification, request, first, devices)
    await provider.close()
    return timed


async def notifier(app: AppConfig, first: int, devices: int) -> Timed:
    """push_notifier.notify to ``devices`` accounts with one registered device each."""
    store = MemoryStore()
    await store.open()
    accounts = [account(i) for i in range(first, first + devices)]
    for i in range(first - 1, first + devices):
        await store.put(Registration(node=f"n{i}", account=account(i), domain="example.org",
                                     app=app.id, token=token(i), dialect=Dialect.TIGASE))
    bot = ComponentXMPP("push.example.org", "unused", "127.0.0.1", 1)
    bot.register_plugin("push_appserver", {"apps": [app], "store": store,
                                           "delivery": DeliveryPolicy()})
    bot.register_plugin("push_notifier", {"chat": False, "groups": {"everyone": accounts}})
    pager = bot.plugin["push_notifier"]
    await pager.start()
    warm = await pager.notify(account(first - 1), "warm up")  # connects
    assert warm.delivered == 1, warm
    with Timed() as timed:
        report = await pager.notify("group:everyone", TITLE, BODY, priority="critical")
    assert report.delivered == devices, (report.delivered, devices)
    # Delivered means the provider accepted it, not that it waits in the retry queue.
    assert not bot.plugin["push_appserver"].delivery.pending_count, "pushes went pending"
    await pager.stop()
    await bot.plugin["push_appserver"].stop()
    return timed


async def main(devices: int, rounds: int) -> int:
    print(f"fanout: {machine()}")
    folder = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    fake = FakeApnsChild()
    await fake.start()
    app = apns_app(fake.endpoint, fake.ca_file, write_p8_key(folder))
    app.max_connections = 1
    app.timeout = 30.0
    runs: dict[str, list[Timed]] = {"stock": [], "pool": [], "ours": [], "small": []}
    first, expected = 1, 0
    try:
        for _ in range(rounds):
            for name, run, count in (("stock", stock_aioapns, devices),
                                     ("pool", our_pool, devices),
                                     ("ours", notifier, devices),
                                     ("small", notifier, 1000)):
                try:
                    runs[name].append(await run(app, first, count))
                except AssertionError as failure:  # a push refused, or left pending
                    print(f"PROBLEM: {name}, {count:,} devices: {failure}")
                    return 1
                first += count + 1
                expected += count + 1
        received = await fake.wait_for(expected)
    finally:
        await fake.stop()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(fake.folder, ignore_errors=True)

    def median(name: str, what: str) -> float:
        return statistics.median(getattr(run, what) for run in runs[name])

    def ratios(name: str, what: str, base: str) -> list[float]:
        return sorted(getattr(a, what) / getattr(b, what)
                      for a, b in zip(runs[name], runs[base], strict=True))

    print(f"fan-out to {devices:,} devices, {rounds} round(s); medians [range]:")
    for label, name in (("bare aioapns (stock)", "stock"), ("bare loop, our pool", "pool"),
                        ("push_notifier", "ours")):
        walls = [run.wall for run in runs[name]]
        print(f"  {label:<22} {median(name, 'wall'):6.2f} s [{min(walls):.2f}–{max(walls):.2f}]"
              f"  {devices / median(name, 'wall'):7,.0f} pushes/s   CPU of this process "
              f"{median(name, 'cpu') / devices * 1e6:4.0f} µs per push")
    for label, base in (("bare aioapns", "stock"), ("bare loop, our pool", "pool")):
        wall, cpu = ratios("ours", "wall", base), ratios("ours", "cpu", base)
        print(f"  push_notifier / {label:<20} time {statistics.median(wall):5.2f} "
              f"[{wall[0]:.2f}–{wall[-1]:.2f}], CPU {statistics.median(cpu):5.2f} "
              f"[{cpu[0]:.2f}–{cpu[-1]:.2f}]")
    ratio = statistics.median(ratios("ours", "wall", "stock"))
    print(f"  target: time <= {TARGET} x bare aioapns: target met: "
          f"{'yes' if ratio <= TARGET else 'NO'} ({ratio:.2f}; by CPU "
          f"{statistics.median(ratios('ours', 'cpu', 'stock')):.2f})")
    print(f"  page 1,000 devices               {median('small', 'wall'):5.2f} s")
    if received != expected:
        print(f"PROBLEM: the fake APNs got {received} requests, {expected} were sent")
        return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments.devices, arguments.rounds)))
