"""Fan-out: one notification to many devices (pages, notices) without per-device overhead.

The request templates must give every device exactly the request ``build_request``
gives it (a property over notifications, registrations and apps); a page through
``push_notifier`` to many devices over the real aioapns and the fake APNs must keep
every behaviour of one push at a time: dead tokens dropped, pending on failure, rate
limits, reports, metrics, one log line per fan-out rather than per device.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from e2e import APNS_APP
from e2e import apns_app as fake_apns_app
from fakes.fake_apns import FakeApns
from fakes.tls import TestCA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slixmpp import ComponentXMPP
from test_payloads import apns_app, fcm_app

import slixmpp_push  # noqa: F401  (registers the plugins)
from slixmpp_push import DeliveryPolicy, MemoryStore, Policy, Step, Submitted
from slixmpp_push.config import AppConfig
from slixmpp_push.models import Dialect, Jingle, Notification, Priority, Registration
from slixmpp_push.payloads import RequestTemplates, build_request
from slixmpp_push.providers.base import ApnsRequest

NOW = 1_700_000_000.75

# -- request templates: equal to build_request, device by device ---------------------------
short_texts = st.one_of(st.none(), st.text(max_size=40))
long_texts = st.one_of(short_texts, st.text(max_size=1500),
                       st.text(alphabet=st.characters(codec="utf-8"), min_size=600,
                               max_size=3000))
accounts = st.one_of(
    st.from_regex(r"[a-z0-9]{1,12}@example\.org", fullmatch=True),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="@"), min_size=1,
            max_size=700).map(lambda local: f"{local}@example.org"))


@st.composite
def registrations(draw: Any, app: AppConfig, dialects: st.SearchStrategy[Dialect],
                  ) -> Registration:
    dialect = draw(dialects)
    token = hashlib.sha256(draw(st.binary(max_size=8))).hexdigest()
    extra: dict[str, Any] = {}
    if dialect is Dialect.P2:
        extra = {"device_id": "android-1", "device_key": token[:40],
                 "channel_key": draw(st.one_of(st.none(), st.just(token[-40:])))}
    return Registration(node=token[:16], account=draw(accounts), domain="example.org",
                        app=app.id, token=token, dialect=dialect,
                        voip_token=draw(st.one_of(st.none(), st.just("v" + token[:20]))),
                        **extra)


@st.composite
def notifications(draw: Any) -> Notification:
    return Notification(
        message_count=draw(st.one_of(st.none(), st.integers(0, 3))),
        sender=draw(short_texts), body=draw(long_texts),
        title=draw(st.one_of(st.none(), long_texts)),  # untitled: a chat message's thread
        priority=draw(st.sampled_from(list(Priority))),
        encrypted=draw(st.one_of(st.none(), st.just("ZW5j" * 30), st.just("ZW5j" * 1200))),
        iv="aXY=", unimportant=draw(st.booleans()),
        encrypted_type=draw(st.sampled_from([None, None, "voip"])),
        jingle=draw(st.sampled_from([None, None, Jingle("sid1", media=("audio",))])),
        collapse_key=draw(st.one_of(st.none(), st.just("page:AB12"))))


apps = st.sampled_from([
    apns_app(), apns_app(include_body=True), apns_app(include_body=True, collapse="none"),
    fcm_app(), fcm_app(include_body=True, android_channel="pages"),
    fcm_app(collapse="none")])


def built(registration: Registration, notification: Notification, app: AppConfig,
          now: float) -> Any:
    try:
        return build_request(registration, notification, app, now)
    except ValueError as exc:  # a payload that cannot fit: the same refusal either way
        return ("refused", str(exc))


def templated(templates: RequestTemplates, registration: Registration, app: AppConfig,
              now: float) -> Any:
    try:
        return templates.build(registration, app, now)
    except ValueError as exc:
        return ("refused", str(exc))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), app=apps, notification=notifications())
def test_each_templated_request_is_the_one_build_request_makes(
        data: Any, app: AppConfig, notification: Notification) -> None:
    # Mostly one dialect, so that devices share a template; sometimes mixed.
    dialects = data.draw(st.one_of(st.sampled_from(list(Dialect)).map(st.just),
                                   st.just(st.sampled_from(list(Dialect)))))
    devices = data.draw(st.lists(registrations(app, dialects), min_size=1, max_size=6,
                                 unique_by=lambda r: r.account))
    templates = RequestTemplates(notification)
    for i, registration in enumerate(devices):
        now = NOW + 7.5 * i  # the fan-out goes on: each request has its own expiration
        assert templated(templates, registration, app, now) == \
            built(registration, notification, app, now)


def test_a_pages_devices_share_their_payloads_parts() -> None:
    app = apns_app(include_body=True)
    page = Notification(title="[AB12] Disk full", body="db1 at 97%", priority=Priority.CRITICAL,
                        message_count=1, sender="pager@example.org", collapse_key="page:AB12")
    templates = RequestTemplates(page)
    first, second = (templates.build(Registration(
        node=f"n{i}", account=f"user{i}@example.org", domain="example.org", app=app.id,
        token=f"{i:064x}", dialect=Dialect.TIGASE), app, NOW) for i in (1, 2))
    assert first.payload["aps"] is second.payload["aps"]  # type: ignore[union-attr]
    assert (first.payload["account"], second.payload["account"]) == (  # type: ignore[union-attr]
        "user1@example.org", "user2@example.org")


CHAT_MESSAGE = Notification(message_count=1, sender="bob@example.org", body="hi")
PAGE = Notification(title="[AB12] Disk full", body="db1 at 97%", priority=Priority.CRITICAL,
                    message_count=1, sender="pager@example.org", collapse_key="page:AB12")


@pytest.mark.parametrize("notification", [CHAT_MESSAGE, PAGE], ids=["message", "page"])
@pytest.mark.parametrize("app", [apns_app(), apns_app(collapse="none"), fcm_app(),
                                 fcm_app(collapse="none")],
                         ids=["apns", "apns-stacked", "fcm", "fcm-stacked"])
@pytest.mark.parametrize("dialect", [Dialect.TIGASE, Dialect.MONAL])
def test_threads_and_collapse_ids_stay_each_conversations_own(
        notification: Notification, app: AppConfig, dialect: Dialect) -> None:
    templates = RequestTemplates(notification)
    for i in range(3):
        registration = Registration(node=f"n{i}", account=f"user{i}@example.org",
                                    domain="example.org", app=app.id, token=f"{i:064x}",
                                    dialect=dialect)
        assert templates.build(registration, app, NOW) == \
            build_request(registration, notification, app, NOW)


def test_a_notification_changed_between_two_devices_is_built_anew() -> None:
    """A caller of ``PushAppServer.notify`` may reuse one Notification and change it."""
    app = apns_app(include_body=True)
    notification = Notification(title="first", body="one", priority=Priority.HIGH)
    templates = RequestTemplates(notification)
    for i, (title, priority) in enumerate([("first", Priority.HIGH), ("second", Priority.HIGH),
                                           ("second", Priority.CRITICAL)]):
        notification.title, notification.priority = title, priority
        registration = Registration(node=f"n{i}", account=f"user{i}@example.org",
                                    domain="example.org", app=app.id, token=f"{i:064x}",
                                    dialect=Dialect.TIGASE)
        assert templates.build(registration, app, NOW) == \
            build_request(registration, notification, app, NOW)


# -- a page to many devices, through the real aioapns and the fake APNs ---------------------
DEVICES = 40
DEAD = {5, 17, 29}  # 410 Unregistered
FAILING = {11}  # 503: kept pending, retried
THROTTLED = 23  # its rate budget spent before the page: kept pending until it allows


def device(i: int) -> Registration:
    return Registration(node=f"node{i:03d}", account=f"user{i}@example.org",
                        domain="example.org", app=APNS_APP, token=f"{i + 1:064x}",
                        dialect=Dialect.TIGASE)


@contextlib.asynccontextmanager
async def pager(fake: FakeApns, test_ca: TestCA, apns_key: Path, policy: DeliveryPolicy,
                ) -> AsyncIterator[tuple[Any, Any]]:
    """push_appserver + push_notifier on a stream that never connects: the fan-out is
    local (a page, a notice), the pushes go to the fake APNs through the real aioapns."""
    store = MemoryStore()
    await store.open()
    for i in range(DEVICES):
        await store.put(device(i))
    accounts = [device(i).account for i in range(DEVICES)]
    bot = ComponentXMPP("push.example.org", "unused", "127.0.0.1", 1)
    app = fake_apns_app(fake.endpoint, test_ca, apns_key)
    bot.register_plugin("push_appserver", {"apps": [app],
                                           "store": store, "delivery": policy})
    bot.register_plugin("push_notifier", {
        "chat": False, "groups": {"everyone": accounts},
        "policies": {"all": Policy("all", (Step(("group:everyone",), 600),))}})
    appserver, notifier = bot.plugin["push_appserver"], bot.plugin["push_notifier"]
    await notifier.start()
    try:
        yield appserver, notifier
    finally:
        await notifier.stop()
        await appserver.stop()


def counted(appserver: Any, name: str) -> float:
    return sum(sample.value for metric in appserver.metrics.registry.collect()
               for sample in metric.samples if sample.name == name)


async def test_a_page_to_many_devices_keeps_what_one_push_at_a_time_did(
        fake_apns: FakeApns, test_ca: TestCA, apns_key: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    for i in DEAD:
        fake_apns.respond(device(i).token, 410, "Unregistered")
    for i in FAILING:
        fake_apns.respond(device(i).token, 503, "ServiceUnavailable")
    policy = DeliveryPolicy(rate_burst=1, rate_interval=60, retry_base=30)
    async with pager(fake_apns, test_ca, apns_key, policy) as (appserver, notifier):
        spent = await appserver.notify(device(THROTTLED), Notification(message_count=1))
        assert spent is Submitted.DELIVERED
        before = len(fake_apns.requests)
        with caplog.at_level(logging.DEBUG, logger="slixmpp_push"):
            page, created = await notifier.page("disk", "DiskFull", "db1 at 97%",
                                                priority="critical", policy="all")
        assert created
        sent = fake_apns.requests[before:]

        # Each device got its own request, the one build_request makes for it.
        assert sorted(r.token for r in sent) == sorted(
            device(i).token for i in range(DEVICES) if i != THROTTLED)
        notification = Notification(title=f"[{page.id}] DiskFull", body="db1 at 97%",
                                    priority=Priority.CRITICAL, message_count=1,
                                    sender=notifier._own_jid, collapse_key=f"page:{page.id}")
        app = appserver.providers[APNS_APP].app
        for record in sent:
            i = int(record.token, 16) - 1
            expected = build_request(device(i), notification, app, time.time())
            assert isinstance(expected, ApnsRequest)
            assert record.body == json.loads(json.dumps(expected.payload))
            assert record.headers["apns-collapse-id"] == expected.collapse_id
            assert record.headers["apns-priority"] == str(expected.priority)
            assert abs(int(record.headers["apns-expiration"]) - expected.expiration) <= 2

        # Dead tokens dropped, the failing device and the throttled one kept pending.
        for i in DEAD:
            assert appserver.store.get(device(i).node) is None
        pending = appserver.store.table("pending")
        assert set(pending) == {device(i).node for i in FAILING} | {device(THROTTLED).node}
        assert all(appserver.store.get(device(i).node) is not None
                   for i in range(DEVICES) if i not in DEAD)

        # Everyone reached is on the page, once (in the order they were reached).
        assert sorted(page.paged) == sorted(device(i).account for i in range(DEVICES))
        sends = [detail for _, event, detail in page.history if event == "sent"]
        assert sends == [f"page: {DEVICES - len(DEAD)} push(es), 0 chat(s)"]

        # Counted as before: one provider result per request, one dead token per token.
        assert counted(appserver, "slixmpp_push_provider_requests_total") == len(sent) + 1
        assert counted(appserver, "slixmpp_push_dead_tokens_removed_total") == len(DEAD)
        assert appserver.delivery.stats["provider_delivered"] == \
            DEVICES - len(DEAD) - len(FAILING)  # the throttled device's earlier push counts

        # No log line per delivered device: only the dead tokens' and the outage's own.
        lines = [r for r in caplog.records if r.levelno >= logging.INFO
                 and r.name in ("slixmpp_push.appserver.delivery",
                                "slixmpp_push.notifier.plugin")]
        assert lines == []


async def test_pushes_that_fail_in_a_fan_out_are_one_log_line(
        fake_apns: FakeApns, test_ca: TestCA, apns_key: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    fake_apns.set_outage(503, "ServiceUnavailable")
    policy = DeliveryPolicy(rate_interval=0, retry_base=30, max_pending=2)
    async with pager(fake_apns, test_ca, apns_key, policy) as (appserver, notifier):
        with caplog.at_level(logging.INFO, logger="slixmpp_push"):
            report = await notifier.notify("group:everyone", "DiskFull", priority="critical")
        # Two kept for a retry (the queue's bound), the others refused, not lost quietly.
        assert sorted(report.pushes.values()) == [Submitted.QUEUED, Submitted.QUEUED]
        assert len(appserver.store.table("pending")) == 2
        failures = [r for r in caplog.records if r.name == "slixmpp_push.notifier.plugin"]
        assert len(failures) == 1
        assert failures[0].getMessage().startswith(f"push to {DEVICES - 2} device(s) failed:")
        assert "QueueFull" not in failures[0].getMessage()  # the message, not the type
        assert "and 35 more" in failures[0].getMessage()


async def test_a_refusal_of_every_push_is_one_log_line_not_one_per_device(
        fake_apns: FakeApns, test_ca: TestCA, apns_key: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    fake_apns.set_outage(400, "BadTopic")  # Apple refuses the request itself, for good
    async with pager(fake_apns, test_ca, apns_key, DeliveryPolicy(rate_interval=0)) as (
            appserver, notifier):
        with caplog.at_level(logging.INFO, logger="slixmpp_push"):
            report = await notifier.notify("group:everyone", "DiskFull", priority="critical")
        assert set(report.pushes.values()) == {Submitted.REJECTED}
        assert len(report.pushes) == DEVICES and report.delivered == 0
        assert appserver.delivery.stats["provider_rejected"] == DEVICES
        refused = [r.getMessage() for r in caplog.records
                   if r.name == "slixmpp_push.appserver.delivery"]
        assert len(refused) == 1 and "rejected the notification: 400 BadTopic" in refused[0]
        assert appserver.store.table("pending") == {}  # refused for good: nothing kept


async def test_a_page_to_a_thousand_devices_is_accepted_over_one_connection(
        fake_apns: FakeApns, test_ca: TestCA, apns_key: Path) -> None:
    """FAN_OUT requests in flight on one HTTP/2 connection carry more DATA than the
    server's 64 KiB window until it returns credit (an h2 server returns it once half
    the window is used): the client must wait for the credit, not fail the request
    (h2's FlowControlError, a retry a second later for every such device)."""
    devices = 1000
    store = MemoryStore()
    await store.open()
    for i in range(devices):
        await store.put(device(i))
    app = fake_apns_app(fake_apns.endpoint, test_ca, apns_key)
    app.include_body = True  # some 600 bytes a request: 200 of them fill the window twice
    bot = ComponentXMPP("push.example.org", "unused", "127.0.0.1", 1)
    bot.register_plugin("push_appserver", {"apps": [app], "store": store,
                                           "delivery": DeliveryPolicy(retry_base=30)})
    bot.register_plugin("push_notifier", {"chat": False})
    appserver, notifier = bot.plugin["push_appserver"], bot.plugin["push_notifier"]
    await notifier.start()
    try:
        report = await notifier.notify([device(i).account for i in range(devices)],
                                       "DiskFull", "x" * 200, priority="critical")
        assert sorted(report.pushes.values()) == [Submitted.DELIVERED] * devices
        assert appserver.store.table("pending") == {}
        assert len(fake_apns.requests) == devices
        assert len(fake_apns.connections) == 1
    finally:
        await notifier.stop()
        await appserver.stop()
