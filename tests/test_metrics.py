"""Metrics, /health and log redaction."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from slixmpp_push import DeliveryResult, Dialect, MemoryStore, Outcome, Registration
from slixmpp_push.config import parse_config
from slixmpp_push.errors import ConfigError
from slixmpp_push.logs import RedactingFilter, redact
from slixmpp_push.metrics import Metrics
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
