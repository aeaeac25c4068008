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
registrations                              gauge      app
xmpp_connected                             gauge
apns_certificate_expiry_timestamp_seconds  gauge      app
=========================================  =========  ==============================
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .errors import DeliveryResult, Outcome

PREFIX = "slixmpp_push_"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass(slots=True)
class ProviderHealth:
    outcome: str = "none"  # the last result: delivered, retry, rejected, dead_token
    at: float = 0.0
    reason: str = ""
    consecutive_failures: int = 0


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
        self.connected = Gauge(PREFIX + "xmpp_connected", "1 while the XMPP stream is up",
                               registry=r)
        self.certificate_expiry = Gauge(PREFIX + "apns_certificate_expiry_timestamp_seconds",
                                        "Expiry (UNIX time) of an APNs client certificate",
                                        ["app"], registry=r)
        self.providers: dict[str, ProviderHealth] = {}
        # labels() costs a lookup and a lock per call: keep the children at hand.
        self._request_children: dict[tuple[str, str, str], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self.xmpp_connected = False
        self.store_writable = True
        self.store_error = ""
        self.started = time.time()

    def watch_registrations(self, counts: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_Registrations(counts))

    # -- events -------------------------------------------------------------------------
    def published(self, dialect: str, outcome: str) -> None:
        self.publishes.labels(dialect, outcome).inc()

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
        if result.outcome is Outcome.DELIVERED:
            health.consecutive_failures = 0
            if received_at:
                latency = self._latency_children.get(app)
                if latency is None:
                    latency = self._latency_children[app] = self.latency.labels(app)
                latency.observe(max(0.0, health.at - received_at))
        elif result.outcome in (Outcome.RETRY, Outcome.REJECTED):
            health.consecutive_failures += 1

    def set_connected(self, connected: bool) -> None:
        self.xmpp_connected = connected
        self.connected.set(1 if connected else 0)

    def store_result(self, ok: bool, error: str = "") -> None:
        self.store_writable = ok
        self.store_error = error

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
        providers = {app: {"last": h.outcome, "at": h.at, "reason": h.reason,
                           "consecutive_failures": h.consecutive_failures}
                     for app, h in sorted(self.providers.items())}
        ready = connected and self.store_writable
        return ready, {
            "live": True, "ready": ready, "xmpp_connected": connected,
            "store": {"writable": self.store_writable, "error": self.store_error},
            "providers": providers, "uptime_seconds": round(time.time() - self.started, 1),
        }
