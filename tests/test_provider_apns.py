"""ApnsProvider: the real aioapns client against a protocol-faithful fake APNs.

Nothing in the provider is mocked: requests travel over TLS + HTTP/2 to
:class:`fakes.fake_apns.FakeApns`, which records them and answers like
Apple (success as bare HEADERS, errors as JSON reasons, flow control honoured).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aioapns.common import NotificationResult
from aioapns.connection import APNsProductionClientProtocol
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fakes.fake_apns import FakeApns  # pytest puts tests/ on sys.path (no __init__.py)
from fakes.tls import TestCA

from slixmpp_push.config import AppConfig
from slixmpp_push.errors import ConfigError, DeliveryResult, Outcome
from slixmpp_push.providers import create_provider
from slixmpp_push.providers.apns import ApnsProvider
from slixmpp_push.providers.base import ApnsRequest

TOPIC = "im.example.messenger"
KEY_ID = "ABC123DEFG"
TEAM_ID = "DEF123GHIJ"
TOKEN = "a1b2c3d4" * 8  # 64 hex characters, like a real device token


# fixtures and helpers


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


@pytest.fixture
async def fake(ca: TestCA) -> AsyncIterator[FakeApns]:
    async with FakeApns(ca) as server:
        yield server


@pytest.fixture
def p8_key(tmp_path: Path) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    """A throwaway APNs signing key: EC P-256, PKCS#8 PEM, like Apple's .p8 files."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / f"AuthKey_{KEY_ID}.p8"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path, key


def token_app(fake: FakeApns, ca: TestCA, key_file: Path, **overrides: Any) -> AppConfig:
    settings: dict[str, Any] = {
        "id": "ios",
        "type": "apns",
        "topic": TOPIC,
        "key_file": str(key_file),
        "key_id": KEY_ID,
        "team_id": TEAM_ID,
        "endpoint": fake.endpoint,
        "ca_file": str(ca.ca_file),
        "timeout": 5.0,
    }
    settings.update(overrides)
    return AppConfig(**settings)


async def started(app: AppConfig) -> ApnsProvider:
    provider = create_provider(app)
    assert isinstance(provider, ApnsProvider)
    await provider.start()
    return provider


def alert(token: str = TOKEN, **overrides: Any) -> ApnsRequest:
    fields: dict[str, Any] = {
        "token": token,
        "topic": TOPIC,
        "push_type": "alert",
        "priority": 10,
        "expiration": int(time.time()) + 3600,
        "payload": {"aps": {"alert": {"title": "New message"}, "mutable-content": 1}},
    }
    fields.update(overrides)
    return ApnsRequest(**fields)


async def timed(provider: ApnsProvider, request: ApnsRequest) -> tuple[DeliveryResult, float]:
    start = time.monotonic()
    result = await provider.send(request)
    return result, time.monotonic() - start


async def storm(
    provider: ApnsProvider, tokens: Iterable[str], batch: int = 200
) -> list[tuple[DeliveryResult, float]]:
    """Send to every token, ``batch`` requests in flight at a time; per-request latency."""
    tokens = list(tokens)
    results: list[tuple[DeliveryResult, float]] = []
    for i in range(0, len(tokens), batch):
        chunk = tokens[i : i + batch]
        results += await asyncio.gather(
            *(timed(provider, alert(t, push_type="background", priority=5)) for t in chunk)
        )
    return results


# delivery: what arrives at Apple


async def test_token_auth_push_arrives_with_exact_headers_and_body(
    fake: FakeApns, ca: TestCA, p8_key: tuple[Path, ec.EllipticCurvePrivateKey]
) -> None:
    key_file, key = p8_key
    provider = await started(token_app(fake, ca, key_file))
    expiration = int(time.time()) + 86_400 + 17  # absolute, odd: no relative arithmetic
    request = alert(expiration=expiration, collapse_id="chat-42")
    try:
        result = await provider.send(request)
    finally:
        await provider.close()

    [record] = await fake.wait_for(1)
    assert record.path == f"/3/device/{TOKEN}"
    assert record.token == TOKEN
    headers = record.headers
    assert headers[":method"] == "POST"
    assert headers["apns-topic"] == TOPIC
    assert headers["apns-push-type"] == "alert"
    assert headers["apns-priority"] == "10"
    assert headers["apns-expiration"] == str(expiration)
    assert headers["apns-collapse-id"] == "chat-42"
    assert record.body == request.payload

    scheme, _, bearer = headers["authorization"].partition(" ")
    assert scheme == "bearer"
    assert jwt.get_unverified_header(bearer) == {"alg": "ES256", "kid": KEY_ID, "typ": "JWT"}
    claims = jwt.decode(bearer, key.public_key(), algorithms=["ES256"])
    assert claims["iss"] == TEAM_ID
    assert abs(claims["iat"] - time.time()) < 60

    assert result == DeliveryResult(
        Outcome.DELIVERED, status=200, reason="", message_id=headers["apns-id"]
    )


async def test_certificate_auth_push_arrives(fake: FakeApns, ca: TestCA, tmp_path: Path) -> None:
    cert_file = ca.issue_client_cert("push@example.com")
    app = AppConfig(
        id="ios-cert",
        type="apns",
        topic=TOPIC,
        cert_file=str(cert_file),
        endpoint=fake.endpoint,
        ca_file=str(ca.ca_file),
        timeout=5.0,
    )
    provider = await started(app)
    try:
        result = await provider.send(alert())
    finally:
        await provider.close()

    [record] = await fake.wait_for(1)
    assert result.outcome is Outcome.DELIVERED
    assert record.client_cert is not None  # presented and verified against the CA
    subject = dict(pair[0] for pair in record.client_cert["subject"])
    assert subject["commonName"] == "push@example.com"
    assert "authorization" not in record.headers
    assert record.headers["apns-topic"] == TOPIC


async def test_voip_push_goes_to_voip_topic_and_expiration_zero_is_kept(
    fake: FakeApns, ca: TestCA, p8_key: tuple[Path, ec.EllipticCurvePrivateKey]
) -> None:
    provider = await started(token_app(fake, ca, p8_key[0]))
    request = alert(topic=f"{TOPIC}.voip", push_type="voip", expiration=0, payload={"x": 1})
    try:
        result = await provider.send(request)
    finally:
        await provider.close()

    [record] = await fake.wait_for(1)
    assert result.outcome is Outcome.DELIVERED
    assert record.headers["apns-topic"] == f"{TOPIC}.voip"
    assert record.headers["apns-push-type"] == "voip"
    assert record.headers["apns-expiration"] == "0"  # "try once", not "no header"
    assert "apns-collapse-id" not in record.headers


# classification of Apple's answers


@pytest.mark.parametrize(
    ("status", "reason", "outcome"),
    [
        (410, "Unregistered", Outcome.DEAD_TOKEN),
        (400, "BadDeviceToken", Outcome.DEAD_TOKEN),
        (400, "DeviceTokenNotForTopic", Outcome.DEAD_TOKEN),
        (400, "TopicDisallowed", Outcome.DEAD_TOKEN),
        (413, "PayloadTooLarge", Outcome.REJECTED),
        (400, "BadTopic", Outcome.REJECTED),
        (400, "BadExpirationDate", Outcome.REJECTED),
        (429, "TooManyRequests", Outcome.RETRY),  # refused credentials: test_provider_semantics
    ],
)
async def test_error_replies_are_classified(
    fake: FakeApns,
    ca: TestCA,
    p8_key: tuple[Path, ec.EllipticCurvePrivateKey],
    status: int,
    reason: str,
    outcome: Outcome,
) -> None:
    fake.responses[TOKEN] = (status, reason)
    provider = await started(token_app(fake, ca, p8_key[0]))
    try:
        result = await provider.send(alert())
    finally:
        await provider.close()
    assert (result.outcome, result.status, result.reason) == (outcome, status, reason)


@pytest.mark.parametrize(
    ("status", "reason"), [(503, "ServiceUnavailable"), (500, "InternalServerError")]
)
async def test_outage_is_retried(
    fake: FakeApns,
    ca: TestCA,
    p8_key: tuple[Path, ec.EllipticCurvePrivateKey],
    status: int,
    reason: str,
) -> None:
    fake.set_outage(status, reason, retry_after=30)
    provider = await started(token_app(fake, ca, p8_key[0]))
    try:
        result = await provider.send(alert())
    finally:
        await provider.close()
    assert (result.outcome, result.status, result.reason) == (Outcome.RETRY, status, reason)


async def test_logs_show_a_token_prefix_only(
    fake: FakeApns,
    ca: TestCA,
    p8_key: tuple[Path, ec.EllipticCurvePrivateKey],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.responses[TOKEN] = (410, "Unregistered")
    provider = await started(token_app(fake, ca, p8_key[0]))
    try:
        await provider.send(alert())
        await provider.send(alert(token="ff" * 32))
    finally:
        await provider.close()
    assert TOKEN[:8] in caplog.text
    assert TOKEN not in caplog.text
    assert "ff" * 32 not in caplog.text
    assert "PRIVATE KEY" not in caplog.text


def test_reply_without_a_status_is_retried() -> None:
    result = ApnsProvider.classify(NotificationResult("id-1", ""))
    assert result.outcome is Outcome.RETRY


async def test_hung_request_times_out_as_retry_and_frees_its_stream(
    fake: FakeApns, ca: TestCA, p8_key: tuple[Path, ec.EllipticCurvePrivateKey]
) -> None:
    fake.hang = True
    provider = await started(token_app(fake, ca, p8_key[0], timeout=0.3))
    try:
        result = await provider.send(alert())
        assert (result.outcome, result.reason) == (Outcome.RETRY, "timeout")
        # The abandoned stream was reset, so the server can forget it...
        for _ in range(50):
            if fake.connections[0].resets_received:
                break
            await asyncio.sleep(0.01)
        assert fake.connections[0].resets_received == 1
        # ...and the same connection keeps working once Apple answers again.
        fake.hang = False
        assert (await provider.send(alert())).outcome is Outcome.DELIVERED
        assert len(fake.connections) == 1
    finally:
        await provider.close()


async def test_unreachable_endpoint_is_retry_not_exception(
    ca: TestCA, p8_key: tuple[Path, ec.EllipticCurvePrivateKey]
) -> None:
    closed = FakeApns(ca)
    await closed.start()
    await closed.stop()  # a port that was just free: connection refused
    provider = await started(token_app(closed, ca, p8_key[0], timeout=0.3))
    try:
        result = await provider.send(alert())
    finally:
        await provider.close()
    assert result.outcome is Outcome.RETRY


# configuration


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"key_id": None}, "apps.ios.key_id"),
        ({"topic": ""}, "apps.ios.topic"),
        ({"cert_file": "/x.pem"}, "apps.ios.cert_file"),
        ({"endpoint": "localhost"}, "apps.ios.endpoint"),
        ({"max_connections": 0}, "apps.ios.max_connections"),
    ],
)
async def test_config_mistakes_name_the_key(
    fake: FakeApns,
    ca: TestCA,
    p8_key: tuple[Path, ec.EllipticCurvePrivateKey],
    overrides: dict[str, Any],
    key: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        ApnsProvider(token_app(fake, ca, p8_key[0], **overrides))
    assert caught.value.key == key


@pytest.mark.parametrize(
    ("overrides", "address"),
    [
        ({"endpoint": None}, ("api.push.apple.com", 443)),
        ({"endpoint": None, "sandbox": True}, ("api.development.push.apple.com", 443)),
        ({"endpoint": "[::1]:2197"}, ("::1", 2197)),
    ],
)
def test_address_is_apple_or_the_endpoint(
    tmp_path: Path, overrides: dict[str, Any], address: tuple[str, int]
) -> None:
    app = AppConfig(
        id="ios", type="apns", topic=TOPIC, key_file="k.p8", key_id=KEY_ID, team_id=TEAM_ID
    )
    for name, value in overrides.items():
        setattr(app, name, value)
    provider = ApnsProvider(app)
    assert (provider.host, provider.port) == address


async def test_unreadable_key_file_fails_at_start(
    fake: FakeApns, ca: TestCA, tmp_path: Path
) -> None:
    bogus = tmp_path / "AuthKey.p8"
    bogus.write_text("not a key")
    provider = ApnsProvider(token_app(fake, ca, bogus))
    with pytest.raises(ConfigError) as caught:
        await provider.start()
    assert caught.value.key == "apps.ios.key_file"


# HTTP/2 flow control: thousands of error replies on one connection

STORM = 3_000  # > 65,535 / 51 bytes per 410 body: ~1,285 would exhaust a window never refilled
STALL_BOUND = 5.0  # seconds; aioapns's idle reconnect stalls for 10 s


async def test_dead_token_storm_on_one_connection_never_stalls(
    fake: FakeApns, ca: TestCA, p8_key: tuple[Path, ec.EllipticCurvePrivateKey]
) -> None:
    fake.dead_token_prefix = "dead"
    provider = await started(token_app(fake, ca, p8_key[0], max_connections=1, timeout=15.0))
    start = time.monotonic()
    try:
        results = await storm(provider, (f"dead{i:060x}" for i in range(STORM)))
    finally:
        await provider.close()
    elapsed = time.monotonic() - start
    worst = max(latency for _, latency in results)
    print(
        f"\nstorm: {STORM} x 410 in {elapsed:.2f} s, {STORM / elapsed:.0f} req/s, max {worst:.3f} s"
    )

    assert [r.outcome for r, _ in results] == [Outcome.DEAD_TOKEN] * STORM
    assert len(fake.requests) == STORM
    assert len(fake.connections) == 1
    assert worst < STALL_BOUND
    # The fake never had to hold a reply back for lack of credit.
    assert fake.connections[0].bodies_deferred == 0


async def test_stock_aioapns_stalls_in_the_same_storm(
    fake: FakeApns, ca: TestCA, p8_key: tuple[Path, ec.EllipticCurvePrivateKey]
) -> None:
    """The control experiment: without the fix the storm hits the 10 s stall.

    Proves the test above can fail. 1,600 replies are enough to exhaust the
    window once; the stuck requests wait for aioapns's idle timer (10 s),
    which drops the connection, and are resent on a second one.
    """
    fake.dead_token_prefix = "dead"
    provider = await started(token_app(fake, ca, p8_key[0], max_connections=1, timeout=15.0))
    assert provider.pool is not None

    class StockProtocol(APNsProductionClientProtocol):  # aioapns as shipped, redirected
        APNS_SERVER = fake.host
        APNS_PORT = fake.port

    provider.pool.protocol_class = StockProtocol
    try:
        results = await storm(provider, (f"dead{i:060x}" for i in range(1_600)))
    finally:
        await provider.close()

    first = fake.connections[0]
    assert first.outbound_window < 51  # credit never returned: window exhausted
    assert first.bodies_deferred > 0
    assert len(fake.connections) == 2  # the idle timer's reconnect
    assert max(latency for _, latency in results) >= 9.0
    assert all(r.outcome is Outcome.DEAD_TOKEN for r, _ in results)  # late, but answered
