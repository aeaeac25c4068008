"""Alert ingest: an HTTP receiver on the bot's event loop (aiohttp).

    POST /alertmanager   Alertmanager's webhook (version 4): one page per alert
                         group (key = groupKey), resolved when the group resolves
    POST /notify         JSON {"title", "message", "priority", "key", "target",
                         "policy"} or text/plain (first line = title): pages (or,
                         with "target", notifies once)
    GET  /health         {"status": "ok", "open_pages": N}

Bearer-token auth (compared in constant time), a body size limit, a per-client
rate limit; every refusal is a 4xx whose JSON ``error`` names the field at fault.
Nothing is paged unless the whole request was understood.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import MissingDependency, StoreError
from ..logs import LogSampler
from ..models import Priority
from ..ratelimit import RateLimiter
from .config import ReceiverConfig

if TYPE_CHECKING:
    from aiohttp import web

    from .plugin import PushNotifier

log = logging.getLogger(__name__)
_store_errors = LogSampler(log)

SEVERITY_PRIORITY = {"critical": Priority.CRITICAL, "page": Priority.CRITICAL,
                     "error": Priority.HIGH, "warning": Priority.HIGH,
                     "info": Priority.NORMAL, "none": Priority.LOW}
MAX_ALERT_LINES = 20


class BadRequest(ValueError):
    """Answered 400 with ``{"error": message, "field": field}``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field '{field}' {problem}")
        self.field = field


# -- parsing (pure) ----------------------------------------------------------------------
def _object(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(field, "must be an object")
    return value


def _string(value: Any, field: str, required: bool = False) -> str:
    if value is None or value == "":
        if required:
            raise BadRequest(field, "is required")
        return ""
    if not isinstance(value, str):
        raise BadRequest(field, "must be a string")
    return value


def parse_priority(value: Any, field: str = "priority") -> Priority:
    if value is None or value == "":
        return Priority.HIGH
    try:
        return Priority(str(value).lower())
    except ValueError:
        raise BadRequest(field, "must be one of low, normal, high, critical") from None


@dataclass(slots=True)
class AlertGroup:
    key: str
    firing: bool
    title: str
    body: str
    priority: Priority
    fingerprints: tuple[str, ...]


def parse_alertmanager(payload: Any) -> AlertGroup:
    """Read an Alertmanager webhook body; any annotation may be missing."""
    data = _object(payload, "body")
    version = data.get("version")
    if version is not None and str(version) != "4":
        raise BadRequest("version", f"must be \"4\", not {version!r}")
    key = _string(data.get("groupKey"), "groupKey", required=True)
    status = _string(data.get("status"), "status", required=True)
    if status not in ("firing", "resolved"):
        raise BadRequest("status", "must be 'firing' or 'resolved'")
    alerts = data.get("alerts")
    if not isinstance(alerts, list):
        raise BadRequest("alerts", "must be a list")
    common_labels = _object(data.get("commonLabels"), "commonLabels")
    group_labels = _object(data.get("groupLabels"), "groupLabels")
    common_annotations = _object(data.get("commonAnnotations"), "commonAnnotations")
    lines, fingerprints = [], []
    severities = []
    for index, alert in enumerate(alerts):
        alert = _object(alert, f"alerts[{index}]")
        labels = _object(alert.get("labels"), f"alerts[{index}].labels")
        annotations = _object(alert.get("annotations"), f"alerts[{index}].annotations")
        fingerprint = alert.get("fingerprint")
        if isinstance(fingerprint, str):
            fingerprints.append(fingerprint)
        if alert.get("status", status) != "firing":
            continue
        severities.append(str(labels.get("severity", "")).lower())
        what = " ".join(str(labels[k]) for k in ("alertname", "instance") if k in labels)
        why = annotations.get("summary") or annotations.get("description") or ""
        lines.append(f"- {what}: {why}".rstrip(": ") if why else f"- {what or 'alert'}")
    name = (common_labels.get("alertname") or group_labels.get("alertname")
            or "Alert")
    summary = common_annotations.get("summary")
    title = f"{name}: {summary}" if summary else str(name)
    if len(lines) > 1:
        title += f" ({len(lines)} alerts)"
    if len(lines) > MAX_ALERT_LINES:
        lines = [*lines[:MAX_ALERT_LINES], f"… and {len(lines) - MAX_ALERT_LINES} more"]
    severity = str(common_labels.get("severity", "")).lower()
    ranked = [SEVERITY_PRIORITY.get(s) for s in [severity, *severities]]
    known = [p for p in ranked if p is not None]
    order = list(Priority)
    priority = max(known, key=order.index) if known else Priority.HIGH
    firing = status == "firing" and bool(lines)
    return AlertGroup(key=f"alertmanager:{key}", firing=firing, title=title,
                      body="\n".join(lines), priority=priority,
                      fingerprints=tuple(sorted(fingerprints)))


# -- the HTTP side -------------------------------------------------------------------------
class AlertReceiver:
    """Serves the ingest endpoints for one :class:`PushNotifier`."""

    def __init__(self, notifier: PushNotifier, config: ReceiverConfig) -> None:
        try:
            from aiohttp import web
        except ImportError:
            raise MissingDependency("aiohttp", "notifier", "the alert receiver") from None
        self.notifier = notifier
        self.config = config
        self._web = web
        self._limits = RateLimiter(config.rate_burst, config.rate_interval)
        self.app = web.Application(client_max_size=config.max_body,
                                   middlewares=[self._guard])
        self.app.router.add_get("/health", self.health)
        self.app.router.add_post("/alertmanager", self.alertmanager)
        self.app.router.add_post("/notify", self.notify)
        self._runner: web.AppRunner | None = None
        self.port = config.port

    async def start(self) -> None:
        web = self._web
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        log.info("alert receiver on http://%s:%d/", self.config.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _error(self, status: int, message: str, field: str | None = None,
               headers: dict[str, str] | None = None) -> web.Response:
        body = {"error": message, **({"field": field} if field else {})}
        return self._web.json_response(body, status=status, headers=headers)

    @property
    def _guard(self) -> Any:
        web = self._web

        @web.middleware
        async def guard(request: Any, handler: Any) -> Any:
            if request.path != "/health":
                wait = self._limits.take(request.remote or "?", time.monotonic())
                if wait > 0:
                    return self._error(429, "too many requests",
                                       headers={"Retry-After": str(int(wait) + 1)})
                if self.config.token is not None:
                    given = request.headers.get("Authorization", "")
                    expected = f"Bearer {self.config.token}"
                    if not hmac.compare_digest(given.encode(), expected.encode()):
                        return self._error(401, "missing or wrong bearer token",
                                           headers={"WWW-Authenticate": "Bearer"})
            try:
                return await handler(request)
            except BadRequest as exc:
                return self._error(400, str(exc), exc.field)
            except web.HTTPRequestEntityTooLarge:
                return self._error(413, f"body larger than {self.config.max_body} bytes")
            except StoreError as exc:
                # The page could not be kept (a full disk): the sender must try again,
                # and Alertmanager retries a 5xx. Logged once per minute, not per request.
                _store_errors.log(logging.ERROR, "store", "cannot keep a page: %s", exc)
                return self._error(503, "the pager cannot store the page right now; "
                                        "try again", headers={"Retry-After": "30"})
        return guard

    async def _json(self, request: web.Request) -> Any:
        text = await request.text()
        try:
            return json.loads(text)
        except ValueError as exc:
            raise BadRequest("body", f"is not JSON: {exc}") from None

    async def health(self, request: web.Request) -> web.Response:
        engine = self.notifier.engine
        return self._web.json_response(
            {"status": "ok", "open_pages": len(engine.pages) if engine else 0})

    async def alertmanager(self, request: web.Request) -> web.Response:
        group = parse_alertmanager(await self._json(request))
        if not group.firing:
            page = await self.notifier.resolve_key(group.key, "alertmanager")
            return self._web.json_response({"resolved": page.id if page else None})
        page, created = await self.notifier.page(group.key, group.title, group.body,
                                                 group.priority, self.config.policy,
                                                 source="alertmanager")
        return self._web.json_response({"page": page.id, "created": created})

    async def notify(self, request: web.Request) -> web.Response:
        if request.content_type == "text/plain":
            text = (await request.text()).strip()
            title, _, message = text.partition("\n")
            data: dict[str, Any] = {"title": title.strip(), "message": message.strip(),
                                    **dict(request.query)}
        else:
            data = _object(await self._json(request), "body")
        title = _string(data.get("title"), "title", required=True)
        message = _string(data.get("message"), "message")
        priority = parse_priority(data.get("priority"))
        key = _string(data.get("key"), "key") or f"notify:{title}"
        policy = _string(data.get("policy"), "policy") or self.config.policy
        if policy is not None and policy not in self.notifier.policies:
            raise BadRequest("policy", f"names no configured policy ({policy!r})")
        target = data.get("target")
        if target is not None:
            targets = [target] if isinstance(target, str) else target
            if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                raise BadRequest("target", "must be a string or a list of strings")
            report = await self.notifier.notify(targets, title, message, priority, key)
            return self._web.json_response({"pushes": len(report.pushes),
                                            "chats": len(report.chats),
                                            "unknown": report.unknown})
        page, created = await self.notifier.page(key, title, message, priority, policy,
                                                 source="notify")
        return self._web.json_response({"page": page.id, "created": created})
