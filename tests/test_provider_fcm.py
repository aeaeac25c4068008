"""FcmProvider: real firebase-admin (httpx, HTTP/2, TLS) against a protocol-faithful fake FCM.

Nothing in the provider is mocked: messages are encoded by firebase-admin,
travel over TLS + HTTP/2 to :class:`fakes.fake_fcm.FakeFcm`, which records them
and answers with FCM's real error bodies. Credentials are google-auth objects
with fixed tokens (no OAuth traffic), except in the service-account tests,
where a real key file gets its tokens from the fake's OAuth endpoint.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import json
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Self

import firebase_admin
import google.auth.credentials
import google.auth.exceptions
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fakes.fake_fcm import DROP, FakeFcm  # pytest puts tests/ on sys.path (no __init__.py)
from fakes.tls import TestCA

from slixmpp_push.config import AppConfig
from slixmpp_push.errors import ConfigError, DeliveryResult, MissingDependency, Outcome
from slixmpp_push.providers import create_provider
from slixmpp_push.providers.base import FcmRequest
from slixmpp_push.providers.fcm import FcmProvider

PROJECT = "stork-push"
ACCESS_TOKEN = "ya29.test-access-token"
DEVICE = "fGcM-t0ken:APA91b" + "x" * 140  # shaped like a registration token


class FixedToken(google.auth.credentials.Credentials):
    """A google-auth credential whose token never needs an OAuth round trip.

    ``refresh`` switches to ``next_token`` (if any) and records the thread it
    ran in, so tests can see refreshes happen off the event loop.
    """

    def __init__(
        self,
        token: str | None = ACCESS_TOKEN,
        *,
        next_token: str | None = None,
        expires_in: float | None = None,
        refresh_delay: float = 0.0,
        refresh_error: Exception | None = None,
    ) -> None:
        super().__init__()
        self.token = token
        if expires_in is not None:
            self.expiry = datetime.datetime.now(datetime.UTC).replace(
                tzinfo=None
            ) + datetime.timedelta(seconds=expires_in)
        self.next_token = next_token
        self.refresh_delay = refresh_delay
        self.refresh_error = refresh_error
        self.refresh_threads: list[int] = []

    def refresh(self, request: Any) -> None:
        self.refresh_threads.append(threading.get_ident())
        time.sleep(self.refresh_delay)
        if self.refresh_error is not None:
            raise self.refresh_error
        self.token = self.next_token or self.token
        self.expiry = None


# fixtures and helpers


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


@pytest.fixture
async def fake(ca: TestCA) -> AsyncIterator[FakeFcm]:
    async with FakeFcm(ca=ca, access_token=ACCESS_TOKEN) as server:
        yield server


def fcm_app(fake: FakeFcm, **overrides: Any) -> AppConfig:
    settings: dict[str, Any] = {
        "id": "fcm-xmpp-api",
        "type": "fcm",
        "project_id": PROJECT,
        "endpoint": fake.base_url,
        "ca_file": str(fake.ca_file),
        "timeout": 5.0,
    }
    settings.update(overrides)
    return AppConfig(**settings)


async def started(app: AppConfig, credential: Any = None) -> FcmProvider:
    provider = FcmProvider(app, credential=credential or FixedToken())
    await provider.start()
    return provider


def wake(token: str = DEVICE, **overrides: Any) -> FcmRequest:
    fields: dict[str, Any] = {
        "token": token,
        "data": {"type": "push", "count": "1"},
        "priority": "high",
        "ttl": 3600,
    }
    fields.update(overrides)
    return FcmRequest(**fields)


def service_account_file(tmp_path: Path, fake: FakeFcm, project: str = PROJECT) -> Path:
    """A real service-account key file whose token_uri is the fake's OAuth endpoint."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": f"firebase-adminsdk@{project}.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": fake.token_url,
    }
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps(info))
    return path


class LoopLag:
    """Measures the longest stall of the event loop while it runs."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, time.monotonic() - before - 0.005)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


# delivery: what arrives at Google


async def test_data_message_arrives_with_exact_json(fake: FakeFcm) -> None:
    provider = await started(fcm_app(fake))
    request = wake(data={"type": "push", "node": "n1"}, ttl=86_417, collapse_key="chat-42")
    try:
        result = await provider.send(request)
    finally:
        await provider.close()

    [record] = await fake.wait_for(1)
    assert record.method == "POST"
    assert record.path == f"/v1/projects/{PROJECT}/messages:send"
    assert record.project == PROJECT
    assert record.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert record.body == {  # no validate_only: a real send, not the service's dry run
        "message": {
            "token": DEVICE,
            "data": {"type": "push", "node": "n1"},
            "android": {"priority": "high", "ttl": "86417s", "collapse_key": "chat-42"},
        }
    }
    assert record.http_version == "2"
    assert fake.alpn_selected == ["h2"]
    assert result == DeliveryResult(
        Outcome.DELIVERED, status=200, message_id=f"projects/{PROJECT}/messages/0:1"
    )


async def test_visible_notification_only_when_title_or_body(fake: FakeFcm) -> None:
    provider = await started(fcm_app(fake, android_channel="alerts"))
    try:
        page = await provider.send(wake(title="Disk full", body="db1: 99 %", ttl=0))
        own_channel = await provider.send(wake(body="b", channel_id="pages", priority="normal"))
        silent = await provider.send(wake())
    finally:
        await provider.close()

    records = await fake.wait_for(3)
    assert [page.outcome, own_channel.outcome, silent.outcome] == [Outcome.DELIVERED] * 3
    assert records[0].message["android"] == {
        "priority": "high",
        "ttl": "0s",
        "notification": {"title": "Disk full", "body": "db1: 99 %", "channel_id": "alerts"},
    }
    assert records[1].message["android"]["notification"] == {"body": "b", "channel_id": "pages"}
    assert records[1].message["android"]["priority"] == "normal"
    assert "notification" not in records[2].message["android"]


async def test_http11_fallback_when_server_offers_no_h2(ca: TestCA) -> None:
    async with FakeFcm(ca=ca, alpn=("http/1.1",)) as fake:
        provider = await started(fcm_app(fake))
        try:
            result = await provider.send(wake())
        finally:
            await provider.close()
        [record] = await fake.wait_for(1)
    assert result.outcome is Outcome.DELIVERED
    assert record.http_version == "1.1"


# outcomes: FCM errors become results, never exceptions


@pytest.mark.parametrize(
    ("code", "retry_after", "expected"),
    [
        ("UNREGISTERED", None, DeliveryResult(Outcome.DEAD_TOKEN, 404, "UNREGISTERED")),
        ("SENDER_ID_MISMATCH", None, DeliveryResult(Outcome.DEAD_TOKEN, 403, "SENDER_ID_MISMATCH")),
        ("INVALID_ARGUMENT", None, DeliveryResult(Outcome.REJECTED, 400, "INVALID_ARGUMENT")),
        (
            "THIRD_PARTY_AUTH_ERROR",
            None,
            DeliveryResult(Outcome.REJECTED, 401, "THIRD_PARTY_AUTH_ERROR"),
        ),
        ("UNAVAILABLE", "7", DeliveryResult(Outcome.RETRY, 503, "UNAVAILABLE", retry_after=7.0)),
        ("UNAVAILABLE", None, DeliveryResult(Outcome.RETRY, 503, "UNAVAILABLE")),
        ("INTERNAL", None, DeliveryResult(Outcome.RETRY, 500, "INTERNAL")),
        (
            "QUOTA_EXCEEDED",
            "120",
            DeliveryResult(Outcome.RETRY, 429, "QUOTA_EXCEEDED", retry_after=120.0),
        ),
        (  # no Retry-After: FCM asks for at least a minute
            "QUOTA_EXCEEDED",
            None,
            DeliveryResult(Outcome.RETRY, 429, "QUOTA_EXCEEDED", retry_after=60.0),
        ),
    ],
)
async def test_fcm_errors_are_classified(
    fake: FakeFcm, code: str, retry_after: str | None, expected: DeliveryResult
) -> None:
    provider = await started(fcm_app(fake))
    fake.fail(DEVICE, code, retry_after=retry_after)
    try:
        started_at = time.monotonic()
        result = await provider.send(wake())
        elapsed = time.monotonic() - started_at
    finally:
        await provider.close()
    assert result == expected
    # Exactly one request, answered at once: no SDK-internal retries of 500/503
    # (those would ignore Retry-After and burn ~7 s of the deadline).
    assert len(fake.requests) == 1
    assert elapsed < 2.0


async def test_retry_after_http_date(fake: FakeFcm) -> None:
    provider = await started(fcm_app(fake))
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=90)
    fake.fail(DEVICE, "UNAVAILABLE", retry_after=format_datetime(when, usegmt=True))
    try:
        result = await provider.send(wake())
    finally:
        await provider.close()
    assert result.outcome is Outcome.RETRY
    assert result.retry_after is not None and 85 <= result.retry_after <= 91


async def test_invalid_message_rejected_without_failing_the_batch(fake: FakeFcm) -> None:
    provider = await started(fcm_app(fake))
    bad = wake("bad-token-123456", data={"count": 1})  # not a string: FCM would refuse it
    try:
        results = await provider.send_many([wake("good-token-1"), bad, wake("good-token-2")])
    finally:
        await provider.close()
    assert [r.outcome for r in results] == [Outcome.DELIVERED, Outcome.REJECTED, Outcome.DELIVERED]
    assert results[1].reason.startswith("INVALID_MESSAGE")
    assert sorted(r.token or "" for r in fake.requests) == ["good-token-1", "good-token-2"]


async def test_connection_dropped_is_retry_then_recovers(fake: FakeFcm) -> None:
    provider = await started(fcm_app(fake))
    try:
        fake.set_outage(DROP)
        dropped = await provider.send(wake())
        fake.set_outage(None)
        after = await provider.send(wake())
    finally:
        await provider.close()
    assert dropped.outcome is Outcome.RETRY
    assert dropped.reason in ("connection closed", "connection reset")
    assert after.outcome is Outcome.DELIVERED
    # The lost-connection failure was resent once on a new connection, then given up.
    assert [r.status for r in fake.requests] == [0, 0, 200]
    assert fake.connections >= 2


async def test_server_down_is_retry(ca: TestCA) -> None:
    async with FakeFcm(ca=ca) as fake:
        app = fcm_app(fake)
    # The fake is gone: nothing listens on that port any more.
    provider = await started(app)
    try:
        result = await provider.send(wake())
    finally:
        await provider.close()
    assert result.outcome is Outcome.RETRY
    assert result.reason == "connection refused"  # not firebase-admin's "UNAVAILABLE"


async def test_timeout_is_retry_and_connection_stays_usable(fake: FakeFcm) -> None:
    provider = await started(fcm_app(fake, timeout=0.5))
    fake.delay("slow-token-0001", 3.0)
    try:
        started_at = time.monotonic()
        slow = await provider.send(wake("slow-token-0001"))
        elapsed = time.monotonic() - started_at
        fine = await provider.send(wake())
    finally:
        await provider.close()
    assert slow.outcome is Outcome.RETRY
    assert slow.reason == "timeout"
    assert elapsed < 2.5
    assert fine.outcome is Outcome.DELIVERED


# several projects, fan-out


async def test_two_projects_at_once(ca: TestCA) -> None:
    async with FakeFcm(ca=ca, projects=["proj-a", "proj-b"]) as fake:
        a = await started(fcm_app(fake, id="fcm-a", project_id="proj-a"), FixedToken("token-of-a"))
        b = await started(fcm_app(fake, id="fcm-b", project_id="proj-b"), FixedToken("token-of-b"))
        try:
            results = await asyncio.gather(
                *(p.send(wake(f"{p.id}-device-{i}")) for i in range(5) for p in (a, b))
            )
        finally:
            await a.close()
            await b.close()
        records = await fake.wait_for(10)
    assert all(r.outcome is Outcome.DELIVERED for r in results)
    for record in records:
        project = "proj-a" if record.token and record.token.startswith("fcm-a") else "proj-b"
        assert record.project == project
        assert record.bearer == f"token-of-{project[-1]}"


async def test_send_many_1200_arrive_completely(fake: FakeFcm) -> None:
    provider = await started(fcm_app(fake))
    requests = [wake(f"device-{i:05d}", data={"n": str(i)}) for i in range(1200)]
    try:
        started_at = time.monotonic()
        results = await provider.send_many(requests)
        elapsed = time.monotonic() - started_at
    finally:
        await provider.close()

    records = await fake.wait_for(1200)
    print(
        f"\nsend_many(1200): {elapsed:.2f} s, {1200 / elapsed:.0f} msg/s, "
        f"{fake.connections} connection(s), max {fake.max_in_flight} in flight"
    )
    assert len(records) == 1200
    assert sorted(r.token or "" for r in records) == [r.token for r in requests]
    assert all(r.message["data"] == {"n": str(int(r.message["token"][-5:]))} for r in records)
    assert all(r.outcome is Outcome.DELIVERED for r in results)
    assert len({r.message_id for r in results}) == 1200
    assert fake.connections == 1  # one multiplexed HTTP/2 connection
    assert fake.max_in_flight <= fake.max_concurrent_streams


async def test_send_each_async_sends_one_request_per_message_concurrently(ca: TestCA) -> None:
    async with FakeFcm(ca=ca, latency=0.3) as fake:
        provider = await started(fcm_app(fake))
        fake.fail("dead-device-0001", "UNREGISTERED")
        requests = [wake(f"device-{i:03d}") for i in range(49)] + [wake("dead-device-0001")]
        try:
            started_at = time.monotonic()
            results = await provider.send_many(requests)
            elapsed = time.monotonic() - started_at
        finally:
            await provider.close()
    assert len(fake.requests) == 50  # one HTTP request per message
    assert fake.max_in_flight == 50  # all at once, not one after the other
    assert elapsed < 3.0  # 50 x 0.3 s would be 15 s sequentially
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 49 + [Outcome.DEAD_TOKEN]


# credentials and tokens


async def test_401_refreshes_token_in_a_thread_and_resends(fake: FakeFcm) -> None:
    credential = FixedToken("stale-token", next_token=ACCESS_TOKEN)
    provider = await started(fcm_app(fake), credential)
    try:
        result = await provider.send(wake())
    finally:
        await provider.close()
    assert result.outcome is Outcome.DELIVERED
    assert [r.status for r in fake.requests] == [401, 200]
    assert [r.bearer for r in fake.requests] == ["stale-token", ACCESS_TOKEN]
    assert credential.refresh_threads and threading.get_ident() not in credential.refresh_threads


async def test_401_storm_shares_one_refresh(fake: FakeFcm) -> None:
    credential = FixedToken("stale-token", next_token=ACCESS_TOKEN, refresh_delay=0.1)
    provider = await started(fcm_app(fake), credential)
    try:
        results = await provider.send_many([wake(f"device-{i:03d}") for i in range(40)])
    finally:
        await provider.close()
    assert all(r.outcome is Outcome.DELIVERED for r in results)
    assert len(credential.refresh_threads) == 1
    assert sorted(r.status for r in fake.requests) == [200] * 40 + [401] * 40


async def test_missing_token_fetched_off_the_loop(fake: FakeFcm) -> None:
    credential = FixedToken(None, next_token=ACCESS_TOKEN, refresh_delay=0.3)
    async with LoopLag() as lag:
        provider = await started(fcm_app(fake), credential)
        try:
            result = await provider.send(wake())
        finally:
            await provider.close()
    assert result.outcome is Outcome.DELIVERED
    assert len(credential.refresh_threads) == 1  # start() and send() shared one refresh
    assert threading.get_ident() not in credential.refresh_threads
    assert lag.worst < 0.2


async def test_token_near_expiry_refreshed_in_background(fake: FakeFcm) -> None:
    credential = FixedToken(
        ACCESS_TOKEN, next_token=ACCESS_TOKEN, expires_in=120, refresh_delay=0.5
    )
    provider = await started(fcm_app(fake), credential)
    try:
        started_at = time.monotonic()
        result = await provider.send(wake())
        elapsed = time.monotonic() - started_at
        for _ in range(100):
            if credential.expiry is None:
                break
            await asyncio.sleep(0.02)
    finally:
        await provider.close()
    assert result.outcome is Outcome.DELIVERED
    assert elapsed < 0.4  # did not wait for the 0.5 s refresh
    assert len(credential.refresh_threads) == 1
    assert credential.expiry is None  # the background refresh completed


@pytest.mark.parametrize(
    ("error", "reason", "suspended"),
    [
        (  # the account's key refused: the app pauses (test_provider_semantics)
            google.auth.exceptions.RefreshError("invalid_grant: Invalid JWT Signature."),
            "auth rejected: service account refused",
            True,
        ),
        (google.auth.exceptions.TransportError("connection refused"), "access token", False),
        (google.auth.exceptions.RefreshError("backend error", retryable=True), "access token",
         False),
    ],
)
async def test_token_refresh_failure_is_a_result(
    fake: FakeFcm, error: Exception, reason: str, suspended: bool
) -> None:
    credential = FixedToken(None, refresh_error=error)
    provider = await started(fcm_app(fake), credential)  # starts even without a token
    try:
        result = await provider.send(wake())
    finally:
        await provider.close()
    assert result.outcome is Outcome.RETRY  # the notification is kept
    assert result.reason.startswith(reason)
    assert result.suspended is suspended
    assert fake.requests == []


async def test_service_account_file_end_to_end(
    fake: FakeFcm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real key file: JWT grant to the (fake) OAuth endpoint, in a thread, then FCM."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_file))  # google-auth uses requests
    fake.issued_token = ACCESS_TOKEN
    fake.token_latency = 0.3
    app = fcm_app(
        fake, project_id=None, service_account_file=str(service_account_file(tmp_path, fake))
    )
    provider = create_provider(app)
    assert isinstance(provider, FcmProvider)
    async with LoopLag() as lag:
        await provider.start()
        try:
            result = await provider.send(wake())
        finally:
            await provider.close()
    assert provider.project_id == PROJECT  # from the key file
    assert result.outcome is Outcome.DELIVERED
    [grant] = fake.token_requests
    assert (
        grant.body["claims"]["aud"] == "https://oauth2.googleapis.com/token"
    )  # what Google checks
    assert grant.body["claims"]["iss"] == f"firebase-adminsdk@{PROJECT}.iam.gserviceaccount.com"
    assert "https://www.googleapis.com/auth/cloud-platform" in grant.body["claims"]["scope"].split()
    [record] = fake.requests
    assert record.bearer == ACCESS_TOKEN
    assert record.path == f"/v1/projects/{PROJECT}/messages:send"
    # The fake runs in this very loop: a refresh blocking the loop would deadlock.
    assert lag.worst < 0.2


# configuration and dependencies


async def test_missing_firebase_admin_is_reported(
    fake: FakeFcm, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = fcm_app(fake)
    provider = FcmProvider(app, credential=FixedToken())  # built while it is still importable
    monkeypatch.setitem(sys.modules, "firebase_admin", None)
    with pytest.raises(MissingDependency) as excinfo:
        await provider.start()
    assert excinfo.value.package == "firebase-admin"
    assert excinfo.value.extra == "fcm"
    assert "slixmpp-push[fcm]" in str(excinfo.value)
    assert "fcm-xmpp-api" in str(excinfo.value)
    with pytest.raises(MissingDependency):  # and already when the config is loaded
        create_provider(app)


async def test_config_errors_name_the_key(fake: FakeFcm, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as no_file:
        await FcmProvider(fcm_app(fake)).start()
    assert no_file.value.key == "apps.fcm-xmpp-api.service_account_file"

    missing = fcm_app(fake, service_account_file=str(tmp_path / "nope.json"))
    with pytest.raises(ConfigError) as unreadable:
        await FcmProvider(missing).start()
    assert unreadable.value.key == "apps.fcm-xmpp-api.service_account_file"

    with pytest.raises(ConfigError) as no_project:
        await FcmProvider(fcm_app(fake, project_id=None), credential=FixedToken()).start()
    assert no_project.value.key == "apps.fcm-xmpp-api.project_id"


async def test_close_is_clean_and_idempotent(fake: FakeFcm) -> None:
    await FcmProvider(fcm_app(fake), credential=FixedToken()).close()  # never started
    provider = await started(fcm_app(fake))
    assert (await provider.send(wake())).ok
    name = provider._fb_app.name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await provider.close()
        await provider.close()
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    with pytest.raises(ValueError):
        firebase_admin.get_app(name)  # the named App is gone
    after = await provider.send(wake())
    assert after.outcome is Outcome.RETRY
    assert len(fake.requests) == 1


def test_a_connection_ended_mid_read_is_named_closed_not_by_class() -> None:
    """httpx raises ReadError for an EOF with no OS error under it (a dropped peer)."""
    import httpx

    from slixmpp_push.providers.base import CLOSED, RESET, transport_reason

    assert transport_reason(httpx.ReadError("")) == CLOSED
    assert transport_reason(httpx.WriteError("")) == CLOSED
    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError as cause:
            raise httpx.ReadError("reset") from cause
    except httpx.ReadError as wrapped:
        assert transport_reason(wrapped) == RESET  # the OS error underneath wins
