"""Webhook POST → request at the fake APNs: the paging path's latency.

    python benchmarks/webhook_latency.py [--pages 200] [--rate 20]

The bot (push_appserver + push_notifier + the alert receiver) runs in this
process; the fake APNs in its own, logging each request with its
CLOCK_MONOTONIC time (system-wide on Linux, so comparable here). Each POST
to /notify opens a new page for the on-call person's device; the latency is
from just before the POST is written to the request's arrival at the fake.
Baseline in the same run: a POST to /health (the HTTP round trip alone), so
the ratio shows what paging adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slixmpp import ComponentXMPP

import slixmpp_push  # noqa: F401
from slixmpp_push import AppConfig, DeliveryPolicy, Dialect, MemoryStore, Policy, Registration
from slixmpp_push import Step
from slixmpp_push.notifier.ingest import AlertReceiver, ReceiverConfig

from _fake_apns import FakeApnsProcess  # noqa: I001

TOKEN = "ab" * 32


async def request(port: int, method: str, path: str, body: bytes = b"") -> float:
    began = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Authorization: Bearer t\r\nContent-Length: {len(body)}\r\n"
                 "Connection: close\r\n\r\n".encode() + body)
    response = await reader.read()
    writer.close()
    assert b" 200 " in response.split(b"\r\n", 1)[0], response[:200]
    return began


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(pages: int, rate: float) -> None:
    fake = FakeApnsProcess()
    await fake.start()
    app = AppConfig(id="ios", type="apns", topic="org.example.pager",
                    key_file=str(fake.key_file()), key_id="BENCH12345", team_id="TEAM123456",
                    endpoint=fake.endpoint, ca_file=str(fake.ca_file), max_connections=1)
    store = MemoryStore()
    await store.open()
    await store.put(Registration(node="oncall", account="alice@example.org",
                                 domain="example.org", app="ios", token=TOKEN,
                                 dialect=Dialect.TIGASE))
    bot = ComponentXMPP("push.example.org", "unused", "127.0.0.1", 1)
    bot.register_plugin("push_appserver", {"apps": [app], "store": store,
                                           "delivery": DeliveryPolicy(rate_interval=0)})
    bot.register_plugin("push_notifier", {
        "chat": False, "policies": {"p": Policy("p", (Step(("alice@example.org",), 3600),))}})
    notifier = bot.plugin["push_notifier"]
    await notifier.start()
    receiver = AlertReceiver(notifier, ReceiverConfig(port=0, token="t", rate_burst=100_000,
                                                      rate_interval=0.001))
    await receiver.start()
    try:
        warm = 5
        sent, health = [], []
        for i in range(warm + pages):
            began = time.monotonic()
            health_began = await request(receiver.port, "GET", "/health")
            health.append(time.monotonic() - health_began)
            body = json.dumps({"title": f"alert {i}", "priority": "critical",
                               "key": f"bench-{i}"}).encode()
            sent.append(await request(receiver.port, "POST", "/notify", body))
            await fake.wait_for(i + 1, timeout=30)
            await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - began)))
        arrivals = fake.received[TOKEN]
        latencies = [(arrivals[i] - sent[i]) * 1000 for i in range(warm, warm + pages)]
        baseline = [h * 1000 for h in health[warm:]]
        print(f"webhook POST → fake APNs request, {pages} pages at {rate:g}/s "
              f"(first {warm} discarded as warm-up):")
        print(f"  median {statistics.median(latencies):6.2f} ms   p90 {pct(latencies, .9):6.2f} ms"
              f"   p99 {pct(latencies, .99):6.2f} ms   max {max(latencies):6.2f} ms")
        print(f"  baseline (GET /health round trip): median {statistics.median(baseline):.2f} ms;"
              f" ratio of medians {statistics.median(latencies) / statistics.median(baseline):.1f}")
    finally:
        await receiver.stop()
        await notifier.stop()
        await bot.plugin["push_appserver"].stop()
        await fake.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    args = parser.parse_args()
    asyncio.run(main(args.pages, args.rate))
