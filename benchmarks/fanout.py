"""Fan-out: page N devices through push_notifier vs a bare aioapns loop.

    python benchmarks/fanout.py [--devices 10000] [--rounds 2]

Both send the same N notifications to the same fake APNs (in its own process),
over one HTTP/2 connection, with the same number of requests in flight (200).
The baseline is aioapns alone: build a NotificationRequest, send it. Ours is
``push_notifier.notify`` over N accounts, each with one registered device:
target expansion, registration lookup, payload building, the delivery
engine's bookkeeping, the provider's classification. Target (issue 5): the
ratio ours / baseline <= 1.25. Also printed: the time to page 1,000 devices.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aioapns import NotificationRequest, PushType
from slixmpp import ComponentXMPP

import slixmpp_push
from slixmpp_push import AppConfig, DeliveryPolicy, Dialect, MemoryStore, Registration
from slixmpp_push.notifier.plugin import FAN_OUT
from slixmpp_push.providers.apns import ApnsProvider

from _fake_apns import FakeApnsProcess  # noqa: I001  (local helper)

TOPIC = "org.example.pager"


def app_config(fake: FakeApnsProcess, key: Path) -> AppConfig:
    return AppConfig(id="ios", type="apns", topic=TOPIC, key_file=str(key),
                     key_id="BENCH12345", team_id="TEAM123456", endpoint=fake.endpoint,
                     ca_file=str(fake.ca_file), max_connections=1, timeout=30.0)


async def baseline(fake: FakeApnsProcess, key: Path, devices: int, offset: int) -> float:
    """aioapns alone, the same requests, the same concurrency."""
    provider = ApnsProvider(app_config(fake, key))
    await provider.start()
    client = provider.pool  # aioapns's protocol, our pool
    assert client is not None
    gate = asyncio.Semaphore(FAN_OUT)
    payload = {"aps": {"alert": {"title": "[ABCD] DiskFull"}, "mutable-content": 1,
                       "interruption-level": "critical"}, "account": "user@example.org"}

    async def one(i: int) -> None:
        async with gate:
            result = await client.send_notification(NotificationRequest(
                device_token=f"{offset + i:064x}", message=payload, priority=10,
                push_type=PushType.ALERT, time_to_live=3600))
            assert result.is_successful, result.description

    await one(-1)  # connect first: both sides start with a warm connection
    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(devices)))
    elapsed = time.perf_counter() - began
    await provider.close()
    return elapsed


async def ours(fake: FakeApnsProcess, key: Path, devices: int, offset: int) -> float:
    app = app_config(fake, key)
    store = MemoryStore()
    await store.open()
    accounts = []
    for i in range(devices):
        account = f"user{offset + i}@example.org"
        accounts.append(account)
        await store.put(Registration(node=f"n{offset + i}", account=account,
                                     domain="example.org", app="ios", token=f"{offset + i:064x}",
                                     dialect=Dialect.TIGASE))
    bot = ComponentXMPP("push.example.org", "unused", "127.0.0.1", 1)
    bot.register_plugin("push_appserver", {
        "apps": [app], "store": store, "delivery": DeliveryPolicy(rate_interval=0)})
    bot.register_plugin("push_notifier", {"chat": False, "groups": {"everyone": accounts}})
    notifier = bot.plugin["push_notifier"]
    await notifier.start()
    await notifier.notify("user-warmup@example.org", "warm up")  # no device: no request
    await bot.plugin["push_appserver"].providers["ios"].send(  # warm connection
        slixmpp_push.payloads.build_request(store.get(f"n{offset}"),
                                            slixmpp_push.Notification(), app, time.time()))
    began = time.perf_counter()
    report = await notifier.notify("group:everyone", "DiskFull", "db1 97% full",
                                   priority="critical")
    elapsed = time.perf_counter() - began
    assert report.delivered == devices, (report.delivered, devices)
    await notifier.stop()
    await bot.plugin["push_appserver"].stop()
    return elapsed


async def main(devices: int, rounds: int) -> None:
    fake = FakeApnsProcess()
    await fake.start()
    key = fake.key_file()
    try:
        base_times, our_times, small = [], [], []
        offset = 0
        for _ in range(rounds):
            base_times.append(await baseline(fake, key, devices, offset))
            offset += devices + 10
            our_times.append(await ours(fake, key, devices, offset))
            offset += devices + 10
            small.append(await ours(fake, key, 1000, offset))
            offset += 1010
        base, mine = statistics.median(base_times), statistics.median(our_times)
        print(f"fan-out to {devices:,} devices, {rounds} round(s), median:")
        print(f"  bare aioapns loop   {base:6.2f} s  ({devices / base:,.0f} pushes/s)")
        print(f"  push_notifier       {mine:6.2f} s  ({devices / mine:,.0f} pushes/s)")
        print(f"  ratio               {mine / base:6.2f}   target <= 1.25")
        print(f"  page 1,000 devices  {statistics.median(small):6.2f} s")
    finally:
        await fake.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.devices, args.rounds))
