"""``push_notifier``: let a bot page people and keep at it until someone acks.

Routes a notification two ways: through the ``push_appserver`` in the same
bot (it knows every device an account registered), or as an XEP-0357
publisher to any remote app server. A chat message with the full text goes
alongside each push (plain, to a group chat, or OMEMO-encrypted: see
``chat_sender``).

Config keys:

``policies`` / ``default_policy``
    ``{name: Policy}`` escalation policies and the one used when none is named.
``groups``
    ``{name: [target, …]}``; a target is an account JID (all its devices and a
    chat message), ``node:<node>`` (one registration), ``remote:<name>`` (a
    node on a remote app server, see ``remotes``) or ``group:<name>``.
``remotes``
    ``{name: RemoteTarget}``.
``responders``
    Accounts that may ack or resolve any page (anyone paged may always).
``chat`` / ``chat_sender``
    Send chat messages (default True) and how (default: plain ``chat``).
``chat_commands``
    Answer ``ack``/``resolve``/``pages``/``oncall``/``help`` chat messages (default
    True; off when a host framework such as errbot owns the commands).
``store``
    Where pages are kept; default: the ``push_appserver``'s store.
``echo_window``
    Seconds during which the user's server's publish for a page's chat message
    is not pushed again (default 15; 0 pushes it): one notification per page on
    each device. See :mod:`slixmpp_push.appserver.echoes` for what it costs.
``metrics``
    The :class:`~slixmpp_push.metrics.Metrics` to count pages in (default: the
    ``push_appserver``'s, so that its /metrics shows them; else a new one).
``shared`` / ``leading``
    Several instances on one database (all-active): the ``SharedState`` every page
    write goes through, and whether this engine escalates from the start (default
    True; with several instances False, and :func:`slixmpp_push.pager_leader.lead_pages`
    makes the holder of the pager lock lead). See :mod:`.paging`.

Chat commands understood from people: ``ack [ID]``, ``resolve [ID]``,
``pages``, ``oncall``, ``help``. ``help`` is answered to anyone: it lists
commands, not data. The other commands are answered only to accounts the pager
knows (a responder, a target of a policy, or paged for an open page): open
pages' titles and who is on call are the team's business. An unknown command
gets the list only from an account the pager knows, at most once per
``HINT_INTERVAL``: a stranger's message, or another bot's automatic
answer, must not get the bot to write back, or two bots would answer each other
forever. Events: ``page_opened``, ``page_acked``, ``page_resolved``,
``page_escalated`` (a Page).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from slixmpp import JID, Message
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.jid import InvalidJID
from slixmpp.plugins.base import BasePlugin

from ..appserver import PushAppServer, Submitted
from ..logs import loggable_node
from ..metrics import Metrics
from ..models import Notification, Priority, Registration
from ..ratelimit import RateLimiter
from ..store import MemoryStore, Store
from .chat import ChatSender, PlainChat
from .models import Page, PageState, Policy
from .paging import PageEngine
from .publisher import RemoteTarget, publish

log = logging.getLogger(__name__)

MAX_GROUP_DEPTH = 8
FAN_OUT = 200  # deliveries in flight at once
FAILURES_NAMED = 3  # failed pushes a fan-out's one log line names (and counts the rest)
HINT_INTERVAL = 600.0  # seconds between two "unknown command" answers to one account
#: Seconds the chat messages of a page wait for its remote publishes to be answered.
REMOTE_HEAD_START = 2.0
#: Payloads whose message body is only a fallback ("This message is encrypted…"): not
#: an unknown command (OMEMO 0.3 and 2, OpenPGP for XMPP, legacy OpenPGP, XEP-0380).
ENCRYPTED_PAYLOADS = frozenset({
    "{eu.siacs.conversations.axolotl}encrypted", "{urn:xmpp:omemo:2}encrypted",
    "{urn:xmpp:openpgp:0}openpgp", "{jabber:x:encrypted}x", "{urn:xmpp:eme:0}encryption",
})

#: What ``help`` answers (and an unknown command from an account the pager knows).
HELP = "\n".join((
    "Commands:",
    "ack [ID] - take a page: its escalation stops (without ID: your latest page)",
    "resolve [ID] - close a page when it is fixed",
    "pages - the open pages",
    "oncall - who is paged first",
    "help - this list",
))


#: What counts as a push that reached (or will reach) the device.
PUSHED = frozenset({Submitted.DELIVERED, Submitted.QUEUED, Submitted.THROTTLED})


@dataclass(slots=True)
class NotifyReport:
    """What one notify reached: pushes per node, remote publishes, chat messages."""

    pushes: dict[str, Submitted] = field(default_factory=dict)
    # name → "ok", "sent" (all-active: the reply may reach another instance) or the error
    remote: dict[str, str] = field(default_factory=dict)
    chats: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # targets that named nothing

    @property
    def delivered(self) -> int:
        return sum(1 for s in self.pushes.values() if s in PUSHED) + sum(
            1 for r in self.remote.values() if r in ("ok", "sent"))


class PushNotifier(BasePlugin):
    name = "push_notifier"
    description = "Paging and escalation over XEP-0357 push"
    dependencies = {"xep_0030"}
    default_config = {
        "policies": {},
        "default_policy": None,
        "groups": {},
        "remotes": {},
        "responders": (),
        "chat": True,
        "chat_sender": None,
        "chat_commands": True,
        "store": None,
        "echo_window": 15.0,
        "metrics": None,
        "shared": None,
        "leading": True,
    }

    def plugin_init(self) -> None:
        self.policies: dict[str, Policy] = dict(self.config.get("policies") or {})
        self.groups: dict[str, list[str]] = dict(self.config.get("groups") or {})
        self.remotes: dict[str, RemoteTarget] = dict(self.config.get("remotes") or {})
        self.chat_sender: ChatSender = self.config.get("chat_sender") or PlainChat(self.xmpp)
        self._own_store: Store | None = self.config.get("store")
        self.engine: PageEngine | None = None
        self._started: asyncio.Future[None] | None = None
        self._receipts: dict[str, str] = {}  # message id → page id
        self._hints = RateLimiter(burst=1, interval=HINT_INTERVAL)  # per account
        self._known: frozenset[str] | None = None  # see knows()
        self.metrics: Metrics | None = self.config.get("metrics")
        self.xmpp.add_event_handler("message", self._on_message)
        self.xmpp.add_event_handler("omemo_message", self._on_encrypted_message)
        self.xmpp.add_event_handler("receipt_received", self._on_receipt)
        self.xmpp.add_event_handler("session_start", self._on_session_start)

    def plugin_end(self) -> None:
        self.xmpp.del_event_handler("message", self._on_message)
        self.xmpp.del_event_handler("omemo_message", self._on_encrypted_message)
        self.xmpp.del_event_handler("receipt_received", self._on_receipt)
        self.xmpp.del_event_handler("session_start", self._on_session_start)

    # -- life cycle -------------------------------------------------------------------
    @property
    def _own_jid(self) -> str:
        return str(self.xmpp.boundjid.bare)

    @property
    def appserver(self) -> PushAppServer | None:
        plugins: Any = self.xmpp.plugin
        return plugins["push_appserver"] if "push_appserver" in plugins else None

    async def start(self) -> None:
        """Open the store and resume open pages (also done at session start)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        appserver = self.appserver
        if self._own_store is not None:
            store = self._own_store
            await store.open()
        elif appserver is not None:
            await appserver.start()
            store = appserver.store
        else:
            log.warning("push_notifier without push_appserver or a store: pages are not kept")
            store = MemoryStore()
            await store.open()
        if self.metrics is None:
            self.metrics = appserver.metrics if appserver is not None else Metrics()
        self.engine = PageEngine(store, self.policies, self._send_page, self.metrics.pager(),
                                 shared=self.config.get("shared"),
                                 leading=self.config.get("leading", True))
        if self.engine.leading:  # alone, it escalates; several: the pager lock decides
            self.metrics.pager_leader.set(1)
        self.engine.resume()

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
        if self._own_store is not None:
            await self._own_store.close()

    async def _on_session_start(self, _event: Any) -> None:
        await self.start()

    async def _engine(self) -> PageEngine:
        await self.start()
        assert self.engine is not None
        return self.engine

    # -- notify -------------------------------------------------------------------------
    async def notify(self, target: str | Sequence[str], title: str, body: str = "",
                     priority: Priority | str = Priority.NORMAL, key: str | None = None,
                     ) -> NotifyReport:
        """Push to every device of the targets, with a chat message alongside.

        With ``key``, an identical notification sent again while the first is
        still pending on a device replaces it (the provider collapses it).
        """
        await self.start()
        targets = (target,) if isinstance(target, str) else tuple(target)
        priority = Priority(priority)
        text = self._text(title, body, priority, None)
        notification = self._notification(title, body, priority, key)
        return await self._deliver(targets, notification, text)

    async def _deliver(self, targets: Sequence[str], notification: Notification,
                       text: str, page: Page | None = None) -> NotifyReport:
        report = NotifyReport()
        specs = self.expand(targets, report)
        remote = [spec for spec in specs if spec.startswith("remote:")]
        fan_out = _FanOut(notification, text, report, page, self.appserver,
                          chat=self.config.get("chat", True),
                          echo_window=self.config.get("echo_window", 15.0))
        # Remote publishes go first. An app server that trusts this pager arms its echo
        # guard before it answers a page's publish; a chat message sent before that
        # would make the account's server publish first, a second notification.
        # Bounded, so that a slow app server does not hold the chat messages back.
        publishing = asyncio.ensure_future(self._deliver_all(remote, fan_out))
        try:
            if remote:
                await asyncio.wait({publishing}, timeout=REMOTE_HEAD_START)
            await self._deliver_all([spec for spec in specs if not spec.startswith("remote:")],
                                    fan_out)
            await publishing
        finally:
            publishing.cancel()  # only when this delivery was cancelled itself
            fan_out.log_failures()
        return report

    async def _deliver_all(self, specs: Sequence[str], fan_out: _FanOut) -> None:
        pending = iter(specs)

        async def worker() -> None:
            for spec in pending:  # workers share one iterator: no task per target
                await self._deliver_one(spec, fan_out)

        await asyncio.gather(*(worker() for _ in range(min(FAN_OUT, len(specs)))))

    async def _deliver_one(self, spec: str, fan_out: _FanOut) -> None:
        appserver = fan_out.appserver
        notification, report, page = fan_out.notification, fan_out.report, fan_out.page
        if spec.startswith("remote:"):
            name = spec[len("remote:"):]
            shared = self.config.get("shared") is not None
            try:
                await publish(self.xmpp, self.remotes[name], notification,
                              await_reply=not shared)
                report.remote[name] = "sent" if shared else "ok"
            except (IqError, IqTimeout) as exc:
                condition = exc.iq["error"]["condition"] if isinstance(exc, IqError) \
                    else "timeout"
                log.warning("remote push %s refused: %s", name, condition)
                report.remote[name] = condition
            return
        if spec.startswith("node:"):
            registration = appserver.store.get(spec[5:]) if appserver else None
            if registration is None:
                report.unknown.append(spec)
                return
            report.pushes[registration.node] = await appserver.notify(  # type: ignore
                registration, notification)
            return
        account = bare_jid(spec)
        chat = fan_out.chat
        store = fan_out.store
        if appserver is not None and store is not None:
            for registration in store.by_account(account):
                try:
                    submitted = await appserver.notify(registration, notification)
                except Exception as exc:  # one device's trouble must not stop a page
                    fan_out.failed(registration, exc)
                    continue
                report.pushes[registration.node] = submitted
                if chat and submitted in PUSHED:
                    # The chat message below makes an offline account's server publish
                    # once more: that publish must not become a second notification.
                    appserver.expect_echo(registration.node, self._own_jid, fan_out.echo_window)
        if chat:
            message_id = await self.chat_sender.send(account, fan_out.text)
            report.chats.append(account)
            if message_id and page is not None:
                self._receipts[message_id] = page.id
                del_oldest(self._receipts, 10_000)
        fan_out.paged(account)

    def expand(self, targets: Sequence[str], report: NotifyReport | None = None,
               depth: int = 0) -> list[str]:
        """Flatten groups into account JIDs, ``node:`` and ``remote:`` targets."""
        flat: dict[str, None] = {}  # ordered set: a 10k-member group stays linear
        for spec in targets:
            spec = spec.strip()
            if spec.startswith("group:"):
                members = self.groups.get(spec[6:])
                if members is None or depth >= MAX_GROUP_DEPTH:
                    if report is not None:
                        report.unknown.append(spec)
                    continue
                flat.update(dict.fromkeys(self.expand(members, report, depth + 1)))
            elif spec.startswith("remote:") and spec[7:] not in self.remotes:
                if report is not None:
                    report.unknown.append(spec)
            elif spec:
                flat[spec] = None
        return list(flat)

    def _notification(self, title: str, body: str, priority: Priority,
                      key: str | None = None) -> Notification:
        return Notification(title=title, body=body, priority=priority, message_count=1,
                            sender=self._own_jid, received_at=time.time(),
                            collapse_key=key)

    @staticmethod
    def _text(title: str, body: str, priority: Priority, page: Page | None) -> str:
        head = f"[{priority.value.upper()}] {title}"
        if page is not None:
            head = f"PAGE {page.id} {head}"
        lines = [head] + ([body] if body else [])
        if page is not None:
            lines.append(f'Reply "ack {page.id}" to take it, "resolve {page.id}" when fixed.')
        return "\n".join(lines)

    # -- paging -------------------------------------------------------------------------
    async def page(self, key: str, title: str, body: str = "",
                   priority: Priority | str = Priority.HIGH, policy: str | None = None,
                   source: str = "") -> tuple[Page, bool]:
        """Open a page (or find the active one with this key): (page, newly opened)."""
        engine = await self._engine()
        name = policy or self.config.get("default_policy") or next(iter(self.policies), None)
        if name is None:
            raise ValueError("no escalation policy is configured")
        page, created = await engine.open(key, title, body, Priority(priority), name, source)
        if created:
            self.xmpp.event("page_opened", page)
        return page, created

    async def ack(self, page_id: str | None, by: str) -> Page | None:
        engine = await self._engine()
        page = engine.find(page_id) if page_id else engine.latest_for(JID(by).bare)
        if page is None:
            return None
        await engine.ack(page, JID(by).bare)
        self.xmpp.event("page_acked", page)
        return page

    async def resolve(self, page_id: str | None, by: str) -> Page | None:
        engine = await self._engine()
        page = engine.find(page_id) if page_id else engine.latest_for(JID(by).bare)
        if page is None:
            return None
        await engine.resolve(page, by)
        self.xmpp.event("page_resolved", page)
        if self.config.get("chat", True):
            for account in page.paged:
                if account != JID(by).bare:
                    await self.chat_sender.send(account, f"PAGE {page.id} resolved by {by}: "
                                                         f"{page.title}")
        return page

    async def resolve_key(self, key: str, by: str) -> Page | None:
        """Resolve the active page with ``key`` (an alert source says it is over)."""
        engine = await self._engine()
        page = engine.by_key(key)
        return await self.resolve(page.id, by) if page is not None else None

    def may_act(self, page: Page, who: str) -> bool:
        """Whether ``who`` may ack or resolve ``page``: paged for it, or a responder."""
        account = bare_jid(who)
        return account in page.paged or account in set(self.config.get("responders", ()))

    def knows(self, account: str) -> bool:
        """Whether the pager has business with ``account`` (a bare JID): a responder,
        a target of some policy (groups expanded), or paged for an active page."""
        if self._known is None:
            specs = [target for policy in self.policies.values()
                     for targets in [*(step.targets for step in policy.steps), policy.final]
                     for target in targets]
            known: set[str] = set()
            for spec in [*self.expand(specs), *self.config.get("responders", ())]:
                if not spec.startswith(("node:", "remote:")):
                    with contextlib.suppress(InvalidJID):
                        known.add(bare_jid(spec))
            self._known = frozenset(known)
        engine = self.engine
        return account in self._known or (engine is not None and any(
            account in page.paged for page in engine.pages.values()))

    def oncall(self, policy: str | None = None) -> list[str]:
        """Who the first step of a policy pages (accounts and other targets)."""
        name = policy or self.config.get("default_policy") or next(iter(self.policies), None)
        if name is None or name not in self.policies:
            return []
        return self.expand(self.policies[name].steps[0].targets)

    async def _send_page(self, page: Page, targets: tuple[str, ...], reason: str) -> None:
        title = page.title if reason == "page" else f"UNACKNOWLEDGED: {page.title}"
        # Every push of one page (escalations, repeats) replaces the previous one.
        notification = self._notification(f"[{page.id}] {title}", page.body, page.priority,
                                          f"page:{page.id}")
        text = self._text(title, page.body, page.priority, page)
        report = await self._deliver(targets, notification, text, page)
        detail = f"{reason}: {report.delivered} push(es), {len(report.chats)} chat(s)"
        if self.engine is not None:  # keep who was paged (acks on any instance, resume)
            await self.engine.note(page, "sent", detail)
        else:
            page.log(time.time(), "sent", detail)
        if reason == "page" and (page.step or page.round):
            self.xmpp.event("page_escalated", page)

    # -- people talking back -------------------------------------------------------------
    async def _on_encrypted_message(self, message: Message) -> None:
        """An OMEMO message decrypted by OmemoChat: a command, answered encrypted."""
        await self._on_message(message, encrypted=True)

    async def _on_message(self, message: Message, encrypted: bool = False) -> None:
        if message["type"] not in ("chat", "normal") or not message["body"]:
            return
        sender = message["from"].bare
        if sender == self.xmpp.boundjid.bare:
            return
        words = message["body"].strip().split()
        if not words:
            return
        verb = words[0].lower()
        argument = words[1].upper() if len(words) > 1 else None
        if not self.config.get("chat_commands", True):
            return
        if verb == "help":
            await self._reply(message, encrypted, HELP)
            return
        if verb not in ("ack", "resolve", "pages", "oncall"):
            await self._unknown_command(message, encrypted, sender)
            return
        engine = await self._engine()
        if not self.knows(sender):
            # Open pages' titles and who is on call are the team's business; and an
            # answer to a stranger could start two bots talking (see the docstring).
            log.debug("%s from %s ignored: not known to the pager", verb, sender)
            return
        if verb == "pages":
            lines = [f"{p.id} {p.state.value} {p.priority.value} {p.title}"
                     for p in sorted(engine.pages.values(), key=lambda p: p.created)]
            await self._reply(message, encrypted, "\n".join(lines) or "No open pages.")
            return
        if verb == "oncall":
            await self._reply(message, encrypted,
                              "On call: " + (", ".join(self.oncall()) or "nobody"))
            return
        page = engine.find(argument) if argument else engine.latest_for(sender)
        if page is None:
            await self._reply(message, encrypted, f"No open page {argument}." if argument
                              else "No open page of yours.")
            return
        if not self.may_act(page, sender):
            await self._reply(message, encrypted, f"You were not paged for {page.id}.")
            return
        if verb == "ack":
            await self.ack(page.id, sender)
            until = ""
            policy = self.policies.get(page.policy)
            if policy is not None and policy.ack_timeout:
                until = f" for {int(policy.ack_timeout // 60) or 1} min"
            await self._reply(message, encrypted,
                              f"Acknowledged {page.id}{until}: escalation stopped.")
        else:
            await self.resolve(page.id, sender)
            await self._reply(message, encrypted, f"Resolved {page.id}.")

    async def _unknown_command(self, message: Message, encrypted: bool, sender: str) -> None:
        if not encrypted and any(child.tag in ENCRYPTED_PAYLOADS for child in message.xml):
            return  # the body is a fallback; OmemoChat fires the decrypted text itself
        await self.start()  # knows() looks at the open pages
        if not self.knows(sender) or self._hints.take(sender, time.monotonic()):
            return  # a stranger, or told a moment ago: stay silent (see the docstring)
        await self._reply(message, encrypted, "I did not understand that. " + HELP)

    async def _reply(self, message: Message, encrypted: bool, text: str) -> None:
        reply = getattr(self.chat_sender, "reply", None)
        if encrypted and reply is not None:  # answer as privately as they asked
            await reply(message["from"].bare, text)
            return
        self.xmpp.make_message(mto=message["from"], mbody=text, mtype="chat",
                               mfrom=message["to"]).send()

    async def _on_receipt(self, message: Message) -> None:
        page_id = self._receipts.pop(str(message["receipt"]), None)
        if page_id is None or self.engine is None:
            return
        page = self.engine.find(page_id)
        if page is not None and page.state is not PageState.RESOLVED:
            await self.engine.note(page, "receipt", message["from"].bare)


class _FanOut:
    """One notify or page turn on its way to every target: what its workers share."""

    def __init__(self, notification: Notification, text: str, report: NotifyReport,
                 page: Page | None, appserver: PushAppServer | None, chat: bool,
                 echo_window: float) -> None:
        self.notification = notification
        self.text = text
        self.report = report
        self.page = page
        self.appserver = appserver
        self.store = appserver.store if appserver is not None else None
        self.chat = chat
        self.echo_window = echo_window
        # A set beside page.paged: a list scan per account made a 10k-account page
        # quadratic. Accounts are still added one by one, as they are reached: one may
        # ack before the last push of a large page has gone out.
        self._paged_list: list[str] = []
        self._paged: set[str] = set()
        self._failures: list[tuple[Registration, Exception]] = []
        self._failure_count = 0

    def paged(self, account: str) -> None:
        """``account`` was reached: on the page's list of accounts paged, once."""
        page = self.page
        if page is None:
            return
        if page.paged is not self._paged_list:
            # The first account, or the page was replaced by its stored copy (several
            # instances: PageEngine adopts it, with our accounts, while we send).
            self._paged_list, self._paged = page.paged, set(page.paged)
        if account not in self._paged:
            self._paged.add(account)
            page.paged.append(account)

    def failed(self, registration: Registration, exc: Exception) -> None:
        """A push that raised (a full queue, a failing store): logged once per fan-out."""
        self._failure_count += 1
        if len(self._failures) < FAILURES_NAMED:
            self._failures.append((registration, exc))

    def log_failures(self) -> None:
        if not self._failure_count:
            return
        named = "; ".join(f"{loggable_node(registration.node)}: {exc}"
                          for registration, exc in self._failures)
        more = self._failure_count - len(self._failures)
        log.error("push to %d device(s) failed: %s%s", self._failure_count, named,
                  f"; and {more} more" if more else "")


@functools.lru_cache(maxsize=65536)
def bare_jid(spec: str) -> str:
    """The bare JID of a target (cached: JID parsing with stringprep is not free)."""
    return str(JID(spec).bare)


def del_oldest(mapping: dict[str, str], keep: int) -> None:
    """Bound a dict used as a FIFO (insertion order) to ``keep`` entries."""
    while len(mapping) > keep:
        del mapping[next(iter(mapping))]
