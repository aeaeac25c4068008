"""Provider semantics under faults (issue 9, items 3 and 4), real clients against the fakes.

- APNs provider tokens: one per app; 403 ExpiredProviderToken / InvalidProviderToken
  re-sign and resend once, never sooner than Apple allows; 429
  TooManyProviderTokenUpdates signs nothing new; refused credentials pause the
  app (no request until a trial is due) instead of retrying for a day.
- Retry-After honoured (APNs and FCM, FCM quota errors at least 60 s), by the
  delivery engine for the node and, for service-wide answers, by the provider
  for the whole app.
- What the providers report: ``DeliveryResult.reason`` names the cause
  (connection refused, TLS verify failed, timeout, auth rejected), and /health
  is not ready while a provider fails every request or is paused.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from fakes.fake_apns import FakeApns
from fakes.fake_fcm import FakeFcm
from fakes.tls import TestCA
from google.auth.exceptions import RefreshError
from test_provider_fcm import FixedToken

from slixmpp_push import DeliveryPolicy, Dialect, MemoryStore, Notification, Registration
from slixmpp_push.appserver.delivery import Delivery, Submitted
from slixmpp_push.config import AppConfig
from slixmpp_push.errors import DeliveryResult, Outcome
from slixmpp_push.metrics import Metrics
from slixmpp_push.providers.apns import ApnsProvider, ProviderToken
from slixmpp_push.providers.base import ApnsRequest, FcmRequest
from slixmpp_push.providers.fcm import FcmProvider
from slixmpp_push.status_http import StatusServer

KEY_ID = "TESTKEY123"
TEAM_ID = "TEAM123456"
TOPIC = "org.example.chat"
TOKEN = "a1b2c3d4" * 8
PROJECT = "push-e2e"  # conftest's fake_fcm serves this project


def apns(fake: FakeApns, ca: TestCA, key: Path, **overrides: Any) -> AppConfig:
    settings: dict[str, Any] = {
        "id": "ios", "type": "apns", "topic": TOPIC, "key_file": str(key), "key_id": KEY_ID,
        "team_id": TEAM_ID, "endpoint": fake.endpoint, "ca_file": str(ca.ca_file),
        "timeout": 5.0, "max_connections": 1}
    settings.update(overrides)
    return AppConfig(**settings)


@pytest.fixture
def signing_key(apns_key: Path) -> ec.EllipticCurvePrivateKey:
    key = load_pem_private_key(apns_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


@pytest.fixture
async def provider(fake_apns: FakeApns, test_ca: TestCA,
                   apns_key: Path) -> AsyncIterator[ApnsProvider]:
    started = ApnsProvider(apns(fake_apns, test_ca, apns_key))
    await started.start()
    yield started
    await started.close()


@pytest.fixture
def quick_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apple's 20 minutes between provider tokens, and the pauses, made 0.3 s."""
    monkeypatch.setattr(ProviderToken, "MIN_INTERVAL", 0.3)
    monkeypatch.setattr(ApnsProvider, "MIN_AUTH_PAUSE", 0.3)
    monkeypatch.setattr(ApnsProvider, "TRIAL_WAIT", 0.3)


def alert(token: str = TOKEN) -> ApnsRequest:
    return ApnsRequest(token=token, topic=TOPIC, push_type="alert", priority=10,
                       expiration=int(time.time()) + 3600,
                       payload={"aps": {"alert": {"title": "New message"}}})


def bearers(fake: FakeApns) -> list[str]:
    return [r.headers["authorization"] for r in fake.requests]


def iat(bearer: str) -> int:
    return int(jwt.decode(bearer.split()[1], options={"verify_signature": False})["iat"])


# -- provider tokens -------------------------------------------------------------------------


async def test_expired_provider_token_is_signed_anew_and_the_push_delivered(
        fake_apns: FakeApns, provider: ApnsProvider,
        signing_key: ec.EllipticCurvePrivateKey) -> None:
    """A VM paused for an hour: the wall clock moved on 62 minutes, the
    monotonic one (which does not count a suspension) 25.

    The token is not due for renewal by our count, but its iat is 62 minutes
    old: Apple says ExpiredProviderToken. A new token is signed (allowed: more
    than 20 minutes since the last) and the push sent again at once.
    """
    fake_apns.add_provider_key(KEY_ID, TEAM_ID, signing_key.public_key())
    token = provider.token
    assert token is not None
    fake_apns.clock_offset = 3700  # the world's wall clock after the pause...
    token.clock = lambda: time.time() + 3700  # ...which is ours too
    token.monotonic = lambda: time.monotonic() + 25 * 60

    result = await provider.send(alert())

    assert result.outcome is Outcome.DELIVERED
    first, second = bearers(fake_apns)
    assert iat(second) - iat(first) >= 3700
    assert token.signed == 2
    assert len(fake_apns.connections) == 1  # the same connection, a new token


async def test_tokens_are_shared_across_connections(
        fake_apns: FakeApns, test_ca: TestCA, apns_key: Path,
        signing_key: ec.EllipticCurvePrivateKey) -> None:
    """aioapns signed a token per connection: connection churn was token churn."""
    fake_apns.add_provider_key(KEY_ID, TEAM_ID, signing_key.public_key())
    fake_apns.min_token_interval = 1200  # as Apple: refuses a new token within 20 min
    provider = ApnsProvider(apns(fake_apns, test_ca, apns_key))
    await provider.start()
    try:
        for _ in range(5):
            assert (await provider.send(alert())).outcome is Outcome.DELIVERED
            for connection in fake_apns.connections:  # the server closes every connection
                connection._close()
            await asyncio.sleep(0.05)
    finally:
        await provider.close()
    assert len(fake_apns.connections) == 5
    assert len(set(bearers(fake_apns))) == 1


async def test_clock_far_behind_apple_pauses_the_app_without_signing_in_a_loop(
        fake_apns: FakeApns, provider: ApnsProvider,
        signing_key: ec.EllipticCurvePrivateKey) -> None:
    """Apple's clock 62 minutes ahead of ours: every token we sign is "expired".

    Re-signing cannot help (and Apple allows one new token per 20 minutes):
    the app pauses until a new token may be signed; meanwhile no request is
    made, and every notification is answered RETRY with the wait.
    """
    fake_apns.add_provider_key(KEY_ID, TEAM_ID, signing_key.public_key())
    fake_apns.clock_offset = 3700

    first = await provider.send(alert())
    later = [await provider.send(alert(f"{i:064x}")) for i in range(50)]

    assert (first.outcome, first.status, first.reason) == (
        Outcome.RETRY, 403, "auth rejected: ExpiredProviderToken")
    assert first.suspended and first.retry_after is not None
    assert 15 * 60 < first.retry_after <= 20 * 60  # until Apple accepts a new token
    assert len(fake_apns.requests) == 1  # one request: 50 more notifications, no traffic
    assert {(r.outcome, r.reason, r.suspended) for r in later} == {
        (Outcome.RETRY, "auth rejected: ExpiredProviderToken", True)}
    assert all(r.retry_after is not None and r.retry_after > 15 * 60 for r in later)
    assert provider.token is not None and provider.token.signed == 1  # at start only


async def test_revoked_key_pauses_then_one_trial_at_a_time_then_resumes(
        fake_apns: FakeApns, provider: ApnsProvider, quick_pauses: None,
        signing_key: ec.EllipticCurvePrivateKey) -> None:
    """InvalidProviderToken, again right after a fresh token: a revoked key.

    The app pauses; when the pause is over one trial request (with a new
    token, as Apple now allows) tests the key while the other notifications
    keep waiting; once the key is accepted again, sending resumes.
    """
    other = ec.generate_private_key(ec.SECP256R1())
    fake_apns.add_provider_key(KEY_ID, TEAM_ID, other.public_key())  # not our key: revoked

    first = await provider.send(alert())
    assert (first.outcome, first.reason, first.suspended) == (
        Outcome.RETRY, "auth rejected: InvalidProviderToken", True)
    assert len(fake_apns.requests) == 1  # the token was fresh: no new one, no resend

    await asyncio.sleep(0.35)  # the pause is over: a trial, with a new token this time
    trials = await asyncio.gather(*(provider.send(alert(f"{i:064x}")) for i in range(20)))
    assert len(fake_apns.requests) == 3  # one trial: the old token, then a new one
    assert len(set(bearers(fake_apns))) == 2
    assert all(r.outcome is Outcome.RETRY and r.suspended for r in trials)

    fake_apns.add_provider_key(KEY_ID, TEAM_ID, signing_key.public_key())  # key fixed
    await asyncio.sleep(0.35)
    assert (await provider.send(alert())).outcome is Outcome.DELIVERED
    assert (await provider.send(alert())).outcome is Outcome.DELIVERED  # resumed, no trial


async def test_too_many_provider_token_updates_signs_nothing_new(
        fake_apns: FakeApns, provider: ApnsProvider, test_ca: TestCA, apns_key: Path,
        quick_pauses: None, signing_key: ec.EllipticCurvePrivateKey) -> None:
    """A restart signs a new token too soon after the previous process's: Apple
    answers 429 TooManyProviderTokenUpdates. The app pauses and keeps that
    token: no new one is signed, however often the trials are refused."""
    fake_apns.add_provider_key(KEY_ID, TEAM_ID, signing_key.public_key())
    fake_apns.min_token_interval = 3600
    assert (await provider.send(alert())).outcome is Outcome.DELIVERED  # token 1 adopted
    restarted = ApnsProvider(apns(fake_apns, test_ca, apns_key))
    await restarted.start()
    try:
        refused = await restarted.send(alert())
        assert (refused.outcome, refused.status, refused.reason, refused.suspended) == (
            Outcome.RETRY, 429, "auth rejected: TooManyProviderTokenUpdates", True)
        for _ in range(3):  # a trial after each pause: still refused, still no new token
            await asyncio.sleep(0.35)
            assert (await restarted.send(alert())).reason.endswith("TooManyProviderTokenUpdates")
        assert restarted.token is not None and restarted.token.signed == 1
        assert len(fake_apns.requests) == 5  # 1, then 1 + one per trial, nothing between
        assert len(set(bearers(fake_apns)[1:])) == 1

        fake_apns.min_token_interval = None  # Apple takes token 2 now
        await asyncio.sleep(0.35)
        assert (await restarted.send(alert())).outcome is Outcome.DELIVERED
    finally:
        await restarted.close()


# -- Retry-After -------------------------------------------------------------------------------


async def test_apns_retry_after_for_a_device_and_for_the_service(
        fake_apns: FakeApns, provider: ApnsProvider) -> None:
    fake_apns.respond(TOKEN, 429, "TooManyRequests", retry_after=20)
    throttled = await provider.send(alert())
    assert (throttled.outcome, throttled.retry_after) == (Outcome.RETRY, 20.0)
    other = await provider.send(alert("ff" * 32))  # one device's throttling: others go on
    assert other.outcome is Outcome.DELIVERED

    fake_apns.set_outage(503, "ServiceUnavailable", retry_after=30)
    outage = await provider.send(alert("ee" * 32))
    sent = len(fake_apns.requests)
    held = await provider.send(alert("dd" * 32))  # Apple asked every client to wait
    assert (outage.outcome, outage.retry_after) == (Outcome.RETRY, 30.0)
    assert len(fake_apns.requests) == sent
    assert held.outcome is Outcome.RETRY and held.retry_after is not None
    assert 0 < held.retry_after <= 30 and not held.suspended


async def test_delivery_engine_waits_what_apns_asked(
        fake_apns: FakeApns, provider: ApnsProvider) -> None:
    """The issue's case: 429 with Retry-After: 20 was retried after half a second."""
    fake_apns.respond(TOKEN, 429, "TooManyRequests", retry_after=20)
    store = MemoryStore()
    await store.open()
    reg = Registration(node="n1", account="a@example.org", domain="example.org", app="ios",
                       token=TOKEN, dialect=Dialect.TIGASE)
    await store.put(reg)
    delivery = Delivery(store, {"ios": provider}, DeliveryPolicy(retry_base=0.5),
                        _no_dead_tokens)
    try:
        began = time.time()
        assert await delivery.submit(reg, Notification(received_at=began)) is Submitted.QUEUED
        due = store.table("pending")["n1"]["due"]
    finally:
        await delivery.stop()
    assert due - began >= 20.0


async def _no_dead_tokens(registration: Registration, result: DeliveryResult) -> None:
    raise AssertionError(f"not a dead token: {result}")


@pytest.mark.parametrize(("code", "retry_after", "waits"),
                         [("QUOTA_EXCEEDED", "10", 60.0),  # FCM: at least a minute
                          ("QUOTA_EXCEEDED", "90", 90.0),
                          ("UNAVAILABLE", "7", 7.0)])
async def test_fcm_retry_after_pauses_the_app(
        fake_fcm: FakeFcm, code: str, retry_after: str, waits: float) -> None:
    provider = FcmProvider(_fcm_app(fake_fcm), credential=FixedToken())
    await provider.start()
    try:
        fake_fcm.set_outage(code, retry_after=retry_after)
        first = await provider.send(FcmRequest(token="device-1", data={"a": "b"}))
        second = await provider.send(FcmRequest(token="device-2", data={"a": "b"}))
    finally:
        await provider.close()
    assert (first.outcome, first.reason, first.retry_after) == (Outcome.RETRY, code, waits)
    assert len(fake_fcm.requests) == 1  # the project's quota or FCM's outage: all wait
    assert second.retry_after is not None and 0 < second.retry_after <= waits


# -- FCM credentials refused ------------------------------------------------------------------


async def test_fcm_service_account_refused_pauses_the_app(fake_fcm: FakeFcm) -> None:
    credential = FixedToken(None, refresh_error=RefreshError("invalid_grant: account not found"))
    provider = FcmProvider(_fcm_app(fake_fcm), credential=credential)
    await provider.start()
    refreshes = len(credential.refresh_threads)  # start() tried once already
    try:
        results = [await provider.send(FcmRequest(token=f"d{i}", data={"a": "b"}))
                   for i in range(20)]
    finally:
        await provider.close()
    assert {(r.outcome, r.suspended) for r in results} == {(Outcome.RETRY, True)}
    assert results[0].reason == "auth rejected: service account refused (RefreshError)"
    assert results[0].retry_after == FcmProvider.AUTH_PAUSE
    assert len(credential.refresh_threads) == refreshes + 1  # not one per notification
    assert fake_fcm.requests == []


async def test_fcm_access_token_refused_pauses_the_app(fake_fcm: FakeFcm) -> None:
    fake_fcm.access_token = "the-right-token"
    provider = FcmProvider(_fcm_app(fake_fcm), credential=FixedToken("a-revoked-token"))
    await provider.start()
    try:
        results = [await provider.send(FcmRequest(token=f"d{i}", data={"a": "b"}))
                   for i in range(10)]
    finally:
        await provider.close()
    assert results[0].reason == "auth rejected: UNAUTHENTICATED"
    assert all(r.suspended for r in results)
    assert len(fake_fcm.requests) == 2  # the 401, and the resend after a token refresh


def _fcm_app(fake: FakeFcm) -> AppConfig:
    return AppConfig(id="fcm", type="fcm", project_id=PROJECT, endpoint=fake.base_url,
                     ca_file=str(fake.ca_file), timeout=5.0)


# -- what /health says -------------------------------------------------------------------------


async def test_health_names_each_provider_fault_and_recovers(
        fake_apns: FakeApns, test_ca: TestCA, apns_key: Path,
        signing_key: ec.EllipticCurvePrivateKey, monkeypatch: pytest.MonkeyPatch) -> None:
    """/health turns not ready when a provider fails every request, and says why."""
    monkeypatch.setattr(ApnsProvider, "CONNECT_BACKOFF_MAX", 0.0)  # each send tries
    monkeypatch.setattr(ApnsProvider, "CONNECT_BACKOFF", 0.0)
    metrics = Metrics()
    metrics.set_connected(True)
    server = StatusServer(metrics, "127.0.0.1", 0)
    await server.start()
    provider = ApnsProvider(apns(fake_apns, test_ca, apns_key, timeout=0.3))
    await provider.start()

    async def push(times: int) -> tuple[int, dict[str, Any]]:
        for _ in range(times):
            metrics.provider_result("ios", await provider.send(alert()), time.time())
        return await _health(server.port)

    try:
        assert (await push(1))[0] == 200

        fake_apns.untrusted = True  # new connections only: drop the current one
        fake_apns.connections[0]._close()
        await asyncio.sleep(0.05)
        status, body = await push(4)
        assert status == 200  # four failures in a row: still a blip
        status, body = await push(1)
        assert status == 503
        assert body["providers"]["ios"]["problem"].startswith("TLS verify failed")
        fake_apns.untrusted = False
        assert (await push(1))[0] == 200  # the first delivered push: ready again

        fake_apns.hang = True
        status, body = await push(5)
        assert status == 503 and body["providers"]["ios"]["problem"].startswith("timeout")
        fake_apns.hang = False
        assert (await push(1))[0] == 200

        other = ec.generate_private_key(ec.SECP256R1())
        fake_apns.add_provider_key(KEY_ID, TEAM_ID, other.public_key())
        status, body = await push(1)  # refused credentials: at once
        assert status == 503
        assert "auth rejected: InvalidProviderToken" in body["providers"]["ios"]["problem"]
        assert "sending paused until" in body["providers"]["ios"]["problem"]

        await provider.close()
        await fake_apns.stop()
        provider = ApnsProvider(apns(fake_apns, test_ca, apns_key, timeout=0.3))
        await provider.start()
        status, body = await push(5)
        assert status == 503
        assert body["providers"]["ios"]["problem"].startswith("connection refused")
        assert body["providers"]["ios"]["consecutive_failures"] >= 5
    finally:
        await provider.close()
        await server.stop()


async def _health(port: int) -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_only_refusals_and_transport_failures_count_against_a_provider() -> None:
    """A refused payload or a dead token is an answer: the provider works."""
    metrics = Metrics()
    metrics.set_connected(True)
    failure = DeliveryResult(Outcome.RETRY, reason="connection refused")
    answers: list[Callable[[], DeliveryResult]] = [
        lambda: DeliveryResult(Outcome.DEAD_TOKEN, 410, "Unregistered"),
        lambda: DeliveryResult(Outcome.REJECTED, 413, "PayloadTooLarge"),
    ]
    for answer in answers:
        for _ in range(10):
            metrics.provider_result("ios", failure, 0.0)
        assert not metrics.health()[0]
        metrics.provider_result("ios", answer(), 0.0)
        assert metrics.health()[0]
