"""The paging engine: open, escalate, acknowledge, resolve — and survive restarts.

Independent of XMPP: it calls ``send(page, targets, reason)`` to reach people
and keeps every page in the store's ``pages`` table, so that a restart resumes
each open page at the step (and time) it had reached.

A page goes through its policy's steps: notify the step's targets, wait
``step.wait`` for an acknowledgement, go on to the next step; after the last
step it starts over, ``repeat`` times in all, then sends the final notice and
stops escalating. An ack stops escalation; with ``ack_timeout`` the ack
expires and the page escalates again from the first step. Resolving closes
it. Pages are deduplicated by key: opening a page whose key is already active
updates that page instead of paging again.

Several instances on one database (``[appserver] instances = "all-active"``) share
their pages through ``shared`` (:class:`SharedDocuments`, the store's
``SharedState``). Each of them opens pages (and sends the first step itself),
acknowledges and resolves them: the on-call person's "ack" may reach any instance.
Only the one that leads (:meth:`PageEngine.lead`, while it holds the pager lock of
:mod:`slixmpp_push.pager_leader`) has timers and escalates. Every write is then a
read-modify-write of the stored page under its row lock: an escalation is written
only if the stored page is still where the leader escalated from, so an ack or a
resolve that got in first wins (the leader takes the stored page as the truth and
sends nothing), and no step goes out twice, even while a leader that lost its lock
and its successor both still escalate. An ack or a resolve applies to the stored
page, never to a stale copy. The other instances' changes reach :attr:`PageEngine.pages`
through the store's watch (:meth:`~slixmpp_push.store.Store.watch`) within milliseconds,
and reschedule the leader's timers. Without ``shared`` (one process) pages are
written whole (``Store.set_doc``).

Operators watch it through INFO log lines (one per page opened, escalated,
acknowledged, resolved, or paged again after an ack expired; a WARNING when a
page ran every step unacknowledged) and :class:`~slixmpp_push.metrics.PagerMetrics`.
The lines name the page, its policy, the accounts and targets, and its title:
the title goes to Apple and Google in every push anyway, and without it a log
reader cannot tell one page from another. The body, which reaches the providers
only with ``include_body``, is never logged. With several instances, each logs
(and counts) what it did itself.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from ..errors import StoreError
from ..limits import quoted
from ..metrics import PagerMetrics, PagesNow
from ..models import Priority
from ..store import PAGES, Store
from .models import Page, PageState, Policy

log = logging.getLogger(__name__)

Send = Callable[[Page, tuple[str, ...], str], Awaitable[None]]
ID_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read out at 3 a.m.
TITLE_LOG_CHARS = 100  # a title longer than this is cut in log lines
#: Leading with a shared database: an escalation that could not be written (the database
#: failed) is tried again after this many seconds.
ESCALATION_RETRY = 5.0
#: What modify's ``change`` gets and gives: the stored document (None: none).
Change = Callable[[dict[str, Any] | None], dict[str, Any] | None]
PAGE_FIELDS = tuple(field.name for field in dataclasses.fields(Page))


class SharedDocuments(Protocol):
    """Documents that several instances change together (the store's ``SharedState``)."""

    async def modify(self, table: str, key: str, change: Change) -> dict[str, Any] | None:
        """Apply ``change`` to the stored document under its row lock and store what it
        returns (None: delete it; the very object it got: leave it): what is stored
        afterwards. Raises StoreError when the database fails."""
        ...


class UnknownPolicy(KeyError):
    pass


@dataclasses.dataclass(slots=True)
class _Turn:
    """What a timer did to a page: ``kind`` is ``repage`` (its ack expired), ``step``,
    ``exhausted``, or "" (nothing: it was not due)."""

    kind: str = ""
    acked_by: str | None = None  # whose ack expired


class PageEngine:
    """Pages and their escalation timers. ``metrics``: where to count (default: a
    registry of its own, for an engine nobody scrapes).

    ``shared``: several instances share the pages (see the module's docstring);
    ``leading``: whether this engine escalates (has timers) from the start; with several
    instances they start not leading, and :func:`~slixmpp_push.pager_leader.lead_pages`
    calls :meth:`lead` on the one holding the pager lock.
    """

    def __init__(self, store: Store, policies: dict[str, Policy], send: Send,
                 metrics: PagerMetrics | None = None, *,
                 shared: SharedDocuments | None = None, leading: bool = True) -> None:
        self.store = store
        self.policies = policies
        self.send = send
        self.metrics = metrics if metrics is not None else PagerMetrics(CollectorRegistry())
        self.metrics.watch(self.now)
        self.shared = shared
        self.pages: dict[str, Page] = {}
        self._by_key: dict[str, str] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._due: dict[str, float] = {}  # page id → the next_at its timer was set for
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._leading = leading
        if shared is not None:
            store.watch(PAGES, self._on_remote)

    # -- life cycle ---------------------------------------------------------------------
    def resume(self) -> None:
        """Load active pages from the store and schedule each at its next step."""
        for doc in list(self.store.table(PAGES).values()):
            try:
                page = Page.from_doc(doc)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("unreadable page in the store: %s", exc)
                continue
            if not page.active:
                continue
            self.pages[page.id] = page
            self._by_key[page.key] = page.id
            if page.state in (PageState.OPEN, PageState.ACKED) and page.next_at:
                self._schedule(page)
        if self.pages:
            log.info("resuming %d open page(s)", len(self.pages))

    async def stop(self) -> None:
        self._closing = True
        if self.shared is not None:
            self.store.unwatch(PAGES, self._on_remote)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    # -- leading (several instances) ----------------------------------------------------
    @property
    def leading(self) -> bool:
        """Whether this engine escalates pages (it has their timers)."""
        return self._leading

    def lead(self) -> None:
        """Escalate from now on: a timer for every active page, at its next step."""
        if self._leading:
            return
        self._leading = True
        for page in list(self.pages.values()):
            self._reschedule(page)

    def step_down(self) -> None:
        """Stop escalating (another instance leads now): every timer is cancelled. Pages
        are still opened (the first step sent), acknowledged and resolved here."""
        self._leading = False
        for page_id in list(self._timers):
            self._cancel(page_id)

    def scheduled(self) -> set[str]:
        """The pages this engine has an escalation timer for (none unless leading)."""
        return set(self._timers)

    # -- queries ------------------------------------------------------------------------
    def by_key(self, key: str) -> Page | None:
        page_id = self._by_key.get(key)
        return self.pages.get(page_id) if page_id else None

    def find(self, page_id: str) -> Page | None:
        return self.pages.get(page_id.upper())

    def latest_for(self, account: str) -> Page | None:
        """The most recent active page that paged ``account``."""
        candidates = [p for p in self.pages.values() if account in p.paged and p.active]
        return max(candidates, key=lambda p: p.created) if candidates else None

    def now(self) -> PagesNow:
        """Active pages by state, and how long the oldest unacknowledged one has paged."""
        by_state: dict[str, int] = {}
        oldest = 0.0
        now = time.time()
        for page in self.pages.values():
            by_state[page.state.value] = by_state.get(page.state.value, 0) + 1
            if page.state in (PageState.OPEN, PageState.EXHAUSTED):
                oldest = max(oldest, now - page.paging_since())
        return PagesNow(by_state, oldest)

    # -- actions ------------------------------------------------------------------------
    async def open(self, key: str, title: str, body: str, priority: Priority,
                   policy: str, source: str = "") -> tuple[Page, bool]:
        """Open a page, or return the active one with the same key (and False)."""
        if policy not in self.policies:
            raise UnknownPolicy(policy)
        now = time.time()
        existing = self.by_key(key)
        if existing is not None and (existing.title, existing.body) != (title, body):
            existing = await self._update(existing, title, body, source, now)
        if existing is not None:
            return existing, False
        page = Page(id=self._new_id(), key=key, title=title, body=body, priority=priority,
                    policy=policy, created=now, updated=now, source=source)
        page.log(now, "opened", source)
        self.pages[page.id] = page
        self._by_key[key] = page.id
        log.info("page %s opened (source %s, policy %s, %s): %s; paging %s", page.id,
                 source or "api", policy, priority.value, quoted(title, TITLE_LOG_CHARS),
                 ", ".join(self.policies[policy].steps[0].targets))
        try:
            await self._run_step(page)
        except StoreError:
            # Neither kept nor sent (the save comes first): forget it, so that the
            # sender's retry opens it afresh instead of finding a page nobody runs.
            self.pages.pop(page.id, None)
            self._by_key.pop(key, None)
            log.info("page %s forgotten: it could not be stored", page.id)
            raise
        self.metrics.opened.labels(source_kind(source), policy).inc()
        return page, True

    async def _update(self, page: Page, title: str, body: str, source: str,
                      now: float) -> Page | None:
        """A new title or body for an active page; None when another instance resolved it
        meanwhile (then a new page opens)."""

        def update(stored: Page) -> bool:
            stored.title, stored.body = title, body
            stored.updated = now
            stored.log(now, "updated", source)
            return True

        if self.shared is None:
            update(page)
            await self._save(page)
            return page
        return self._adopt(page.id, await self._write_shared(page.id, update), page)

    async def ack(self, page: Page, by: str) -> None:
        if page.state is PageState.RESOLVED:
            return
        now = time.time()
        policy = self.policies.get(page.policy)
        if self.shared is not None:
            await self._ack_shared(page, by, now, policy)
            return
        self._log_ack(page, by, page.state, now)
        self._take_ack(page, by, now, policy)
        self._cancel(page.id)
        if page.next_at:
            self._schedule(page)
        await self._save(page)

    async def _ack_shared(self, page: Page, by: str, now: float,
                          policy: Policy | None) -> None:
        was: Page | None = None  # the stored page before the ack

        def take(stored: Page) -> bool:
            nonlocal was
            was = copy.deepcopy(stored)
            self._take_ack(stored, by, now, policy)
            return True

        stored = await self._write_shared(page.id, take)
        if self._adopt(page.id, stored, page) is not None and was is not None:
            self._log_ack(was, by, was.state, now)

    @staticmethod
    def _take_ack(page: Page, by: str, now: float, policy: Policy | None) -> None:
        page.state = PageState.ACKED
        page.acked_by = by
        page.updated = now
        page.log(now, "acked", by)
        page.next_at = now + policy.ack_timeout if policy is not None and policy.ack_timeout \
            else 0.0

    def _log_ack(self, page: Page, by: str, was: PageState, now: float) -> None:
        if was is PageState.ACKED:
            log.info("page %s acknowledged again by %s", page.id, by)
            return
        waited = now - page.paging_since()
        opened = now - page.created
        log.info("page %s acknowledged by %s after %s%s", page.id, by, duration(waited),
                 f" (open for {duration(opened)})" if opened - waited >= 1 else "")
        self.metrics.ack_seconds.labels(page.policy).observe(max(0.0, waited))

    async def resolve(self, page: Page, by: str) -> None:
        if page.state is PageState.RESOLVED:
            return
        now = time.time()
        if self.shared is not None:
            await self._resolve_shared(page, by, now)
            return
        self._log_resolved(page, by, now)
        self._close(page, by, now)
        await self.store.set_doc(PAGES, page.id, None)

    async def _resolve_shared(self, page: Page, by: str, now: float) -> None:
        was: Page | None = None

        def take(stored: Page) -> bool:
            nonlocal was
            was = stored
            return True

        await self._write_shared(page.id, take, delete=True)
        if was is None:  # another instance resolved it first
            self._adopt(page.id, None, page)
            return
        self._log_resolved(was, by, now)
        self._close(page, by, now)

    def _log_resolved(self, page: Page, by: str, now: float) -> None:
        was = page.state
        log.info("page %s resolved by %s after %s, %s", page.id, by,
                 duration(now - page.created),
                 f"acknowledged by {page.acked_by}" if was is PageState.ACKED
                 else "nobody had acknowledged it" if was is PageState.OPEN
                 else "nobody had acknowledged it, every step had run")
        self.metrics.resolved.labels(page.policy, was.value).inc()

    def _close(self, page: Page, by: str, now: float) -> None:
        page.state = PageState.RESOLVED
        page.resolved_by = by
        page.updated = now
        page.log(now, "resolved", by)
        self._forget(page)

    async def note(self, page: Page, event: str, detail: str = "") -> None:
        """Record on an active page what happened outside the engine (a send and whom
        it reached, a delivery receipt), and keep it with the accounts paged so far."""
        now = time.time()
        page.log(now, event, detail)
        if not page.active:
            return
        if self.shared is None:
            await self._save(page)
            return
        paged = list(page.paged)

        def take(stored: Page) -> bool:
            stored.log(now, event, detail)
            stored.paged += [account for account in paged if account not in stored.paged]
            return True

        self._adopt(page.id, await self._write_shared(page.id, take), page)

    # -- escalation ---------------------------------------------------------------------
    async def _run_step(self, page: Page) -> None:
        """The first step of a new page: stored, then sent."""
        policy = self.policies[page.policy]
        self._begin_step(page, policy, time.time())
        if self.shared is None:
            await self._save(page)  # before sending: a crash now re-runs the step, never skips it
            self._schedule(page)
        else:
            await self._create(page)
            self._reschedule(page)
        await self.send(page, policy.steps[page.step].targets, "page")

    @staticmethod
    def _begin_step(page: Page, policy: Policy, now: float) -> None:
        page.log(now, "step", f"round {page.round + 1} step {page.step + 1}")
        page.next_at = now + policy.steps[page.step].wait

    def _turn(self, page: Page, policy: Policy, now: float) -> _Turn:
        """Escalate ``page`` by one turn of its timer (in memory): what it did."""
        if page.state is PageState.ACKED:
            turn = _Turn("repage", page.acked_by)
            page.log(now, "ack expired", page.acked_by or "")
            page.state = PageState.OPEN
            page.acked_by = None
            page.step, page.round = 0, 0
            self._begin_step(page, policy, now)
            return turn
        if page.state is not PageState.OPEN:
            return _Turn()
        page.step += 1
        if page.step >= len(policy.steps):
            page.step = 0
            page.round += 1
        if page.round >= policy.repeat:
            page.state = PageState.EXHAUSTED
            page.next_at = 0.0
            page.log(now, "exhausted")
            return _Turn("exhausted")
        self._begin_step(page, policy, now)
        return _Turn("step")

    def _announce(self, page: Page, policy: Policy, turn: _Turn, now: float) -> None:
        if turn.kind == "repage":
            log.info("page %s: the ack of %s expired, neither renewed nor resolved; "
                     "paging again from step 1: %s", page.id, turn.acked_by,
                     ", ".join(policy.steps[0].targets))
        elif turn.kind == "step":
            log.info("page %s escalated to step %d of %d%s: paging %s", page.id,
                     page.step + 1, len(policy.steps),
                     f" (round {page.round + 1} of {policy.repeat})" if policy.repeat > 1
                     else "", ", ".join(policy.steps[page.step].targets))
            self.metrics.escalations.labels(page.policy).inc()
        elif turn.kind == "exhausted":
            # A warning: the pager did not reach anyone who answered.
            log.warning("page %s: nobody acknowledged it after %d round(s) of %d "
                        "step(s) in %s; %s", page.id, policy.repeat, len(policy.steps),
                        duration(now - page.paging_since()),
                        f"final notice to {', '.join(policy.final)}" if policy.final
                        else "no final notice configured; it stays open")
            self.metrics.exhausted.labels(page.policy).inc()

    async def _send_turn(self, page: Page, policy: Policy, turn: _Turn) -> None:
        if turn.kind == "exhausted":
            if policy.final:
                await self.send(page, policy.final, "final")
        elif turn.kind:
            await self.send(page, policy.steps[page.step].targets, "page")

    async def _advance(self, page_id: str) -> None:
        lock = self._locks.setdefault(page_id, asyncio.Lock())
        async with lock:
            page = self.pages.get(page_id)
            if page is None or self._closing or not self._leading:
                return
            policy = self.policies.get(page.policy)
            if policy is None:
                log.error("page %s: policy %r is no longer configured", page.id, page.policy)
                return
            if self.shared is not None:
                await self._advance_shared(page, policy)
                return
            now = time.time()
            turn = self._turn(page, policy, now)
            if not turn.kind:
                return
            self._announce(page, policy, turn, now)
            await self._save(page)  # before sending: a crash now re-runs the step, never skips it
            if turn.kind != "exhausted":
                self._schedule(page)
            await self._send_turn(page, policy, turn)

    async def _advance_shared(self, page: Page, policy: Policy) -> None:
        """Escalate the stored page if it is still where ours is: an ack, a resolve or
        another leader's escalation that got in first wins, and we send nothing."""
        now = time.time()
        if page.next_at > now:
            # Not due: a timer set from a change read meanwhile fired early (our page was
            # adopted while its escalation was being written); the right one is set here.
            self._reschedule(page)
            return
        origin = (page.state, page.step, page.round, page.next_at)
        turn = _Turn()

        def escalate(stored: Page) -> bool:
            nonlocal turn
            if (stored.state, stored.step, stored.round, stored.next_at) != origin:
                return False
            turn = self._turn(stored, policy, now)
            return bool(turn.kind)

        try:
            stored = await self._write_shared(page.id, escalate)
        except StoreError as exc:
            log.warning("page %s: the escalation could not be written, trying again in %g s: "
                        "%s", page.id, ESCALATION_RETRY, exc)
            self._arm(page.id, ESCALATION_RETRY)
            return
        adopted = self._adopt(page.id, stored, page)
        if adopted is None or not turn.kind:
            return
        self._announce(adopted, policy, turn, now)
        await self._send_turn(adopted, policy, turn)

    def _schedule(self, page: Page) -> None:
        if self._closing or not self._leading:
            return
        self._cancel(page.id)
        self._arm(page.id, max(0.0, page.next_at - time.time()))
        self._due[page.id] = page.next_at

    def _arm(self, page_id: str, delay: float) -> None:
        self._cancel(page_id)
        loop = asyncio.get_running_loop()
        self._timers[page_id] = loop.call_later(delay, self._fire, page_id)

    def _reschedule(self, page: Page) -> None:
        """The timer ``page`` needs, as it is now: none unless leading and escalating."""
        if not self._leading or page.state not in (PageState.OPEN, PageState.ACKED) \
                or not page.next_at:
            self._cancel(page.id)
        elif page.id not in self._timers or self._due.get(page.id) != page.next_at:
            self._schedule(page)

    def _fire(self, page_id: str) -> None:
        self._timers.pop(page_id, None)
        self._due.pop(page_id, None)
        task = asyncio.ensure_future(self._advance(page_id))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("escalation failed: %s", task.exception())

    def _cancel(self, page_id: str) -> None:
        self._due.pop(page_id, None)
        timer = self._timers.pop(page_id, None)
        if timer is not None:
            timer.cancel()

    async def _save(self, page: Page) -> None:
        await self.store.set_doc(PAGES, page.id, page.to_doc())

    def _forget(self, page: Page) -> None:
        """``page`` is no longer active: out of the engine, its timer cancelled."""
        self._cancel(page.id)
        if self.pages.get(page.id) is page:
            del self.pages[page.id]
        if self._by_key.get(page.key) == page.id:
            del self._by_key[page.key]
            # Two instances that opened one key at the same moment: the other stays found.
            for other in self.pages.values():
                if other.key == page.key:
                    self._by_key[page.key] = other.id
                    break

    def _new_id(self) -> str:
        while True:
            page_id = "".join(secrets.choice(ID_ALPHABET) for _ in range(4))
            if page_id not in self.pages:
                return page_id

    # -- sharing with other instances ---------------------------------------------------
    async def _create(self, page: Page) -> None:
        """Store a new page; when another instance drew the same ID a moment ago (not in
        our memory yet), draw another."""
        while not await self._insert(page):
            old = page.id
            self.pages.pop(old, None)
            page.id = self._new_id()
            self.pages[page.id] = page
            self._by_key[page.key] = page.id
            log.info("page %s is page %s: another instance had just opened a page %s",
                     old, page.id, old)

    async def _insert(self, page: Page) -> bool:
        """Store a new page unless its ID is taken: whether it was stored."""
        assert self.shared is not None
        doc = page.to_doc()
        taken = False

        def insert(stored: dict[str, Any] | None) -> dict[str, Any] | None:
            nonlocal taken
            taken = stored is not None
            return stored if taken else doc

        await self.shared.modify(PAGES, page.id, insert)
        return not taken

    async def _write_shared(self, page_id: str, edit: Callable[[Page], bool], *,
                            delete: bool = False) -> Page | None:
        """Apply ``edit`` to the stored page under its row lock (it returns whether to
        write; with ``delete`` writing deletes): the stored page afterwards, None when
        there is none (resolved) or it is unreadable."""
        assert self.shared is not None

        def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
            if doc is None:
                return None
            try:
                stored = Page.from_doc(doc)
            except (KeyError, TypeError, ValueError):
                return doc  # left alone, and reported below
            if not edit(stored):
                return doc
            return None if delete else stored.to_doc()

        doc = await self.shared.modify(PAGES, page_id, change)
        return self._readable(page_id, doc)

    @staticmethod
    def _readable(page_id: str, doc: dict[str, Any] | None) -> Page | None:
        if doc is None:
            return None
        try:
            return Page.from_doc(copy.deepcopy(doc))  # ours to change: not the store's lists
        except (KeyError, TypeError, ValueError) as exc:
            log.error("page %s in the store is unreadable, ignored: %s", page_id, exc)
            return None

    def _adopt(self, page_id: str, stored: Page | None, held: Page | None = None,
               ) -> Page | None:
        """Make our page ``page_id`` what is stored, in place (callers hold it): the page,
        or None when it is no longer active (then it leaves the engine)."""
        page = self.pages.get(page_id, held)
        if stored is None or not stored.active:
            if page is not None:
                if page.active:
                    page.state = PageState.RESOLVED  # whoever holds it sees it closed
                self._forget(page)
            return None
        if page is None:
            page = stored
        else:
            # Accounts reached by a send still in progress here are not stored yet.
            sending = [account for account in page.paged if account not in stored.paged]
            for name in PAGE_FIELDS:
                setattr(page, name, getattr(stored, name))
            page.paged.extend(sending)
        self.pages[page.id] = page
        self._by_key[page.key] = page.id
        self._reschedule(page)
        return page

    def _on_remote(self, page_id: str, doc: dict[str, Any] | None) -> None:
        """The store took in another process's change of a page (it may be our own
        write, read back: then nothing changes)."""
        if self._closing:
            return
        stored = self._readable(page_id, doc)
        if doc is not None and stored is None:
            return  # unreadable: logged; what we have stays
        current = self.pages.get(page_id)
        if current is not None and current == stored:
            return
        self._adopt(page_id, stored)


def source_kind(source: str) -> str:
    """The metric label for who opened a page: ``alertmanager``, ``notify`` (the
    webhook), ``errbot`` (from ``errbot:<person>``), ``api`` when unnamed."""
    return source.split(":", 1)[0][:32] or "api"


def duration(seconds: float) -> str:
    """``45s``, ``2m05s``, ``3h07m``: short enough for a log line, read at a glance."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole // 60 % 60:02d}m"
