"""Publish throughput and round trip of push_appserver, against a trivial ceiling.

    python benchmarks/publish_throughput.py [--seconds 8] [--window 100]
                                            [--registrations 10000] [--py-spy FILE]

Three processes, loopback only:

- this one, the load generator: a small asyncio TCP server speaking XEP-0114
  as an XMPP server would (it accepts ``jabber:component:accept`` streams and
  checks the handshake sha1(stream id + secret)), then pipelines pubsub
  publish IQs shaped like Prosody's (``from='localhost'``, a registered node,
  the node's secret in publish-options) and matches replies by id;
- the component under test, a child process (re-running this file with
  ``--role``): either the *ceiling*, a plain slixmpp ComponentXMPP whose raw
  handler only answers ``result``, or *ours*, a ComponentXMPP with
  push_appserver on a TinyDB store seeded with N registrations (through the
  store API), an APNs app with a throwaway .p8 key, ``include_body`` off, the
  per-node rate limit off;
- the fake APNs (tests/fakes/fake_apns.py: HTTP/2 over TLS).

Every publish goes to a different node than the ones in flight (nodes are
used round robin, N >> window), so per-node coalescing hides no work: each
result means one request delivered to the fake, which is checked at the end.

Phases: (a) the ceiling at a fixed window of outstanding IQs; (b) ours at the
same window; (c) ours paced (open loop) at half of (b)'s rate: p50/p99 round
trip; the ceiling paced at that same rate is the latency baseline.
Targets: ours/ceiling >= 0.5, p99 <= 20 ms at half rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import APNS_APP, CpuMeter, FakeApnsChild, apns_app, machine, pct, write_p8_key

COMPONENT = "push.localhost"
DOMAIN = "localhost"
SECRET = "s3cr3t-app-token"  # the node secret Prosody sends in publish-options

# Prosody 0.12 mod_cloud_notify's publish for an offline message
# (/work/shared/reference/captured/prosody_publish_offline.xml), id and node varied.
PUBLISH = (
    "<iq type='set' from='localhost' to='push.localhost' id='{id}'>"
    "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{node}'><item>"
    "<notification xmlns='urn:xmpp:push:0'><x type='form' xmlns='jabber:x:data'>"
    "<field type='hidden' var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>"
    "<field type='text-single' var='message-count'><value>1</value></field>"
    "<field type='text-single' var='pending-subscription-count'/>"
    "<field type='jid-single' var='last-message-sender'/>"
    "<field type='text-single' var='last-message-body'><value>New Message!</value></field>"
    "</x></notification></item></publish><publish-options>"
    "<x type='submit' xmlns='jabber:x:data'>"
    "<field type='hidden' var='FORM_TYPE'><value>http://jabber.org/protocol/publish-options"
    "</value></field><field var='secret'><value>" + SECRET + "</value></field></x>"
    "</publish-options></pubsub></iq>"
)


def node_name(i: int) -> str:
    return f"bench{i:07d}{hashlib.sha1(str(i).encode()).hexdigest()[:12]}"


# ===================================================================================
# The component side (child process): the ceiling, or our app server
# ===================================================================================
async def run_component(role: str, port: int, secret: str, folder: Path, patch: str) -> None:
    from slixmpp import ComponentXMPP
    from slixmpp.xmlstream.handler import Callback
    from slixmpp.xmlstream.matcher import MatchXPath

    xmpp = ComponentXMPP(COMPONENT, secret, "127.0.0.1", port)
    appserver = None
    publish = ("{jabber:component:accept}iq/{http://jabber.org/protocol/pubsub}pubsub/"
               "{http://jabber.org/protocol/pubsub}publish")

    def reply(xml) -> None:  # the cheapest correct reply slixmpp can send
        iq = xmpp.Iq()
        iq.xml.attrib.update({"type": "result", "id": xml.get("id", ""),
                              "to": xml.get("from", ""), "from": xml.get("to", "")})
        iq.send()

    if role == "trivial":  # the ceiling: answer, nothing else
        xmpp.register_handler(Callback("ceiling", MatchXPath(publish),
                                       lambda iq: reply(iq.xml)))
    elif role == "aioapns":
        # The delivery floor: the same raw handler, plus one APNs request per publish
        # sent with the bare aioapns client (as ApnsProvider configures it), the
        # result sent once APNs answered, as ours does. No parsing, no store.
        from aioapns import NotificationRequest, PushType

        from slixmpp_push.providers.apns import ApnsProvider

        provider = ApnsProvider(apns_app((folder / "endpoint").read_text(),
                                         folder / "ca.pem", folder / "key.p8"))
        await provider.start()
        client = provider.pool  # aioapns's protocol, our pool
        loop = asyncio.get_running_loop()
        payload = {"aps": {"content-available": 1}, "account": f"user1@{DOMAIN}",
                   "unread-messages": 1}

        async def deliver(xml) -> None:
            await client.send_notification(NotificationRequest(
                device_token="ab" * 32, message=payload, priority=5, time_to_live=604_800,
                push_type=PushType.BACKGROUND))
            reply(xml)

        xmpp.register_handler(Callback("floor", MatchXPath(publish),
                                       lambda iq: loop.create_task(deliver(iq.xml))))
    else:
        import slixmpp_push  # noqa: F401  (registers push_appserver)
        from slixmpp_push import DeliveryPolicy, TinyDBStore

        if patch:  # measure a proposed change (benchmarks/proposed_patches.py)
            import proposed_patches

            print("PATCHED", ",".join(proposed_patches.apply(patch)), flush=True)

        for plugin in ("xep_0030", "xep_0004", "xep_0050", "xep_0199"):  # as server.py
            xmpp.register_plugin(plugin)
        app = apns_app((folder / "endpoint").read_text(), folder / "ca.pem",
                       folder / "key.p8")
        xmpp.register_plugin("push_appserver", {
            "apps": [app], "store": TinyDBStore(folder / "store.json"),
            "delivery": DeliveryPolicy(rate_interval=0)})
        appserver = xmpp.plugin["push_appserver"]
        await appserver.start()  # store and provider ready before connecting
    gone = asyncio.get_running_loop().create_future()
    xmpp.add_event_handler("disconnected",
                           lambda _: gone.done() or gone.set_result(None))
    xmpp.connect()
    await gone
    if appserver is not None:
        stats = dict(appserver.delivery.stats)
        await appserver.stop()
        print("STATS", stats, flush=True)


# ===================================================================================
# The load generator: the XMPP server's end of the component stream
# ===================================================================================
_IQ_TAG = re.compile(rb"<iq\b[^>]*>")
_ID = re.compile(rb"""\sid=["']([^"']*)["']""")
_TYPE = re.compile(rb"""\stype=["']([^"']*)["']""")
_STREAM = re.compile(rb"<stream:stream\b[^>]*>")
_HANDSHAKE = re.compile(rb"<handshake\b[^>]*>([^<]*)</handshake>")


@dataclass
class Phase:
    """What one phase measured (times in seconds)."""

    replies: int  # inside the measured interval
    seconds: float
    per_second: list[int]  # replies in each whole second of the interval
    rtts: list[float]  # round trips of IQs sent inside the interval
    errors: int
    sent: int  # over the whole phase, warm-up included
    results: int  # idem
    cpu: dict[str, float]  # share of one core per process over the interval

    @property
    def rate(self) -> float:
        return self.replies / self.seconds

    def cpu_per_publish(self, process: str = "component") -> float:
        """Seconds of CPU ``process`` spent per publish answered: unlike the rate,
        this hardly depends on how much CPU other people's work leaves us."""
        return self.cpu[process] / self.rate if self.rate else float("nan")


class ServerStream(asyncio.Protocol):
    """One accepted component stream: handshake, then publishes and their replies."""

    def __init__(self, secret: str, accepted: asyncio.Queue[ServerStream],
                 nodes: list[str]) -> None:
        self.secret = secret
        self.accepted = accepted
        self.nodes = nodes
        self.stream_id = secrets.token_hex(8)
        self.state = "header"
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.counter = 0
        self.outstanding: dict[bytes, float] = {}  # id -> perf_counter() at send
        self.all_answered = asyncio.Event()
        self.refill = False  # window mode: every reply sends the next publish
        self.log: list[tuple[float, float]] = []  # (sent, replied) per reply
        self.results = 0
        self.errors = 0
        self.error_samples: list[bytes] = []

    # -- stream set-up ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.state == "open":
            self._replies()
        elif self.state == "header":
            match = _STREAM.search(self.buffer)
            if match:
                self.buffer = self.buffer[match.end():]
                self.transport.write(  # type: ignore[union-attr]
                    b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
                    b"xmlns:stream='http://etherx.jabber.org/streams' from='"
                    + COMPONENT.encode() + b"' id='" + self.stream_id.encode() + b"'>")
                self.state = "handshake"
        if self.state == "handshake":
            match = _HANDSHAKE.search(self.buffer)
            if match:
                self.buffer = self.buffer[match.end():]
                expected = hashlib.sha1((self.stream_id + self.secret).encode()).hexdigest()
                if match.group(1).decode().strip().lower() != expected:
                    self.transport.write(b"<stream:error><not-authorized xmlns='urn:ietf:"  # type: ignore[union-attr]
                                         b"params:xml:ns:xmpp-streams'/></stream:error>")
                    self.transport.close()  # type: ignore[union-attr]
                    return
                self.transport.write(b"<handshake/>")  # type: ignore[union-attr]
                self.state = "open"
                self.accepted.put_nowait(self)

    def _replies(self) -> None:
        now = time.perf_counter()
        end = 0
        answered = 0
        for match in _IQ_TAG.finditer(self.buffer):
            end = match.end()
            tag = match.group()
            ident = _ID.search(tag)
            sent = self.outstanding.pop(ident.group(1), None) if ident else None
            if sent is None:
                continue  # not one of ours (slixmpp sends nothing else, but be safe)
            answered += 1
            kind = _TYPE.search(tag)
            if kind and kind.group(1) == b"result":
                self.results += 1
            else:
                self.errors += 1
                if len(self.error_samples) < 3:
                    self.error_samples.append(self.buffer[match.start():match.start() + 600])
            self.log.append((sent, now))
        # Keep only what may be the start of an incomplete tag.
        cut = self.buffer.rfind(b"<", end)
        self.buffer = self.buffer[cut:] if cut >= 0 else b""
        if self.refill and answered:
            self.send(answered)
        elif not self.outstanding:
            self.all_answered.set()

    # -- sending ---------------------------------------------------------------------------
    def send(self, count: int) -> None:
        now = time.perf_counter()
        parts = []
        nodes = self.nodes
        for _ in range(count):
            i = self.counter
            self.counter += 1
            ident = f"{i:064x}"  # as long as Prosody's ids
            self.outstanding[ident.encode()] = now
            parts.append(PUBLISH.format(id=ident, node=nodes[i % len(nodes)]))
        self.transport.write("".join(parts).encode())  # type: ignore[union-attr]
        self.all_answered.clear()

    async def _drain(self, timeout: float = 30.0) -> None:
        if self.outstanding:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_answered.wait(), timeout)
        if self.outstanding:
            raise RuntimeError(f"{len(self.outstanding)} publishes never answered")

    def _phase(self, start: float, warmup: float, seconds: float, sent0: int,
               results0: int, errors0: int, cpu: dict[str, float]) -> Phase:
        begin, end = start + warmup, start + warmup + seconds
        replied = [r for _, r in self.log if begin <= r < end]
        per_second = [0] * int(seconds)
        for r in replied:
            slot = int(r - begin)
            if slot < len(per_second):
                per_second[slot] += 1
        rtts = [r - s for s, r in self.log if begin <= s < end]
        return Phase(len(replied), seconds, per_second, rtts, self.errors - errors0,
                     self.counter - sent0, self.results - results0, cpu)

    async def saturate(self, window: int, warmup: float, seconds: float,
                       meter: CpuMeter) -> Phase:
        """Keep ``window`` publishes outstanding; count replies per second."""
        self.log = []
        sent0, results0, errors0 = self.counter, self.results, self.errors
        start = time.perf_counter()
        self.refill = True
        self.send(window)
        await asyncio.sleep(warmup)
        meter.start()
        await asyncio.sleep(start + warmup + seconds - time.perf_counter())
        cpu = meter.shares()
        self.refill = False
        await self._drain()
        return self._phase(start, warmup, seconds, sent0, results0, errors0, cpu)

    async def paced(self, rate: float, warmup: float, seconds: float,
                    meter: CpuMeter) -> Phase:
        """Open loop: publish ``rate`` per second whatever the replies; round trips."""
        self.log = []
        sent0, results0, errors0 = self.counter, self.results, self.errors
        total = int(rate * (warmup + seconds))
        start = time.perf_counter()
        done = 0
        cpu: dict[str, float] = {}
        while done < total:
            if not meter._at and time.perf_counter() >= start + warmup:
                meter.start()
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            if due > done:
                self.send(due - done)
                done = due
            await asyncio.sleep(max(0.0, start + done / rate - time.perf_counter()))
        cpu = meter.shares()
        await self._drain()
        return self._phase(start, warmup, seconds, sent0, results0, errors0, cpu)

    async def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"</stream:stream>")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.closed), 10)
            self.transport.close()


class LoadGenerator:
    """The listening socket; ``launch(role)`` starts a child and returns its stream."""

    def __init__(self, nodes: list[str], folder: Path, patch: str = "") -> None:
        self.nodes = nodes
        self.patch = patch
        self.folder = folder
        self.secret = secrets.token_hex(12)
        self.accepted: asyncio.Queue[ServerStream] = asyncio.Queue()
        self.children: list[asyncio.subprocess.Process] = []
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ServerStream(self.secret, self.accepted, self.nodes), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def launch(self, role: str) -> tuple[ServerStream, asyncio.subprocess.Process]:
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--role", role, "--port", str(self.port),
            "--secret", self.secret, "--folder", str(self.folder),
            *(["--patch", self.patch] if role == "ours" and self.patch else []),
            stdout=subprocess.PIPE)
        self.children.append(child)
        stream = await asyncio.wait_for(self.accepted.get(), 60)
        return stream, child

    async def stop(self) -> None:
        for child in self.children:
            if child.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(child.wait(), 10)
            if child.returncode is None:
                child.terminate()
                await child.wait()
        if self._server is not None:
            self._server.close()


# ===================================================================================
# Orchestration
# ===================================================================================
async def seed(path: Path, count: int) -> list[str]:
    """N Tigase-style registrations with a secret, written through the store API."""
    from slixmpp_push import Dialect, Registration, TinyDBStore

    store = TinyDBStore(path)
    await store.open()
    nodes = [node_name(i) for i in range(count)]
    for start in range(0, count, 2000):
        await asyncio.gather(*(store.put(Registration(
            node=nodes[i], account=f"user{i}@{DOMAIN}", domain=DOMAIN, app=APNS_APP,
            token=f"{i + 1:064x}", dialect=Dialect.TIGASE, secret=SECRET, created=1.7e9,
            updated=1.7e9)) for i in range(start, min(count, start + 2000))))
    await store.close()
    return nodes


async def py_spy(pid: int, seconds: float, output: str) -> asyncio.subprocess.Process:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    fmt = "speedscope" if output.endswith(".json") else (
        "raw" if output.endswith(".txt") else "flamegraph")
    return await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
        "--format", fmt, "--output", output, "--nonblocking",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:6.2f} ms"


def describe(name: str, phase: Phase) -> None:
    slots = phase.per_second or [phase.replies]
    print(f"  {name:<26} {phase.rate:8.0f} publishes/s   per second min {min(slots)} "
          f"median {statistics.median(slots):.0f} max {max(slots)}   "
          f"rtt p50 {ms(pct(phase.rtts, .5))} p99 {ms(pct(phase.rtts, .99))}"
          + (f"   ERRORS {phase.errors}" if phase.errors else ""))
    print(f"  {'':<26} CPU (share of one core): {CpuMeter.describe(phase.cpu)}; component "
          f"{phase.cpu_per_publish() * 1e6:.0f} µs per publish")


async def main(args: argparse.Namespace) -> int:
    print(f"publish_throughput: {machine()}")
    folder = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    fake = FakeApnsChild()
    await fake.start()
    write_p8_key(folder).rename(folder / "key.p8")
    shutil.copy(fake.ca_file, folder / "ca.pem")
    (folder / "endpoint").write_text(fake.endpoint)
    began = time.monotonic()
    nodes = await seed(folder / "store.json", args.registrations)
    print(f"  seeded {len(nodes)} registrations through TinyDBStore.put in "
          f"{time.monotonic() - began:.1f} s; window {args.window}, "
          f"{args.warmup:g} s warm-up + {args.seconds:g} s measured per phase")
    generator = LoadGenerator(nodes, folder, args.patch or "")
    await generator.start()
    failed = False
    try:
        ceiling_stream, ceiling_child = await generator.launch("trivial")

        def meter(child: asyncio.subprocess.Process) -> CpuMeter:
            return CpuMeter(**{"load generator": "self", "component": child.pid,
                               "fake APNs": fake.pid})

        ceiling = await ceiling_stream.saturate(args.window, args.warmup, args.seconds,
                                                meter(ceiling_child))
        describe("(a) ceiling, window", ceiling)
        floor_stream, floor_child = await generator.launch("aioapns")
        before = await fake.count()
        floor = await floor_stream.saturate(args.window, args.warmup, args.seconds,
                                            meter(floor_child))
        describe("    ceiling + bare aioapns", floor)
        await floor_stream.close()
        floor_delivered = await fake.wait_for(before + floor.results, timeout=5) - before

        ours_stream, ours_child = await generator.launch("ours")
        before = await fake.count()
        spy = None
        if args.py_spy:
            spy = await py_spy(ours_child.pid, args.warmup + args.seconds, args.py_spy)
        ours = await ours_stream.saturate(args.window, args.warmup, args.seconds,
                                          meter(ours_child))
        describe("(b) ours, window", ours)
        delivered = await fake.wait_for(before + ours.results, timeout=5) - before
        if spy is not None:
            await spy.wait()

        rate = ours.rate / 2
        paced = await ours_stream.paced(rate, args.warmup, args.seconds, meter(ours_child))
        describe(f"(c) ours, paced {rate:.0f}/s", paced)
        base = await ceiling_stream.paced(rate, args.warmup, args.seconds,
                                          meter(ceiling_child))
        describe(f"    ceiling, paced {rate:.0f}/s", base)
        await ours_stream.close()
        await ceiling_stream.close()
        stats = b""
        if ours_child.stdout is not None:
            stats = await asyncio.wait_for(ours_child.stdout.read(), 15)
    finally:
        await generator.stop()
        await fake.stop()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(fake.folder, ignore_errors=True)

    ratio = ours.rate / ceiling.rate
    cost_ratio = ceiling.cpu_per_publish() / ours.cpu_per_publish()
    p99 = pct(paced.rtts, .99)
    print()
    print(f"ceiling publishes/s          {ceiling.rate:8.0f}   "
          f"({ceiling.cpu_per_publish() * 1e6:.0f} µs of component CPU each)")
    print(f"ours publishes/s             {ours.rate:8.0f}   "
          f"({ours.cpu_per_publish() * 1e6:.0f} µs of component CPU each, "
          f"+{ours.cpu_per_publish('fake APNs') * 1e6:.0f} µs in the fake APNs)")
    print(f"ceiling + bare aioapns       {floor.rate:8.0f}   "
          f"({floor.cpu_per_publish() * 1e6:.0f} µs of component CPU each): what any "
          f"in-process APNs client costs; ours/this {ours.rate / floor.rate:.2f}, by CPU "
          f"{floor.cpu_per_publish() / ours.cpu_per_publish():.2f}")
    print(f"ratio ours/ceiling           {ratio:8.2f}   (target >= 0.5: "
          f"{'met' if ratio >= 0.5 else 'NOT met'}); by CPU per publish {cost_ratio:.2f}; "
          f"CPU left by others' work: {200 - ours.cpu['others'] * 100:.0f} % of 200 %")
    print(f"round trip at {rate:.0f}/s (half)  p50 {ms(pct(paced.rtts, .5))}  "
          f"p99 {ms(p99)}  (target p99 <= 20 ms: {'met' if p99 <= 0.020 else 'NOT met'}); "
          f"ceiling at the same rate p50 {ms(pct(base.rtts, .5))} p99 {ms(pct(base.rtts, .99))}"
          f", ratio of p99 {p99 / pct(base.rtts, .99):.1f}")
    print(f"fake APNs requests           {delivered:8d}   for {ours.results} results "
          f"in phase (b) ({'equal' if delivered == ours.results else 'MISMATCH'})")
    for line in stats.decode().splitlines():
        if line.startswith("STATS"):
            print(f"app server delivery stats    {line[6:]}")
        elif line.startswith("PATCHED"):
            print(f"app server patched with      {line[8:]} (benchmarks/proposed_patches.py)")
    for phase in (ceiling, floor, ours, paced, base):
        if phase.errors:
            failed = True
    for stream in (ceiling_stream, ours_stream):
        for sample in stream.error_samples:
            print("error reply:", sample.decode(errors="replace"))
    if delivered != ours.results or floor_delivered != floor.results:
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--window", type=int, default=100, help="publishes outstanding")
    parser.add_argument("--registrations", type=int, default=10_000)
    parser.add_argument("--py-spy", metavar="FILE",
                        help="profile our app server during (b) (.svg flamegraph, "
                             ".json speedscope, .txt raw stacks)")
    parser.add_argument("--patch", metavar="NAMES",
                        help="apply proposed changes to our app server: 'all' or a comma list "
                             "of benchmarks/proposed_patches.py names")
    parser.add_argument("--role", choices=("trivial", "aioapns", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.role:
        asyncio.run(run_component(arguments.role, arguments.port, arguments.secret,
                                  arguments.folder, arguments.patch or ""))
    else:
        if arguments.window >= arguments.registrations:
            parser.error("--registrations must exceed --window (one node per publish in flight)")
        sys.exit(asyncio.run(main(arguments)))
