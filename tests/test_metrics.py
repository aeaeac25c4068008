"""Metrics, /health and log redaction."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_fault_stream import until

from slixmpp_push import DeliveryResult, Dialect, MemoryStore, Outcome, Priority, Registration
from slixmpp_push.config import parse_config
from slixmpp_push.errors import ConfigError
from slixmpp_push.logs import RedactingFilter, redact
from slixmpp_push.metrics import Metrics
from slixmpp_push.notifier import Page, PageEngine, PageState, Policy, Step
from slixmpp_push.status_http import StatusServer
from slixmpp_push.store import StoreStatus


async def http(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    if not data:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_metrics_and_health_endpoints() -> None:
    metrics = Metrics()
    store = MemoryStore()
    await store.open()
    await store.put(Registration(node="n", account="a@x", domain="x", app="ios", token="t",
                                 dialect=Dialect.TIGASE))
    metrics.watch_registrations(store.count_by_app)
    metrics.published("tigase", "result")
    metrics.provider_result("ios", DeliveryResult(Outcome.DELIVERED, 200), time.time() - 0.02)
    metrics.provider_result("ios", DeliveryResult(Outcome.RETRY, 503, "ServiceUnavailable"),
                            time.time())
    server = StatusServer(metrics, "127.0.0.1", 0)
    await server.start()
    try:
        status, body = await http(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200
        text = body.decode()
        assert 'slixmpp_push_publishes_total{dialect="tigase",outcome="result"} 1.0' in text
        assert ('slixmpp_push_provider_requests_total{app="ios",reason="ServiceUnavailable",'
                'status="503"} 1.0') in text
        assert 'slixmpp_push_registrations{app="ios"} 1.0' in text
        assert 'slixmpp_push_delivery_latency_seconds_count{app="ios"} 1.0' in text

        status, body = await http(server.port, b"GET /health HTTP/1.1\r\n\r\n")
        assert status == 503  # not connected yet
        details = json.loads(body)
        assert details["providers"]["ios"]["last"] == "retry"
        assert details["providers"]["ios"]["consecutive_failures"] == 1
        metrics.set_connected(True)
        assert (await http(server.port, b"GET /health/ready HTTP/1.1\r\n\r\n"))[0] == 200
        store = StoreStatus()
        metrics.watch_store(store)
        store.write_failed("disk full")
        status, body = await http(server.port, b"GET /health HTTP/1.1\r\n\r\n")
        assert status == 503
        assert json.loads(body)["store"]["problem"] == "store not writable: disk full"
        assert (await http(server.port, b"GET /health/live HTTP/1.1\r\n\r\n"))[0] == 200
        assert (await http(server.port, b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
        assert (await http(server.port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
        status, body = await http(server.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status == 200 and body == b""
        assert (await http(server.port, b"GET /" + b"x" * 20000 + b"\r\n\r\n"))[0] == 0
        assert (await http(server.port, b"garbage\r\n\r\n"))[0] == 0
    finally:
        await server.stop()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def fetch_metrics(metrics: Metrics) -> str:
    """GET /metrics from a real StatusServer."""
    server = StatusServer(metrics, "127.0.0.1", 0)
    await server.start()
    try:
        status, body = await http(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
    finally:
        await server.stop()
    assert status == 200
    return body.decode()


async def scrape(metrics: Metrics) -> Samples:
    """GET /metrics, parsed as Prometheus parses it: (name, labels) → value."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(await fetch_metrics(metrics))
            for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_readiness_and_refused_credentials_are_gauges() -> None:
    metrics = Metrics()
    metrics.set_connected(True)
    metrics.provider_result("ios", DeliveryResult(Outcome.DELIVERED, 200), time.time())
    samples = await scrape(metrics)
    assert value(samples, "slixmpp_push_ready") == 1
    assert value(samples, "slixmpp_push_provider_credentials_refused", app="ios") == 0
    # APNs refuses the key: the app is paused (not ready) ...
    refused = DeliveryResult(Outcome.RETRY, 403, "InvalidProviderToken", retry_after=60.0,
                             suspended=True)
    metrics.provider_result("ios", refused, time.time())
    samples = await scrape(metrics)
    assert value(samples, "slixmpp_push_ready") == 0
    assert value(samples, "slixmpp_push_provider_credentials_refused", app="ios") == 1
    # ... and stays flagged after the pause, while nothing is sent, until an answer
    # shows the credentials work again.
    metrics.provider_result("ios", dataclasses.replace(refused, retry_after=0.0), time.time())
    samples = await scrape(metrics)
    assert value(samples, "slixmpp_push_ready") == 1
    assert value(samples, "slixmpp_push_provider_credentials_refused", app="ios") == 1
    metrics.provider_result("ios", DeliveryResult(Outcome.DEAD_TOKEN, 410, "Unregistered"),
                            time.time())
    samples = await scrape(metrics)
    assert value(samples, "slixmpp_push_provider_credentials_refused", app="ios") == 0
    assert value(samples, "slixmpp_push_ready") == 1


class Sent:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, page: Page, targets: tuple[str, ...], reason: str) -> None:
        self.count += 1


async def test_pager_metrics_in_the_exposition() -> None:
    metrics = Metrics()
    store = MemoryStore()
    await store.open()
    policy = Policy("oncall", (Step(("a@x",), 0.05), Step(("b@x",), 60)))
    last = Policy("short", (Step(("a@x",), 0.02),), final=("boss@x",))
    sent = Sent()
    engine = PageEngine(store, {"oncall": policy, "short": last}, sent, metrics.pager())
    acked, _ = await engine.open("k1", "t", "", Priority.HIGH, "oncall", "alertmanager")
    await engine.open("k1", "t", "", Priority.HIGH, "oncall", "alertmanager")  # duplicate
    open_page, _ = await engine.open("k2", "t", "", Priority.HIGH, "oncall", "errbot:al@x")
    gone, _ = await engine.open("k3", "t", "", Priority.HIGH, "oncall")
    exhausted, _ = await engine.open("k4", "t", "", Priority.HIGH, "short", "notify")
    await until(lambda: sent.count == 8, "the three escalations and the final notice")
    await engine.ack(acked, "b@x")
    await engine.resolve(gone, "carol@x")
    samples = await scrape(metrics)
    for source, policy_name, count in (("alertmanager", "oncall", 1), ("errbot", "oncall", 1),
                                       ("api", "oncall", 1), ("notify", "short", 1)):
        assert value(samples, "slixmpp_push_pages_opened_total", source=source,
                     policy=policy_name) == count
    assert value(samples, "slixmpp_push_page_escalations_total", policy="oncall") == 3
    assert ("slixmpp_push_page_escalations_total",
            frozenset({("policy", "short")})) not in samples  # one step: never escalates
    assert value(samples, "slixmpp_push_pages_exhausted_total", policy="short") == 1
    assert value(samples, "slixmpp_push_pages_resolved_total", policy="oncall",
                 state="open") == 1
    assert value(samples, "slixmpp_push_page_ack_seconds_count", policy="oncall") == 1
    assert value(samples, "slixmpp_push_page_ack_seconds_bucket", policy="oncall",
                 le="15.0") == 1  # acked within seconds: the first bucket
    assert value(samples, "slixmpp_push_pages_open", state="open") == 1
    assert value(samples, "slixmpp_push_pages_open", state="acked") == 1
    assert value(samples, "slixmpp_push_pages_open", state="exhausted") == 1
    oldest = value(samples, "slixmpp_push_page_unacknowledged_oldest_seconds")
    assert 0 < oldest < time.time() - exhausted.created + 1  # the older of open/exhausted
    await engine.resolve(open_page, "a@x")
    await engine.resolve(exhausted, "boss@x")
    await engine.resolve(acked, "b@x")
    samples = await scrape(metrics)
    assert value(samples, "slixmpp_push_pages_open", state="open") == 0  # 0, not absent
    assert value(samples, "slixmpp_push_page_unacknowledged_oldest_seconds") == 0
    for policy_name, state, count in (("oncall", "open", 2), ("oncall", "acked", 1),
                                      ("short", "exhausted", 1)):
        assert value(samples, "slixmpp_push_pages_resolved_total", policy=policy_name,
                     state=state) == count
    assert all(p.state is PageState.RESOLVED for p in (acked, open_page, gone, exhausted))
    await engine.stop()


def test_tokens_and_secrets_are_redacted_from_stanza_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    stanza = ("<iq><command><x><field var='device-token'><value>abcdef0123456789</value>"
              "</field><field var=\"secret\"><value>hunter2</value></field>"
              "<field var='node'><value>visible</value></field></x></command>"
              "<enable><encrypt xmlns='tigase:push:encrypt:0' alg='aes-128-gcm'>S0VZ</encrypt>"
              "</enable></iq>")
    assert "abcdef0123456789" not in redact(stanza)
    assert "hunter2" not in redact(stanza) and "S0VZ" not in redact(stanza)
    assert "visible" in redact(stanza)
    logger = logging.getLogger("slixmpp.test-redaction")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.DEBUG):
        logger.debug("SEND: %s", stanza)
    assert "hunter2" not in caplog.text and "[redacted]" in caplog.text


def test_metrics_and_logging_config_keys() -> None:
    base = {"xmpp": {"jid": "push.x", "secret_env": "HOME"},
            "apps": {"c": {"type": "console"}}}
    config = parse_config({**base, "metrics": {"listen": "127.0.0.1:9108"},
                           "logging": {"format": "json"}})
    assert config.metrics_listen == ("127.0.0.1", 9108) and config.log_format == "json"
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        parse_config({**base, "metrics": {"listen": "9108"}})
    with pytest.raises(ConfigError, match=r"logging\.format"):
        parse_config({**base, "logging": {"format": "xml"}})
