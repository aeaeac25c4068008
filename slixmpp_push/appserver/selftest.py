"""``test-push``: any account checks its own push set-up from its client.

"Push is enabled but nothing arrives" is the usual question. The ad-hoc
command ``test-push`` ("Send me a test notification") lets the person find
out alone: run from Conversations, Gajim, Siskin or any XEP-0050 client
against the app server's JID, it sends a visible test notification to each
device the account registered, at once, and answers one line per device:

- the device: node, app id, dialect and token (shortened like the logs do);
- what the provider said: ``delivered``, ``dead token: registration removed``
  (the same clean-up as after a publish), ``refused by APNs: 400 BadTopic``,
  ``temporarily refused by FCM: 503 UNAVAILABLE`` or ``provider unreachable: …``;
- whether the account's server has published to that node since the app
  server started, and when it last did. "No publish" for a device that
  should get pushes means push is not enabled for it at the account's server.

It is a diagnostic, not a delivery: nothing is queued or retried, but the
request is built by :func:`~slixmpp_push.payloads.build_request` and sent
through the app's provider exactly as a publish's would be (with a timeout).
Who may run it: an account (a JID with a user part) of a served domain, the
same rule as for registering; each account once per :data:`INTERVAL` seconds
(``wait`` / ``resource-constraint`` otherwise). It completes on the first
execute, with or without a submitted (empty) form. The answer is a result
form with one text-multi field ``devices`` (a line per device) and the same
text as a note, which clients show. Each run is logged in one line (tokens
shortened) and fires ``push_test_sent`` with a :class:`SelfTestReport`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slixmpp import JID, Iq
from slixmpp.exceptions import XMPPError
from slixmpp.plugins.xep_0004 import Form

from ..errors import DeliveryResult, Outcome
from ..logs import loggable_node, short_token
from ..models import Notification, Priority, Registration
from ..payloads import build_request
from ..providers.base import FcmRequest
from .adhoc import withdraw_command
from .notices import select_registrations

if TYPE_CHECKING:
    from .plugin import PushAppServer

log = logging.getLogger(__name__)

NODE = "test-push"
NAME = "Send me a test notification"
TITLE = "Test notification"
#: Seconds between two runs of one account (it must not become a way to flood a phone).
INTERVAL = 10.0
#: Seconds a provider gets to answer beyond the app's own ``timeout``.
GRACE = 5.0


@dataclass(slots=True, frozen=True)
class DeviceCheck:
    """What the test found for one device."""

    registration: Registration
    nodes: tuple[str, ...]  # every node of this device for the account (p2 group chats)
    outcome: str  # "delivered", "dead_token", "rejected", "retry" (not retried)
    result: DeliveryResult | None  # the provider's answer, when a request was sent
    detail: str  # the outcome for a human: "delivered", "refused by APNs: 400 BadTopic"
    last_publish: float | None  # when the account's server last published to a node of it
    line: str  # the line of the answer


@dataclass(slots=True, frozen=True)
class SelfTestReport:
    """One run of ``test-push`` (the ``push_test_sent`` event's argument)."""

    account: str
    appserver: str
    at: float
    started_at: float  # when the app server started (the publish record's beginning)
    devices: tuple[DeviceCheck, ...]

    @property
    def lines(self) -> list[str]:
        if not self.devices:
            return [no_device_line(self.account, self.appserver)]
        return [device.line for device in self.devices]

    @property
    def all_delivered(self) -> bool:
        return bool(self.devices) and all(d.outcome == "delivered" for d in self.devices)

    def text(self) -> str:
        if not self.devices:
            return self.lines[0]
        head = (f"{TITLE} sent by {self.appserver} to {len(self.devices)} device(s) of "
                f"{self.account} at {clock(self.at)}:")
        return "\n".join([head, *self.lines])


# -- the test ----------------------------------------------------------------------------
def clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def no_device_line(account: str, appserver: str) -> str:
    return (f"No device of {account} is registered with {appserver}. A client registers "
            f"when push is turned on with {appserver} as its push server (Siskin and Stork "
            "with register-device, Conversations with register-push-fcm); turn push off "
            "and on again in the client's settings, or log in again. Monal registers "
            "nothing here, so it cannot be tested this way.")


def _provider_name(request: object) -> str:
    return "FCM" if isinstance(request, FcmRequest) else "APNs"


def _describe(result: DeliveryResult, provider: str) -> tuple[str, str]:
    """(outcome, detail) for a provider's answer."""
    said = " ".join(part for part in (str(result.status or ""), result.reason) if part)
    if result.outcome is Outcome.DELIVERED:
        return "delivered", "delivered"
    if result.outcome is Outcome.DEAD_TOKEN:
        return "dead_token", ("dead token: registration removed"
                              + (f" ({provider} said {said})" if said else ""))
    if result.outcome is Outcome.REJECTED:
        return "rejected", f"refused by {provider}: {said or 'no reason given'}"
    if result.status is not None:
        return "retry", f"temporarily refused by {provider}: {said}"
    return "retry", f"provider unreachable: {result.reason or 'no answer'}"


def _publish_text(last: float | None, now: float, started_at: float) -> str:
    if last is not None:
        return f"last publish from your server: {clock(last)} ({ago(now - last)})"
    return (f"no publish from your server since the app server started "
            f"({clock(started_at)}): push may not be enabled at your server for this device")


async def _check(server: PushAppServer, registration: Registration,
                 group: list[Registration], notification: Notification) -> DeviceCheck:
    nodes = tuple(r.node for r in group)
    seen = [server.last_publish[n] for n in nodes if n in server.last_publish]
    last = max(seen) if seen else None  # read first: a dead token's clean-up forgets it
    result: DeliveryResult | None = None
    provider = server.providers.get(registration.app)
    if provider is None:
        outcome, detail = "rejected", f"app {registration.app!r} is not configured here"
    else:
        try:
            request = build_request(registration, notification, provider.app, time.time())
        except ValueError as exc:
            outcome, detail = "rejected", f"cannot build a request: {exc}"
        else:
            name = _provider_name(request)
            timeout = provider.app.timeout + GRACE
            try:
                result = await asyncio.wait_for(provider.send(request), timeout)
            except TimeoutError:
                result = DeliveryResult(Outcome.RETRY, reason=f"no answer within {timeout:g} s")
            except Exception as exc:  # a provider bug: report it, do not crash the command
                log.exception("provider %s failed unexpectedly", provider.id)
                result = DeliveryResult(Outcome.RETRY, reason=type(exc).__name__)
            server.metrics.provider_result(registration.app, result, notification.received_at)
            outcome, detail = _describe(result, name)
            if result.outcome is Outcome.DEAD_TOKEN:
                for dead in group:  # the same token: every node of the device is dead
                    await server.delivery.drop(dead.node)
                    await server._on_dead_token(dead, result)
    device = (f"node {registration.node} ({registration.app}, {registration.dialect.value} "
              f"dialect, token {short_token(registration.token)}"
              + (f", +{len(nodes) - 1} group-chat node(s)" if len(nodes) > 1 else "") + ")")
    line = (f"{device}: {detail}; "
            f"{_publish_text(last, notification.received_at, server.started_at)}.")
    return DeviceCheck(registration, nodes, outcome, result, detail, last, line)


async def run_test(server: PushAppServer, account: str) -> SelfTestReport:
    """Send the test notification to each device of ``account``; what became of each."""
    now = time.time()
    appserver = server.xmpp.boundjid.bare
    notification = Notification(
        title=TITLE, priority=Priority.NORMAL, received_at=now,
        body=f"Sent by the push app server {appserver} at your request: push reaches "
             "this device.")
    registrations = server.store.by_account(account)
    devices = select_registrations(server.store, [account])  # one per token
    groups = {(d.app, d.token): [r for r in registrations
                                 if (r.app, r.token) == (d.app, d.token)] for d in devices}
    checks = await asyncio.gather(*(_check(server, d, groups[(d.app, d.token)], notification)
                                    for d in devices))
    report = SelfTestReport(account, appserver, now, server.started_at, tuple(checks))
    if checks:
        log.info("test-push for %s: %d device(s): %s", account, len(checks), ", ".join(
            f"{loggable_node(c.registration.node)} {c.detail}" for c in checks))
    else:
        log.info("test-push for %s: no registered device", account)
    return report


# -- the ad-hoc command ----------------------------------------------------------------
class _Turns:
    """One run per account per :data:`INTERVAL` seconds."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def take(self, account: str, now: float) -> float:
        """0.0 and the turn is taken, or the seconds to wait."""
        wait = self.last.get(account, -INTERVAL) + INTERVAL - now
        if wait > 0:
            return wait
        if len(self.last) > 1000:
            self.last = {a: t for a, t in self.last.items() if now - t < INTERVAL}
        self.last[account] = now
        return 0.0


def register_selftest_command(server: PushAppServer) -> None:
    """Offer ``test-push`` to every account of a served domain."""
    server.xmpp["xep_0050"].add_command(node=NODE, name=NAME, handler=_handler(server))


def withdraw_selftest_command(server: PushAppServer) -> None:
    """Undo :func:`register_selftest_command`."""
    withdraw_command(server, NODE, NAME)


def _handler(server: PushAppServer) -> Any:
    turns = _Turns()

    async def start(iq: Iq, session: dict[str, Any]) -> dict[str, Any]:
        sender: JID = session["from"]
        try:
            if not sender.user or not server.domain_allowed(sender.domain):
                raise XMPPError("forbidden", etype="auth",
                                text=f"accounts of {sender.domain} are not served here")
            wait = turns.take(sender.bare, time.monotonic())
            if wait > 0:
                raise XMPPError("resource-constraint", etype="wait",
                                text=f"one test every {INTERVAL:g} s: try again in "
                                     f"{max(1, round(wait))} s")
        except XMPPError as error:
            log.debug("test-push from %s refused: %s", sender.bare, error.condition)
            raise
        try:
            await server.start()
            report = await run_test(server, sender.bare)
        finally:
            _expire(server, session)
        server.xmpp.event("push_test_sent", report)
        session["payload"] = _result_form(server, report)
        session["notes"] = [("info" if report.all_delivered else "warning", report.text())]
        session["next"] = None
        session["has_next"] = False
        return session

    return start


def _expire(server: PushAppServer, session: dict[str, Any]) -> None:
    # xep_0050 keeps a completed session forever; drop it once answered.
    sessions = server.xmpp["xep_0050"].sessions
    asyncio.get_running_loop().call_later(1.0, sessions.pop, session["id"], None)


def _result_form(server: PushAppServer, report: SelfTestReport) -> Form:
    form: Form = server.xmpp["xep_0004"].make_form(ftype="result", title=TITLE)
    form.add_field(var="devices", ftype="text-multi",
                   label=f"{len(report.devices)} device(s) of {report.account}",
                   value=report.lines)
    return form
