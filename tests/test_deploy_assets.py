"""The monitoring assets in docs/deploy/: alert rules promtool accepts and whose unit
tests pass, a Grafana dashboard that imports, and in both only metrics (and labels)
that the app server and the pager really expose, so that renaming one fails here.

promtool comes from Debian's ``prometheus`` package, unpacked alone by
``.ci/install-promtool.sh`` into ``$SLIXMPP_PUSH_SERVERS/prometheus/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devservers import servers_prefix
from prometheus_client.parser import text_string_to_metric_families
from test_fault_stream import until
from test_metrics import fetch_metrics

from slixmpp_push import DeliveryResult, MemoryStore, Outcome, Priority
from slixmpp_push.metrics import Metrics
from slixmpp_push.notifier import Page, PageEngine, Policy, Step

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy"
RULES = DEPLOY / "prometheus-rules.yml"
RULE_TESTS = DEPLOY / "prometheus-rules.test.yml"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
INSTALL_SCRIPT = ".ci/install-promtool.sh"

METRIC = re.compile(r"\bslixmpp_push_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(slixmpp_push_[a-z0-9_]+)\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
#: Labels every series has from its scrape target, or histograms from their buckets.
TARGET_LABELS = frozenset({"job", "instance", "le"})
#: Grafana's variables, replaced by what they stand for when promtool checks a query.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$instance": ".*"}


def promtool() -> str:
    """The private promtool, else one on PATH; missing: skipped here, failed in CI."""
    private = servers_prefix() / "prometheus" / "promtool"
    if os.access(private, os.X_OK):
        return str(private)
    found = shutil.which("promtool")
    if found:
        return found
    reason = (f"promtool is missing: run {INSTALL_SCRIPT}, which unpacks it from Debian's "
              f"prometheus package into {private.parent}")
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def run_promtool(*args: str, cwd: Path = DEPLOY) -> str:
    done = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def rule_blocks() -> dict[str, str]:
    """Each alert of the rules file: its name → its text (expr and annotations)."""
    text = RULES.read_text()
    parts = re.split(r"^\s*- alert:\s*", text, flags=re.MULTILINE)[1:]
    return {part.split(None, 1)[0]: part for part in parts}


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in document["panels"]:
        yield panel
        yield from panel.get("panels", ())  # a collapsed row holds its panels


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in panels(dashboard())
            for target in panel.get("targets", ())]


class Recorder:
    def __init__(self) -> None:
        self.sends = 0

    async def __call__(self, page: Page, targets: tuple[str, ...], reason: str) -> None:
        self.sends += 1


async def busy_metrics() -> Metrics:
    """An app server's and a pager's metrics with every labelled series present, the
    pager's through the real engine: the exposition then shows every label name."""
    metrics = Metrics()
    store = MemoryStore()
    await store.open()
    metrics.watch_registrations(lambda: {"ios": 3})
    metrics.set_connected(True)
    metrics.published("tigase", "result")
    metrics.provider_result("ios", DeliveryResult(Outcome.DELIVERED, 200), time.time())
    metrics.retries.labels("ios").inc()
    metrics.dead_tokens.labels("ios").inc()
    metrics.echoes_suppressed.labels("ios").inc()
    metrics.command_answered("register-device", "completed")
    metrics.reconnects.labels("stuck").inc()
    metrics.certificate_expiry.labels("ios").set(time.time() + 86400)
    metrics.observe_store("commit", 0.002)  # what the PostgreSQL store reports per commit
    policy = Policy("oncall", (Step(("a@x",), 0.01),), repeat=2, final=("b@x",))
    sent = Recorder()
    engine = PageEngine(store, {"oncall": policy}, sent, metrics.pager())
    acked, _ = await engine.open("k1", "t", "", Priority.HIGH, "oncall", "alertmanager")
    await engine.ack(acked, "a@x")
    exhausted, _ = await engine.open("k2", "t", "", Priority.HIGH, "oncall", "notify")
    await until(lambda: sent.sends == 4, "an escalation and the final notice")
    await engine.resolve(exhausted, "a@x")
    await engine.stop()
    return metrics


async def exposed() -> dict[str, set[str]]:
    """Every sample name /metrics can show → the label names it has."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(await fetch_metrics(await busy_metrics())):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                    "summary": ("_count", "_sum")}.get(family.type, ("",))
        for suffix in suffixes:
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    checked = run_promtool("check", "rules", RULES.name)
    assert f"SUCCESS: {len(rule_blocks())} rules found" in checked, checked
    assert "SUCCESS" in run_promtool("test", "rules", RULE_TESTS.name)
    tested = set(re.findall(r"alertname:\s*(\w+)", RULE_TESTS.read_text()))
    assert tested and tested <= set(rule_blocks())


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses rule expressions: each query, its Grafana variables replaced,
    becomes one recording rule of a file that must pass check rules."""
    rules = []
    for number, query in enumerate(dashboard_queries()):
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        assert "$" not in query, f"an unknown Grafana variable in {query}"
        rules.append({"record": f"dashboard:query_{number}", "expr": query})
    checked = tmp_path / "dashboard-queries.yml"  # JSON is YAML
    checked.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run_promtool("check", "rules", str(checked))


async def test_the_assets_use_only_exposed_metrics_and_labels() -> None:
    names = await exposed()
    units = [*rule_blocks().values(), *dashboard_queries()]
    used = {name for unit in units for name in METRIC.findall(unit)}
    # Every part is watched: the app server's, the database's and the pager's metrics.
    assert {"slixmpp_push_xmpp_connected", "slixmpp_push_pages_open",
            "slixmpp_push_page_ack_seconds_bucket", "slixmpp_push_store_seconds_bucket",
            "slixmpp_push_queue_oldest_seconds", "slixmpp_push_lease_takeovers_total",
            "slixmpp_push_all_active"} <= used
    assert used - set(names) == set(), f"not exposed: {sorted(used - set(names))}"
    for unit in units:
        for name, matchers in SELECTOR.findall(unit):
            unknown = set(MATCHER_LABEL.findall(matchers)) - names[name] - TARGET_LABELS
            assert not unknown, f"{name} has no label {sorted(unknown)}: {unit}"
        # A label grouped by must exist on some metric of the same expression.
        available = set().union(*(names[n] for n in METRIC.findall(unit))) | TARGET_LABELS
        for grouping in GROUPING.findall(unit):
            labels = {label.strip() for label in grouping.split(",") if label.strip()}
            assert labels <= available, f"no metric has {sorted(labels - available)}: {unit}"


def test_the_dashboard_imports_into_grafana() -> None:
    """What Grafana's import needs: the datasource chosen at import (a datasource
    variable), panels with unique ids on a 24-column grid without overlaps, and a
    query with its own refId in each panel."""
    document = dashboard()
    assert document["uid"] == "slixmpp-push" and document["title"]
    assert isinstance(document["schemaVersion"], int)
    variables = {v["name"]: v for v in document["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["instance"]["datasource"]["uid"] == "${DS_PROMETHEUS}"
    ids: set[int] = set()
    cells: set[tuple[int, int]] = set()
    for panel in panels(document):
        assert panel["id"] not in ids, f"panel id {panel['id']} twice"
        ids.add(panel["id"])
        box = panel["gridPos"]
        assert box["x"] >= 0 and box["w"] > 0 and box["x"] + box["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(box["x"], box["x"] + box["w"])
                for y in range(box["y"], box["y"] + box["h"])}
        assert not area & cells, f"{panel['title']!r} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("stat", "timeseries"), panel["type"]
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        targets = panel["targets"]
        assert targets, f"{panel['title']!r} has no query"
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"] == panel["datasource"] and target["expr"]
            assert 'instance=~"$instance"' in target["expr"], target["expr"]
