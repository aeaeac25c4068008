"""Bob's message → request at the fake APNs, through a real Prosody.

    python benchmarks/latency_prosody.py [--messages 200] [--rate 20]
    python benchmarks/latency_prosody.py --rate 100

A private Prosody 0.12 + mod_cloud_notify on loopback (slixmpp_push.devserver),
with our app server as its component ``push.localhost`` in this process
(push_appserver on a TinyDB store, an APNs app with a throwaway .p8 key,
``include_body`` off, the per-node rate limit off so that every message is
pushed at once instead of being coalesced), the fake APNs in its own process.

Alice registers a device with Tigase's ``register-device`` (raw XML, as Siskin
does), enables push, and disconnects. Bob sends 5 warm-up messages, each
waiting for its push (the APNs connection opens with the first; they are not
counted), then N messages at a steady pace, one at a time. Each offline
message makes Prosody publish once. Messages, publishes and APNs requests are
matched by the message body (Prosody's ``push_notification_with_body`` and
the app's ``include_body`` are on for that): order alone breaks when a
publish arrives while the node's previous push is still in flight, since our
app server then coalesces it (only the newest pending notification is sent).
A coalesced message counts as delivered by the request carrying the newer one.

Measured per message, with CLOCK_MONOTONIC (system-wide on Linux, so the fake
APNs process's timestamps compare with ours):
- total: just before bob's message is sent → the request complete at the fake;
- baseline: the same start → the publish IQ parsed by expat at our component,
  before slixmpp builds its stanza object (Prosody's own cost, plus the TCP hop
  and the XML parse, which any component pays);
- ours: publish at the component → request at the fake (what we add).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree as ET

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import APNS_APP, CpuMeter, FakeApnsChild, apns_app, machine, pct, write_p8_key
from slixmpp import ClientXMPP, ComponentXMPP

import slixmpp_push  # noqa: F401  (registers push_appserver)
from slixmpp_push import DeliveryPolicy, TinyDBStore
from slixmpp_push.devserver import ComponentSpec, ProsodyServer

COMPONENT = "push.localhost"
COMMANDS = "http://jabber.org/protocol/commands"
PUBLISH = "{http://jabber.org/protocol/pubsub}pubsub/{http://jabber.org/protocol/pubsub}publish"
TOKEN = "a1b2" * 16
WARMUP = 5


async def connect(xmpp: ClientXMPP | ComponentXMPP, address: tuple[str, int]) -> None:
    """Connect and wait for session_start (plain TCP: the dev server has no TLS)."""
    started = asyncio.get_running_loop().create_future()
    xmpp.add_event_handler("session_start", lambda _: started.done() or started.set_result(None))
    for event in ("failed_auth", "connection_failed", "stream_error"):
        xmpp.add_event_handler(event, lambda e, event=event: started.done()
                               or started.set_exception(RuntimeError(f"{event}: {e}")))
    if isinstance(xmpp, ClientXMPP):
        xmpp.enable_direct_tls = False
        xmpp.enable_starttls = False
        xmpp.enable_plaintext = True
        xmpp.connect(*address)
    else:
        xmpp.connect()
    await asyncio.wait_for(started, 15)


def client(jid: str, password: str) -> ClientXMPP:
    xmpp = ClientXMPP(jid, password, plugin_config={
        "feature_mechanisms": {"unencrypted_plain": True, "unencrypted_scram": True}})
    xmpp.register_plugin("xep_0030")
    return xmpp


async def register_and_enable(alice: ClientXMPP) -> str:
    """Siskin's wire protocol: register-device at the app server, enable at Prosody."""
    iq = alice.make_iq_set(ito=COMPONENT)
    iq.append(ET.fromstring(
        f"<command xmlns='{COMMANDS}' node='register-device' action='execute'>"
        "<x xmlns='jabber:x:data' type='submit'>"
        f"<field var='provider'><value>{APNS_APP}</value></field>"
        f"<field var='device-token'><value>{TOKEN}</value></field></x></command>"))
    answer = await iq.send(timeout=10)
    node = next(f.findtext("{jabber:x:data}value") for f in
                answer.xml.iter("{jabber:x:data}field") if f.get("var") == "node")
    enable = alice.make_iq_set()
    enable.append(ET.fromstring(
        f"<enable xmlns='urn:xmpp:push:0' jid='{COMPONENT}' node='{node}'/>"))
    await enable.send(timeout=10)
    return node


def stats(values: list[float]) -> str:
    return (f"median {statistics.median(values):6.2f} ms  p90 {pct(values, .9):6.2f} ms  "
            f"p99 {pct(values, .99):6.2f} ms  max {max(values):6.2f} ms")


def index_of(body: str) -> int | None:
    """``message 17`` -> 17 (the body is how publishes and requests are matched)."""
    prefix, _, number = body.rpartition(" ")
    return int(number) if prefix == "message" and number.isdigit() else None


async def main(messages: int, rate: float) -> int:
    print(f"latency_prosody: {machine()}")
    folder = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    fake = FakeApnsChild()
    secret = secrets.token_hex(16)
    # With the body in the publish (Prosody) and in the APNs payload (our app),
    # every request names the message it carries: matching survives a publish
    # coalesced into the next one while the node had a request in flight.
    prosody = ProsodyServer(components=[ComponentSpec(COMPONENT, secret)], log_level="warn",
                            push_notification_with_body=True)
    component: ComponentXMPP | None = None
    bob: ClientXMPP | None = None
    appserver = None
    try:
        await fake.start()
        await prosody.start()
        await prosody.register("alice", "alice-pw")
        await prosody.register("bob", "bob-pw")

        component = ComponentXMPP(COMPONENT, secret, prosody.host, prosody.component_port)
        for plugin in ("xep_0030", "xep_0004", "xep_0050", "xep_0199"):  # as server.py
            component.register_plugin(plugin)
        component.register_plugin("push_appserver", {
            "apps": [apns_app(fake.endpoint, fake.ca_file, write_p8_key(folder),
                              include_body=True)],
            "store": TinyDBStore(folder / "store.json"),
            "delivery": DeliveryPolicy(rate_interval=0)})
        appserver = component.plugin["push_appserver"]
        await appserver.start()
        arrivals: dict[int, float] = {}
        spawn = component._spawn_event

        def arrival(xml) -> None:  # the baseline's end: the publish just parsed (expat)
            if xml.tag.endswith("}iq") and xml.find(PUBLISH) is not None:
                for field in xml.iter("{jabber:x:data}field"):
                    if field.get("var") == "last-message-body":
                        number = index_of(field.findtext("{jabber:x:data}value") or "")
                        if number is not None:
                            arrivals.setdefault(number, time.monotonic())
            spawn(xml)  # then slixmpp builds the stanza and runs our handler

        component._spawn_event = arrival
        await connect(component, prosody.component_address)

        alice = client("alice@localhost/phone", "alice-pw")
        await connect(alice, prosody.c2s_address)
        node = await register_and_enable(alice)
        await asyncio.wait_for(alice.disconnect(), 5)
        await asyncio.sleep(0.5)  # Prosody has processed the unavailable presence

        bob = client("bob@localhost/desk", "bob-pw")
        await connect(bob, prosody.c2s_address)
        total = WARMUP + messages
        print(f"  alice registered node {node} and went offline; bob sends {WARMUP} warm-up "
              f"messages one by one (each waits for its push: the APNs connection opens), "
              f"then {messages} at {rate:g}/s")
        sent: list[float] = []
        for i in range(WARMUP):
            sent.append(time.monotonic())
            bob.send_message(mto="alice@localhost", mbody=f"message {i}", mtype="chat")
            await fake.wait_for(i + 1, timeout=15)
        meter = CpuMeter(**{"this process (app server, bob)": "self", "Prosody": prosody.pid,
                            "fake APNs": fake.pid})
        meter.start()
        start = time.monotonic()
        for i in range(WARMUP, total):
            await asyncio.sleep(max(0.0, start + (i - WARMUP) / rate - time.monotonic()))
            sent.append(time.monotonic())
            bob.send_message(mto="alice@localhost", mbody=f"message {i}", mtype="chat")
        cpu = meter.shares()
        deadline = time.monotonic() + 30
        while True:  # until the last message's push arrived
            times = await fake.times()
            if any(index_of(body) == total - 1 for _, _, body in times):
                break
            if time.monotonic() > deadline:
                print(f"  the last message was never pushed ({len(times)} requests seen)")
                return 1
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        times = await fake.times()
        stats_ = dict(appserver.delivery.stats)
    finally:
        if bob is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bob.disconnect(), 3)
        if appserver is not None:
            await appserver.stop()
        if component is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(component.disconnect(wait=1.0), 3)
        await fake.stop()
        await prosody.stop()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(fake.folder, ignore_errors=True)

    # Message i reached the phone with the first request carrying message i or a
    # later one (a newer notification replaces a pending older one).
    delivered: dict[int, float] = {}
    for token, at, body in times:
        number = index_of(body)
        if token != TOKEN or number is None:
            print(f"  unexpected request at the fake APNs: {token[:8]}… {body!r}")
            return 1
        for j in range(number, -1, -1):
            if j in delivered:
                break
            delivered[j] = at
    keep = [i for i in range(WARMUP, total)]
    missing = [i for i in keep if i not in arrivals or i not in delivered]
    if missing:
        print(f"  {len(missing)} messages without a publish or a push, e.g. {missing[:5]}")
        return 1
    coalesced = total - len(times)
    whole = [(delivered[i] - sent[i]) * 1000 for i in keep]
    baseline = [(arrivals[i] - sent[i]) * 1000 for i in keep]
    ours = [(delivered[i] - arrivals[i]) * 1000 for i in keep]
    print(f"  total     message → fake APNs request:       {stats(whole)}")
    print(f"  baseline  message → publish at component:    {stats(baseline)}  (Prosody)")
    print(f"  ours      publish at component → fake APNs:  {stats(ours)}")
    medians = statistics.median(whole) / statistics.median(baseline)
    print(f"  ratio total/baseline: medians {medians:.1f}"
          f", p99 {pct(whole, .99) / pct(baseline, .99):.1f}; {len(times)} APNs requests for "
          f"{total} publishes ({coalesced} coalesced into a newer one while the node's "
          f"previous push was in flight); app server stats {stats_}")
    print(f"  CPU while sending (share of one core): {CpuMeter.describe(cpu)}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200, help="measured messages")
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments.messages, arguments.rate)))
