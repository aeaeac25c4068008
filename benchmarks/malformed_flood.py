"""Good publishes while a flood of malformed stanzas goes through the same server.

    python benchmarks/malformed_flood.py [--seconds 20] [--rate 20] [--flood 300]

A private Prosody 0.12 + mod_cloud_notify on loopback (slixmpp_push.devserver),
our app server as its component ``push.localhost`` in this process (as in
latency_prosody.py: push_appserver on a TinyDB store, an APNs app with a
throwaway .p8 key pointing at the fake APNs in its own process, the per-node
rate limit off, logging set up as ``slixmpp-push serve`` does at INFO, into a
file whose growth is reported).

Good traffic: alice registered with ``register-device`` and went offline; bob
sends her ``--rate`` messages a second; each makes Prosody publish to us, and
we push to the fake APNs. Measured per message, as in latency_prosody.py:
bob's send → the request complete at the fake APNs (what the person waits
for), and Prosody's share (→ the publish parsed at our component).

Bad traffic: a third account, mallory, floods ``push.localhost`` with
``--flood`` stanzas a second from a child process (a raw c2s socket that only
counts the error replies, so the flooder costs the machine next to nothing):
publishes without a node, with a non-numeric message count, a well-formed
publish from a client (not a server), ``register-device`` with a token that
is no APNs token and without a token, an unknown command,
``v1-register-push`` with an unknown type, and two with 3.5 kB of junk where
a short name belongs (a publish-options FORM_TYPE, a provider id). That is
what a hostile or broken account (or a fuzzer) can send through any server;
the issue measured ~270 a second.

Real Prosody rather than the fake XEP-0114 peer: the issue measured the fault
through a server, and the stanzas then reach us on our one component stream
between the server's good publishes, as in production.

Phases: quiet (only bob), then flooded (bob during the flood). Printed: p50,
p99 and max of each, the ratio flooded p99 / quiet p99 and whether the target
(≤ 3) is met, the CPU share of each process, the error replies the flooder got
(every malformed stanza must be answered), and what our log grew by.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import APNS_APP, CpuMeter, FakeApnsChild, apns_app, machine, pct, write_p8_key
from latency_prosody import (
    COMPONENT,
    PUBLISH,
    TOKEN,
    client,
    connect,
    index_of,
    register_and_enable,
)

TARGET = 3.0  # flooded p99 at most this many times the quiet p99 (issue 9, item 6)
WARMUP = 5

_PUBSUB = "<pubsub xmlns='http://jabber.org/protocol/pubsub'>"
_SUMMARY = ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
            "<value>urn:xmpp:push:summary</value></field>"
            "<field var='message-count'><value>{count}</value></field></x>")


def _command(node: str, fields: dict[str, str]) -> str:
    form = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    return (f"<iq type='set' to='{COMPONENT}' id='{{id}}'>"
            f"<command xmlns='http://jabber.org/protocol/commands' node='{node}' "
            f"action='execute'><x xmlns='jabber:x:data' type='submit'>{form}</x></command></iq>")


_JUNK = "&lt;field " * 512  # 3.5 KiB of markup-like text (5 KiB escaped)

#: One of each, round robin; ``{id}`` is filled in per stanza.
FLOOD = [
    f"<iq type='set' to='{COMPONENT}' id='{{id}}'>{_PUBSUB}<publish><item>"
    "<notification xmlns='urn:xmpp:push:0'/></item></publish></pubsub></iq>",
    f"<iq type='set' to='{COMPONENT}' id='{{id}}'>{_PUBSUB}<publish node='n0de'><item>"
    f"<notification xmlns='urn:xmpp:push:0'>{_SUMMARY.format(count='lots')}</notification>"
    "</item></publish></pubsub></iq>",
    f"<iq type='set' to='{COMPONENT}' id='{{id}}'>{_PUBSUB}<publish node='n0de'><item>"
    f"<notification xmlns='urn:xmpp:push:0'>{_SUMMARY.format(count='1')}</notification>"
    "</item></publish></pubsub></iq>",
    _command("register-device", {"provider": APNS_APP, "device-token": "not-a-device-token"}),
    _command("register-device", {"provider": APNS_APP}),
    _command("no-such-command", {"x": "y"}),
    _command("v1-register-push", {"type": "gcm", "node": "dev", "token": "t"}),
    # Long junk where a short name belongs (a fuzzer's favourite): an unknown
    # publish-options form type, and an unknown provider id.
    f"<iq type='set' to='{COMPONENT}' id='{{id}}'>{_PUBSUB}<publish node='n0de'><item>"
    "<notification xmlns='urn:xmpp:push:0'/></item></publish><publish-options>"
    f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>{_JUNK}</value>"
    "</field></x></publish-options></pubsub></iq>",
    _command("register-device", {"provider": _JUNK, "device-token": TOKEN}),
]
CONDITIONS = ("bad-request", "forbidden", "item-not-found", "not-authorized",
              "internal-server-error", "feature-not-implemented", "service-unavailable",
              "policy-violation", "resource-constraint", "undefined-condition")


# == the flooder (a child process) ========================================================
async def _read_until(reader: asyncio.StreamReader, marker: bytes, seen: bytearray) -> None:
    while marker not in seen:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}: {bytes(seen)[-300:]!r}")
        seen.extend(chunk)


async def flood(host: str, port: int, user: str, password: str, rate: float) -> None:
    """Log in over plain c2s, then send FLOOD stanzas at ``rate``/s until stdin closes."""
    reader, writer = await asyncio.open_connection(host, port)
    header = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
              b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
    seen = bytearray()
    writer.write(header)
    await _read_until(reader, b"</stream:features>", seen)
    plain = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}"
                 "</auth>".encode())
    await _read_until(reader, b"success", seen)
    seen.clear()
    writer.write(header)
    await _read_until(reader, b"</stream:features>", seen)
    writer.write(b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                 b"<resource>flood</resource></bind></iq>")
    await _read_until(reader, b"</iq>", seen)
    seen.clear()
    counts = dict.fromkeys(CONDITIONS, 0)
    totals = {"errors": 0, "results": 0}
    tail = b""

    async def count_replies() -> None:
        nonlocal tail
        while chunk := await reader.read(1 << 16):
            data = tail + chunk
            cut = data.rfind(b">") + 1  # count only whole tags; keep the rest
            whole, tail = data[:cut], data[cut:]
            totals["errors"] += len(re.findall(rb"<iq[^>]*type=['\"]error", whole))
            totals["results"] += len(re.findall(rb"<iq[^>]*type=['\"]result", whole))
            for condition in CONDITIONS:
                counts[condition] += whole.count(b"<" + condition.encode())

    counter = asyncio.ensure_future(count_replies())
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    stop = asyncio.ensure_future(stdin.read())
    print("FLOODING", flush=True)
    sent = 0
    start = time.monotonic()
    while not stop.done():
        due = start + sent / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        # Catch up in one write if this process was held up: the rate stays the rate.
        batch = []
        while start + sent / rate <= time.monotonic() and len(batch) < 50:
            batch.append(FLOOD[sent % len(FLOOD)].format(id=f"f{sent}"))
            sent += 1
        writer.write("".join(batch).encode())
    elapsed = time.monotonic() - start
    await asyncio.sleep(1.0)  # the last replies
    counter.cancel()
    writer.close()
    print(json.dumps({"sent": sent, "seconds": elapsed, **totals,
                      "conditions": {k: v for k, v in counts.items() if v}}), flush=True)


class Flooder:
    def __init__(self, host: str, port: int, user: str, password: str, rate: float) -> None:
        self.argv = [sys.executable, str(Path(__file__).resolve()), "--role", "flooder",
                     "--host", host, "--port", str(port), "--user", user,
                     "--password", password, "--flood", str(rate)]
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 20)
        if line.strip() != b"FLOODING":
            raise RuntimeError(f"the flooder did not start: {line!r}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def stop(self) -> dict[str, object]:
        process = self.process
        assert process is not None and process.stdin is not None and process.stdout is not None
        process.stdin.close()
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        await process.wait()
        return json.loads(line)


# == the measurement ======================================================================
def summary(values: list[float]) -> str:
    ordered = sorted(values)
    return (f"p50 {pct(ordered, .5):7.2f} ms  p99 {pct(ordered, .99):7.2f} ms  "
            f"max {ordered[-1]:7.2f} ms")


class Run:
    """Prosody, the fake APNs, our component, alice offline and bob connected."""

    def __init__(self, folder: Path) -> None:
        from slixmpp_push.devserver import ComponentSpec, ProsodyServer

        self.folder = folder
        self.secret = secrets.token_hex(16)
        self.fake = FakeApnsChild()
        self.prosody = ProsodyServer(components=[ComponentSpec(COMPONENT, self.secret)],
                                     log_level="warn", push_notification_with_body=True)
        self.arrivals: dict[int, float] = {}
        self.sent: dict[int, float] = {}
        self.next = 0

    async def start(self) -> None:
        from slixmpp import ComponentXMPP

        import slixmpp_push  # noqa: F401  (registers push_appserver)
        from slixmpp_push import DeliveryPolicy, TinyDBStore

        await self.fake.start()
        await self.prosody.start()
        for user in ("alice", "bob", "mallory"):
            await self.prosody.register(user, f"{user}-pw")
        component = ComponentXMPP(COMPONENT, self.secret, self.prosody.host,
                                  self.prosody.component_port)
        for plugin in ("xep_0030", "xep_0004", "xep_0050", "xep_0199"):  # as server.py
            component.register_plugin(plugin)
        component.register_plugin("push_appserver", {
            "apps": [apns_app(self.fake.endpoint, self.fake.ca_file,
                              write_p8_key(self.folder), include_body=True)],
            "store": TinyDBStore(self.folder / "store.json"),
            "delivery": DeliveryPolicy(rate_interval=0)})
        self.component = component
        self.appserver = component.plugin["push_appserver"]
        await self.appserver.start()
        spawn = component._spawn_event

        def arrival(xml) -> None:  # Prosody's share ends here: the publish just parsed
            if xml.tag.endswith("}iq") and xml.find(PUBLISH) is not None:
                for field in xml.iter("{jabber:x:data}field"):
                    if field.get("var") == "last-message-body":
                        number = index_of(field.findtext("{jabber:x:data}value") or "")
                        if number is not None:
                            self.arrivals.setdefault(number, time.monotonic())
            spawn(xml)

        component._spawn_event = arrival
        await connect(component, self.prosody.component_address)
        alice = client("alice@localhost/phone", "alice-pw")
        await connect(alice, self.prosody.c2s_address)
        await register_and_enable(alice)
        await asyncio.wait_for(alice.disconnect(), 5)
        await asyncio.sleep(0.5)  # Prosody has processed the unavailable presence
        self.bob = client("bob@localhost/desk", "bob-pw")
        await connect(self.bob, self.prosody.c2s_address)
        for _ in range(WARMUP):  # the APNs connection opens
            number = self.send()
            await self.delivered(number, 15)

    def send(self) -> int:
        number = self.next
        self.next += 1
        self.sent[number] = time.monotonic()
        self.bob.send_message(mto="alice@localhost", mbody=f"message {number}", mtype="chat")
        return number

    async def delivered(self, number: int, timeout: float) -> dict[int, float]:
        """Message → the first request at the fake carrying it or a later message
        (a publish arriving while the node's push is in flight is coalesced)."""
        deadline = time.monotonic() + timeout
        while True:
            times = await self.fake.times()
            bodies = [(index_of(body), at) for token, at, body in times if token == TOKEN]
            if any(n is not None and n >= number for n, _ in bodies):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"message {number} was never pushed")
            await asyncio.sleep(0.05)
        delivered: dict[int, float] = {}
        for n, at in bodies:
            for j in range(n if n is not None else -1, -1, -1):
                if j in delivered:
                    break
                delivered[j] = at
        return delivered

    async def phase(self, seconds: float, rate: float) -> tuple[list[int], dict[str, float]]:
        """Bob sends for ``seconds`` at ``rate``; the message numbers and CPU shares."""
        meter = CpuMeter(**{"ours": "self", "Prosody": self.prosody.pid,
                            "fake APNs": self.fake.pid, **self.extra_pids})
        meter.start()
        numbers = []
        start = time.monotonic()
        for i in range(int(seconds * rate)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            numbers.append(self.send())
        cpu = meter.shares()
        return numbers, cpu

    extra_pids: dict[str, int] = {}

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.bob.disconnect(), 3)
        with contextlib.suppress(Exception):
            await self.appserver.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.component.disconnect(wait=1.0), 3)
        await self.fake.stop()
        await self.prosody.stop()
        shutil.rmtree(self.fake.folder, ignore_errors=True)


async def main(seconds: float, rate: float, flood_rate: float) -> int:
    print(f"malformed_flood: {machine()}")
    from slixmpp_push.logs import setup_logging

    folder = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    log_file = folder / "appserver.log"
    setup_logging("INFO")  # as `slixmpp-push serve`, into a file instead of stderr
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(log_file.open("a", encoding="utf-8"))  # closed in the finally below
    run = Run(folder)
    try:
        await run.start()
        print(f"  alice offline, bob sends {rate:g} messages/s for {seconds:g} s per phase; "
              f"the flood: {flood_rate:g} malformed stanzas/s from mallory, "
              f"{len(FLOOD)} kinds round robin")
        log_before = log_file.stat().st_size
        quiet, quiet_cpu = await run.phase(seconds, rate)
        await run.delivered(quiet[-1], 30)
        log_quiet = log_file.stat().st_size - log_before
        flooder = Flooder(run.prosody.host, run.prosody.c2s_port, "mallory", "mallory-pw",
                          flood_rate)
        await flooder.start()
        run.extra_pids = {"flooder": flooder.pid}
        await asyncio.sleep(1.0)  # the flood is in full swing
        log_before = log_file.stat().st_size
        flooded, flood_cpu = await run.phase(seconds, rate)
        log_flood = log_file.stat().st_size - log_before
        flood_stats = await flooder.stop()
        delivered = await run.delivered(flooded[-1], 60)
        stats = dict(run.appserver.delivery.stats)
    finally:
        await run.stop()
        handler.stream.close()
        log_text = log_file.read_text(encoding="utf-8", errors="replace") \
            if log_file.exists() else ""
        shutil.rmtree(folder, ignore_errors=True)

    results = {}
    for name, numbers in (("quiet", quiet), ("flooded", flooded)):
        missing = [n for n in numbers if n not in delivered or n not in run.arrivals]
        if missing:
            print(f"  {name}: {len(missing)} messages without a publish or a push, "
                  f"e.g. {missing[:5]}")
            return 1
        total = [(delivered[n] - run.sent[n]) * 1000 for n in numbers]
        prosody = [(run.arrivals[n] - run.sent[n]) * 1000 for n in numbers]
        ours = [(delivered[n] - run.arrivals[n]) * 1000 for n in numbers]
        results[name] = total
        print(f"  {name:8} message → APNs request: {summary(total)}")
        print(f"  {'':8}   Prosody's share:       {summary(prosody)}")
        print(f"  {'':8}   ours (publish → APNs): {summary(ours)}")
    print(f"  CPU, quiet   (share of one core): {CpuMeter.describe(quiet_cpu)}")
    print(f"  CPU, flooded (share of one core): {CpuMeter.describe(flood_cpu)}")
    sent = int(flood_stats["sent"])  # type: ignore[call-overload]
    print(f"  flood: {sent} stanzas in {float(flood_stats['seconds']):.1f} s "  # type: ignore[arg-type]
          f"({sent / float(flood_stats['seconds']):.0f}/s), "  # type: ignore[arg-type]
          f"{flood_stats['errors']} error replies, {flood_stats['results']} results; "
          f"conditions {flood_stats['conditions']}")
    tracebacks = log_text.count("Traceback (most recent call last)")
    print(f"  our log: {log_quiet} bytes while quiet, {log_flood} bytes during the flood "
          f"({log_flood / seconds / 1024:.1f} KiB/s); {tracebacks} tracebacks; "
          f"publish stats {stats}")
    quiet_p99, flood_p99 = pct(sorted(results["quiet"]), .99), pct(sorted(results["flooded"]),
                                                                    .99)
    ratio = flood_p99 / quiet_p99
    met = "met" if ratio <= TARGET else "NOT met"
    print(f"  flooded p99 / quiet p99 = {flood_p99:.2f} / {quiet_p99:.2f} ms = {ratio:.2f} "
          f"(target ≤ {TARGET:g}: {met})")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=20.0, help="bob's messages per second")
    parser.add_argument("--flood", type=float, default=300.0,
                        help="malformed stanzas per second")
    parser.add_argument("--role", choices=["flooder"], help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--user", help=argparse.SUPPRESS)
    parser.add_argument("--password", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.role == "flooder":
        asyncio.run(flood(arguments.host, arguments.port, arguments.user, arguments.password,
                          arguments.flood))
        sys.exit(0)
    sys.exit(asyncio.run(main(arguments.seconds, arguments.rate, arguments.flood)))
