"""The alert receiver: Alertmanager and /notify parsing, auth, limits, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from slixmpp import ClientXMPP

import slixmpp_push  # noqa: F401
from slixmpp_push import MemoryStore, Policy, Priority, Step
from slixmpp_push.errors import StoreError
from slixmpp_push.notifier.ingest import (
    AlertReceiver,
    BadRequest,
    ReceiverConfig,
    parse_alertmanager,
)

TOKEN = "s3cret-token"


def alertmanager(status: str = "firing", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": "4", "groupKey": '{}:{alertname="DiskFull"}', "truncatedAlerts": 0,
        "status": status, "receiver": "pager", "groupLabels": {"alertname": "DiskFull"},
        "commonLabels": {"alertname": "DiskFull", "severity": "critical"},
        "commonAnnotations": {}, "externalURL": "http://am:9093",
        "alerts": [
            {"status": status, "labels": {"alertname": "DiskFull", "instance": "db1"},
             "annotations": {"summary": "97% used"}, "startsAt": "2026-11-24T03:00:00Z",
             "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prom",
             "fingerprint": "a1b2"},
            {"status": status, "labels": {"alertname": "DiskFull", "instance": "db2"},
             "annotations": {}, "fingerprint": "c3d4"},  # no summary: must not crash
        ],
    }
    body.update(extra)
    return body


def test_parse_alertmanager_with_missing_annotations() -> None:
    group = parse_alertmanager(alertmanager())
    assert group.firing and group.priority is Priority.CRITICAL
    assert group.title == "DiskFull (2 alerts)"
    assert group.body == "- DiskFull db1: 97% used\n- DiskFull db2"
    assert group.fingerprints == ("a1b2", "c3d4")
    assert not parse_alertmanager(alertmanager("resolved")).firing
    bare = {"groupKey": "k", "status": "firing", "alerts": [{"labels": {}}]}
    assert parse_alertmanager(bare).title == "Alert"


@pytest.mark.parametrize(("body", "field"), [
    ({"status": "firing", "alerts": []}, "groupKey"),
    ({"groupKey": "k", "alerts": []}, "status"),
    ({"groupKey": "k", "status": "burning", "alerts": []}, "status"),
    ({"groupKey": "k", "status": "firing"}, "alerts"),
    ({"groupKey": "k", "status": "firing", "alerts": ["x"]}, "alerts[0]"),
    ({"groupKey": "k", "status": "firing", "alerts": [{"labels": []}]}, "alerts[0].labels"),
    ({"version": "3", "groupKey": "k", "status": "firing", "alerts": []}, "version"),
    ([1, 2], "body"),
])
def test_malformed_alertmanager_names_the_field(body: Any, field: str) -> None:
    with pytest.raises(BadRequest) as error:
        parse_alertmanager(body)
    assert error.value.field == field


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[AlertReceiver]:
    bot = ClientXMPP("pager@example.org", "unused")
    bot.register_plugin("push_notifier", {
        "policies": {"oncall": Policy("oncall", (Step(("alice@example.org",), 60),))},
        "chat": False, "store": MemoryStore()})
    notifier = bot.plugin["push_notifier"]
    await notifier.start()
    server = AlertReceiver(notifier, ReceiverConfig(port=0, token=TOKEN, max_body=4096,
                                                    rate_burst=1000))
    await server.start()
    yield server
    await server.stop()
    await notifier.stop()


async def post(receiver: AlertReceiver, path: str, body: bytes | str,
               content_type: str = "application/json", token: str | None = TOKEN,
               ) -> tuple[int, dict[str, Any]]:
    data = body.encode() if isinstance(body, str) else body
    headers = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Type: {content_type}",
               f"Content-Length: {len(data)}", "Connection: close"]
    if token is not None:
        headers.append(f"Authorization: Bearer {token}")
    reader, writer = await asyncio.open_connection("127.0.0.1", receiver.port)
    writer.write("\r\n".join(headers).encode() + b"\r\n\r\n" + data)
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, {"raw": payload.decode(errors="replace")}


async def test_webhook_pages_once_and_resolves(receiver: AlertReceiver) -> None:
    status, body = await post(receiver, "/alertmanager", json.dumps(alertmanager()))
    assert status == 200 and body["created"] is True
    status, again = await post(receiver, "/alertmanager", json.dumps(alertmanager()))
    assert again == {"page": body["page"], "created": False}  # at-least-once: no re-page
    status, resolved = await post(receiver, "/alertmanager",
                                  json.dumps(alertmanager("resolved")))
    assert resolved == {"resolved": body["page"]}
    assert receiver.notifier.engine.pages == {}


async def test_refusals_page_nobody(receiver: AlertReceiver) -> None:
    cases = [
        ("/alertmanager", "{not json", "application/json", TOKEN, 400, "body"),
        ("/alertmanager", json.dumps({"status": "firing"}), "application/json", TOKEN, 400,
         "groupKey"),
        ("/notify", json.dumps({"message": "no title"}), "application/json", TOKEN, 400,
         "title"),
        ("/notify", json.dumps({"title": "t", "priority": "urgent"}), "application/json",
         TOKEN, 400, "priority"),
        ("/notify", json.dumps({"title": "t", "policy": "nope"}), "application/json", TOKEN,
         400, "policy"),
        ("/notify", json.dumps({"title": "t", "target": 5}), "application/json", TOKEN, 400,
         "target"),
        ("/notify", json.dumps({"title": "t"}), "application/json", "wrong", 401, None),
        ("/notify", json.dumps({"title": "t"}), "application/json", None, 401, None),
        ("/notify", json.dumps({"title": "x" * 5000}), "application/json", TOKEN, 413, None),
    ]
    for path, data, content_type, token, want, field in cases:
        status, body = await post(receiver, path, data, content_type, token)
        assert status == want, (path, data[:40], body)
        if field is not None:
            assert body["field"] == field and field in body["error"]
    assert receiver.notifier.engine.pages == {}


async def test_plain_text_notify(receiver: AlertReceiver) -> None:
    status, body = await post(receiver, "/notify?priority=critical",
                              "Backup failed\nnightly job exited 2", "text/plain")
    assert status == 200 and body["created"]
    page = receiver.notifier.engine.find(body["page"])
    assert (page.title, page.body, page.priority) == ("Backup failed", "nightly job exited 2",
                                                      Priority.CRITICAL)


async def test_rate_limit_answers_429(receiver: AlertReceiver) -> None:
    receiver._limits.burst = 2
    receiver._limits.state.clear()
    answers = [(await post(receiver, "/notify", json.dumps({"title": f"t{i}"})))[0]
               for i in range(4)]
    assert answers[:2] == [200, 200] and 429 in answers[2:]


class FlakyStore(MemoryStore):
    """A store whose disk can fill up (the dependency, not the thing under test)."""

    full = False

    async def _persist(self, ops: Any) -> None:
        if self.full:
            raise StoreError("[Errno 28] No space left on device")


async def test_a_page_that_cannot_be_stored_is_answered_503_and_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore()
    bot = ClientXMPP("pager@example.org", "x")
    bot.register_plugin("push_notifier", {
        "policies": {"oncall": Policy("oncall", (Step(("alice@example.org",), 60),))},
        "chat": False, "store": store})
    notifier = bot.plugin["push_notifier"]
    await notifier.start()
    server = AlertReceiver(notifier, ReceiverConfig(port=0, token=TOKEN, rate_burst=1000))
    await server.start()
    try:
        store.full = True
        with caplog.at_level("ERROR", logger="slixmpp_push.notifier.ingest"):
            answers = [await post(server, "/notify", json.dumps({"title": f"disk {i}"}))
                       for i in range(3)]
        assert [status for status, _ in answers] == [503, 503, 503]
        assert "try again" in answers[0][1]["error"]
        assert len([r for r in caplog.records if "cannot keep a page" in r.getMessage()]) == 1
        assert not any(r.exc_info for r in caplog.records)
        store.full = False
        assert notifier.engine.pages == {}  # nothing half-open: the retry pages afresh
        status, body = await post(server, "/notify", json.dumps({"title": "disk 0"}))
        assert status == 200 and body["created"] is True
        assert notifier.engine.find(body["page"]) is not None
    finally:
        await server.stop()
        await notifier.stop()
