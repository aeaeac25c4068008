"""Prometheus metrics and health state of one app server.

One :class:`Metrics` object per app server, with its own registry (several
app servers, or tests, may share a process). The plugin and the delivery
engine report events through its methods; nothing here touches the network.

Metric names all start with ``slixmpp_push_``:

=========================================  =========  ==============================
name                                       type       labels
=========================================  =========  ==============================
publishes_total                            counter    dialect, outcome
provider_requests_total                    counter    app, status, reason
delivery_latency_seconds                   histogram  app (publish received → accepted)
retry_queue_depth                          gauge
retries_total                              counter    app
dead_tokens_removed_total                  counter    app
rate_limited_total                         counter
queue_full_total                           counter    (refused: max_pending reached)
commands_total                             counter    command, outcome
registrations                              gauge      app
xmpp_connected                             gauge
xmpp_reconnects_total                      counter    cause (stuck, ended, login_failed)
xmpp_ping_seconds                          gauge      (round trip of the last keepalive ping)
apns_certificate_expiry_timestamp_seconds  gauge      app
store_journal_bytes                        gauge      (compaction failing: it grows)
store_write_failures_total                 counter    (disk full, I/O errors)
ready                                      gauge      (1 when /health/ready answers 200)
active                                     gauge      (1 active, 0 a standby: another serve is)
takeovers_total                            counter    (became active after waiting as a standby)
pager_leader                               gauge      (all-active: 1 on the one escalating pages)
provider_credentials_refused               gauge      app (1 from a refusal to an answer)
all_active                                 gauge      (1: [appserver] instances = "all-active")
lease_takeovers_total                      counter    (all-active: pending notifications of
                                                      an instance whose lease ran out)
queue_oldest_seconds                       gauge      (age of the oldest pending notification)
store_seconds                              histogram  operation (a database round trip)
=========================================  =========  ==============================

With a pager (``push_notifier``), :class:`PagerMetrics` adds, in the same registry:

=========================================  =========  ==============================
pages_open                                 gauge      state (open, acked, exhausted)
page_unacknowledged_oldest_seconds         gauge      (0 when no page waits for an ack)
pages_opened_total                         counter    source, policy
page_escalations_total                     counter    policy
page_ack_seconds                           histogram  policy (paging started → ack)
pages_exhausted_total                      counter    policy (every step ran, no ack)
pages_resolved_total                       counter    policy, state (when resolved)
=========================================  =========  ==============================
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import DeliveryResult, Outcome
from .store.status import StoreStatus

PREFIX = "slixmpp_push_"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: How long people take to acknowledge a page: a human answers in seconds to an hour.
ACK_BUCKETS = (15, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 7200)
#: Database round trips (a PostgreSQL store, the all-active instances' shared state): a
#: commit on loopback takes ~0.5 ms, one over a network a few ms; seconds mean trouble.
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
#: The states an active page can be in (pages_open has a series for each, 0 included,
#: so that an alert on one of them sees 0 rather than nothing).
PAGE_STATES = ("open", "acked", "exhausted")


@dataclass(slots=True)
class ProviderHealth:
    outcome: str = "none"  # the last result: delivered, retry, rejected, dead_token
    at: float = 0.0
    reason: str = ""
    consecutive_failures: int = 0  # RETRY results since the last answer from the provider
    failing_since: float = 0.0  # wall time of the first of them
    suspended_until: float = 0.0  # the provider paused the app (credentials refused)
    # The last word from the provider was a refusal of the credentials. Unlike
    # suspended_until it stays set through a quiet night without traffic, and ends only
    # with an answer that shows the credentials work.
    credentials_refused: bool = False

    #: Failures in a row (and nothing else) that make the provider not ready.
    UNREADY_AFTER = 5

    def problem(self, now: float) -> str:
        """Why this provider makes the app server not ready ("" when it does not)."""
        if now < self.suspended_until:
            return f"{self.reason}; sending paused until {_clock(self.suspended_until)}"
        if self.consecutive_failures >= self.UNREADY_AFTER:
            return (f"{self.reason} ({self.consecutive_failures} failures in a row since "
                    f"{_clock(self.failing_since)})")
        return ""


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when))


class _Registrations(Collector):
    """Counts registrations per app at scrape time (the store keeps the counts)."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(PREFIX + "registrations", "Registered devices",
                                   labels=["app"])
        for app, count in sorted(self._counts().items()):
            family.add_metric([app], count)
        yield family


class _Store(Collector):
    """The store's journal size and write failures, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        status = self._metrics.store_status
        yield GaugeMetricFamily(PREFIX + "store_journal_bytes",
                                "Bytes in the store journal (grows while compaction fails)",
                                value=status.journal_bytes)
        yield CounterMetricFamily(PREFIX + "store_write_failures",
                                  "Store writes that failed (disk full, I/O error)",
                                  value=status.failed_writes_total)


class _Health(Collector):
    """Readiness and refused credentials as gauges, read at scrape time: an alert
    rule sees what /health/ready answers, without probing it."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        ready, _ = self._metrics.health()
        yield GaugeMetricFamily(PREFIX + "ready",
                                "1 when /health/ready answers 200 (stream up, store "
                                "writable, no provider failing or refusing credentials)",
                                value=1 if ready else 0)
        refused = GaugeMetricFamily(PREFIX + "provider_credentials_refused",
                                    "1 when the provider's last word was a refusal of the "
                                    "app's credentials (key, certificate, service account)",
                                    labels=["app"])
        for app, health in sorted(self._metrics.providers.items()):
            refused.add_metric([app], 1 if health.credentials_refused else 0)
        yield refused


@dataclass(slots=True)
class PagesNow:
    """The pager's active pages at one moment, as the gauges show them."""

    by_state: dict[str, int]  # state (PAGE_STATES) → pages
    oldest_unacknowledged: float = 0.0  # seconds since paging started; 0 when none


class _Pages(Collector):
    def __init__(self, pager: PagerMetrics) -> None:
        self._pager = pager

    def collect(self) -> Iterable[Metric]:
        now = self._pager.now()
        family = GaugeMetricFamily(PREFIX + "pages_open", "Active pages by state",
                                   labels=["state"])
        for state in PAGE_STATES:
            family.add_metric([state], now.by_state.get(state, 0))
        yield family
        yield GaugeMetricFamily(PREFIX + "page_unacknowledged_oldest_seconds",
                                "Seconds the oldest unacknowledged page has been paging "
                                "people (0 when none is)", value=now.oldest_unacknowledged)


class PagerMetrics:
    """The pager's metrics (``push_notifier``), in the registry of the app server it
    runs beside, so that one /metrics shows both. Labels stay bounded: ``policy`` is a
    configured policy, ``source`` the kind of sender (see PageEngine)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.opened = Counter(PREFIX + "pages_opened",
                              "Pages opened (a duplicate of an active page is not counted)",
                              ["source", "policy"], registry=r)
        self.escalations = Counter(PREFIX + "page_escalations",
                                   "Unacknowledged pages that went on to a further step",
                                   ["policy"], registry=r)
        self.ack_seconds = Histogram(PREFIX + "page_ack_seconds",
                                     "From paging started (opened, or paged again after an "
                                     "ack expired) to the acknowledgement", ["policy"],
                                     buckets=ACK_BUCKETS, registry=r)
        self.exhausted = Counter(PREFIX + "pages_exhausted",
                                 "Pages that ran every step and repeat without an ack "
                                 "(the final notice went out)", ["policy"], registry=r)
        self.resolved = Counter(PREFIX + "pages_resolved",
                                "Pages resolved, by the state they were in: open or "
                                "exhausted means nobody had acknowledged",
                                ["policy", "state"], registry=r)
        self.now: Callable[[], PagesNow] = lambda: PagesNow({})
        r.register(_Pages(self))

    def watch(self, now: Callable[[], PagesNow]) -> None:
        """Read the active pages from ``now`` at each scrape (the engine's snapshot)."""
        self.now = now


class Metrics:
    """The app server's counters, and the state /health reports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.publishes = Counter(PREFIX + "publishes", "Publishes answered",
                                 ["dialect", "outcome"], registry=r)
        self.provider_requests = Counter(PREFIX + "provider_requests",
                                         "Requests to APNs/FCM by result",
                                         ["app", "status", "reason"], registry=r)
        self.latency = Histogram(PREFIX + "delivery_latency_seconds",
                                 "From publish received to provider accepted", ["app"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge(PREFIX + "retry_queue_depth",
                                 "Notifications pending (retry or rate limit)", registry=r)
        self.retries = Counter(PREFIX + "retries", "Retries scheduled", ["app"], registry=r)
        self.dead_tokens = Counter(PREFIX + "dead_tokens_removed",
                                   "Registrations removed for a dead token", ["app"],
                                   registry=r)
        self.echoes_suppressed = Counter(
            PREFIX + "echoes_suppressed",
            "Publishes not pushed: the server's echo of a page already pushed", ["app"],
            registry=r)
        self.rate_limited = Counter(PREFIX + "rate_limited",
                                    "Publishes held back by the per-node rate limit",
                                    registry=r)
        self.queue_full = Counter(PREFIX + "queue_full",
                                  "Notifications refused ('wait'): [delivery] max_pending "
                                  "are pending", registry=r)
        self.commands = Counter(PREFIX + "commands", "Ad-hoc commands answered",
                                ["command", "outcome"], registry=r)
        self.connected = Gauge(PREFIX + "xmpp_connected", "1 while the XMPP stream is up",
                               registry=r)
        self.reconnects = Counter(PREFIX + "xmpp_reconnects",
                                  "New XMPP connections after a stuck stream, a stream that "
                                  "ended, or a failed login", ["cause"], registry=r)
        self.ping_seconds = Gauge(PREFIX + "xmpp_ping_seconds",
                                  "Round trip of the last keepalive ping (XEP-0199) through "
                                  "the XMPP server", registry=r)
        self.certificate_expiry = Gauge(PREFIX + "apns_certificate_expiry_timestamp_seconds",
                                        "Expiry (UNIX time) of an APNs client certificate",
                                        ["app"], registry=r)
        # With a PostgreSQL store one serve is active and the others wait (active_lock);
        # any other app server is active from the start.
        self.active = Gauge(PREFIX + "active", "1 while this instance serves; 0 while it "
                            "waits as a standby (another instance on its database is active)",
                            registry=r)
        self.active.set(1)
        self.takeovers = Counter(PREFIX + "takeovers",
                                 "Times this instance became the active one after waiting as "
                                 "a standby (the active one stopped or was lost)", registry=r)
        # All-active: one instance holds the pager lock and runs page escalations.
        self.pager_leader = Gauge(PREFIX + "pager_leader", "1 while this instance runs the "
                                  "page escalations (it holds the pager lock of its database)",
                                  registry=r)
        # Alert rules tell the two modes apart: one-active wants exactly one active
        # instance, all-active at least one (set by StreamKeeper, which connects as one).
        self.all_active = Gauge(PREFIX + "all_active",
                                "1 when this instance is one of several that serve together "
                                "([appserver] instances = \"all-active\")", registry=r)
        # With several active instances (all-active) a killed one's leases run out and
        # another takes its pending notifications: each may be sent twice (at least once).
        self.lease_takeovers = Counter(PREFIX + "lease_takeovers",
                                       "Pending notifications taken over from another "
                                       "instance whose lease ran out (it crashed or was cut "
                                       "off)", registry=r)
        self.queue_oldest = Gauge(PREFIX + "queue_oldest_seconds",
                                  "Age of the oldest notification this instance has pending "
                                  "(0 when none)", registry=r)
        self.store_seconds = Histogram(PREFIX + "store_seconds",
                                       "Database round trips by operation (commit, claim, "
                                       "keep, settle, rate, modify, renew, sweep)",
                                       ["operation"], buckets=STORE_BUCKETS, registry=r)
        self._store_children: dict[str, Any] = {}
        self.standby = ""  # while a standby: who is active instead, or why it cannot tell
        self.providers: dict[str, ProviderHealth] = {}
        # labels() costs a lookup and a lock per call: keep the children at hand.
        self._request_children: dict[tuple[str, str, str], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self._publish_children: dict[tuple[str, str], Any] = {}
        self.xmpp_connected = False
        self.xmpp_problem = "not connected yet"  # why the stream is not usable
        self.store_status = StoreStatus()  # the watched store's (watch_store)
        self._pager: PagerMetrics | None = None
        self.started = time.time()
        # auto_describe collects once at registration: everything health() reads is set.
        self.registry.register(_Store(self))
        self.registry.register(_Health(self))

    def pager(self) -> PagerMetrics:
        """The pager's metrics in this registry (created at the first call)."""
        if self._pager is None:
            self._pager = PagerMetrics(self.registry)
        return self._pager

    def watch_registrations(self, counts: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_Registrations(counts))

    def watch_store(self, status: StoreStatus) -> None:
        """Report this store's write health and journal size (``Store.status``)."""
        self.store_status = status

    # -- events -------------------------------------------------------------------------
    def published(self, dialect: str, outcome: str) -> None:
        child = self._publish_children.get((dialect, outcome))
        if child is None:
            child = self._publish_children[(dialect, outcome)] = \
                self.publishes.labels(dialect, outcome)
        child.inc()

    def command_answered(self, command: str, outcome: str) -> None:
        """``outcome``: "completed", or the error condition answered."""
        self.commands.labels(command, outcome).inc()

    def provider_result(self, app: str, result: DeliveryResult, received_at: float) -> None:
        status = str(result.status) if result.status is not None else "none"
        key = (app, status, result.reason or "")
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.provider_requests.labels(*key)
        child.inc()
        health = self.providers.setdefault(app, ProviderHealth())
        health.outcome = result.outcome.value
        health.at = time.time()
        health.reason = result.reason
        if result.outcome is Outcome.RETRY:  # no usable answer: the provider's fault
            if not health.consecutive_failures:
                health.failing_since = health.at
            health.consecutive_failures += 1
            if result.suspended:
                health.suspended_until = health.at + (result.retry_after or 0.0)
                health.credentials_refused = True
        elif result.status is not None or result.outcome is Outcome.DELIVERED:
            # Any answer (a dead token, a refused payload) shows the provider works.
            health.consecutive_failures = 0
            health.suspended_until = 0.0
            health.credentials_refused = False
        if result.outcome is Outcome.DELIVERED and received_at:
            latency = self._latency_children.get(app)
            if latency is None:
                latency = self._latency_children[app] = self.latency.labels(app)
            latency.observe(max(0.0, health.at - received_at))

    def observe_store(self, operation: str, seconds: float) -> None:
        """A database round trip of ``operation`` took ``seconds`` (the ``observe`` hook of
        the PostgreSQL store and of the shared state)."""
        child = self._store_children.get(operation)
        if child is None:
            child = self._store_children[operation] = self.store_seconds.labels(operation)
        child.observe(seconds)

    def set_connected(self, connected: bool, problem: str = "") -> None:
        """The stream is usable, or not and why (``problem`` names the cause)."""
        self.xmpp_connected = connected
        self.xmpp_problem = "" if connected else (problem or "not connected")
        self.connected.set(1 if connected else 0)

    def set_standby(self, why: str) -> None:
        """Waiting as a standby; ``why`` names the active instance (or the trouble)."""
        self.standby = why
        self.active.set(0)

    def set_active(self) -> None:
        """This instance serves (it holds its database's active lock)."""
        self.standby = ""
        self.active.set(1)

    def watch_certificate(self, app: str, cert_file: str) -> None:
        """Expose the expiry of an APNs client certificate (PEM with cert and key)."""
        from cryptography import x509

        with open(cert_file, "rb") as handle:
            cert = x509.load_pem_x509_certificate(handle.read())
        self.certificate_expiry.labels(app).set(cert.not_valid_after_utc.timestamp())

    # -- reading ---------------------------------------------------------------------------
    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def health(self) -> tuple[bool, dict[str, object]]:
        """(ready, details) for /health."""
        connected = self.xmpp_connected
        now = time.time()
        providers = {app: {"last": h.outcome, "at": h.at, "reason": h.reason,
                           "consecutive_failures": h.consecutive_failures,
                           "problem": h.problem(now)}
                     for app, h in sorted(self.providers.items())}
        store_problem = self.store_status.problem()  # not writable, or journal too long
        ready = (connected and not store_problem and not self.standby
                 and not any(p["problem"] for p in providers.values()))
        role: dict[str, object] = {"role": "standby", "standby": self.standby} \
            if self.standby else {"role": "active"}
        return ready, {
            "live": True, "ready": ready, **role, "xmpp_connected": connected,
            "xmpp": {"connected": connected, "problem": self.xmpp_problem},
            "store": {**self.store_status.details(), "problem": store_problem},
            "providers": providers, "uptime_seconds": round(time.time() - self.started, 1),
        }
