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

Operators watch it through INFO log lines (one per page opened, escalated,
acknowledged, resolved, or paged again after an ack expired; a WARNING when a
page ran every step unacknowledged) and :class:`~slixmpp_push.metrics.PagerMetrics`.
The lines name the page, its policy, the accounts and targets, and its title:
the title goes to Apple and Google in every push anyway, and without it a log
reader cannot tell one page from another. The body, which reaches the providers
only with ``include_body``, is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

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


class UnknownPolicy(KeyError):
    pass


class PageEngine:
    """Pages and their escalation timers. ``metrics``: where to count (default: a
    registry of its own, for an engine nobody scrapes)."""

    def __init__(self, store: Store, policies: dict[str, Policy], send: Send,
                 metrics: PagerMetrics | None = None) -> None:
        self.store = store
        self.policies = policies
        self.send = send
        self.metrics = metrics if metrics is not None else PagerMetrics(CollectorRegistry())
        self.metrics.watch(self.now)
        self.pages: dict[str, Page] = {}
        self._by_key: dict[str, str] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

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
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

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
        if existing is not None:
            if (existing.title, existing.body) != (title, body):
                existing.title, existing.body = title, body
                existing.updated = now
                existing.log(now, "updated", source)
                await self._save(existing)
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
            del self.pages[page.id]
            self._by_key.pop(key, None)
            log.info("page %s forgotten: it could not be stored", page.id)
            raise
        self.metrics.opened.labels(source_kind(source), policy).inc()
        return page, True

    async def ack(self, page: Page, by: str) -> None:
        if page.state is PageState.RESOLVED:
            return
        now = time.time()
        policy = self.policies.get(page.policy)
        if page.state is PageState.ACKED:
            log.info("page %s acknowledged again by %s", page.id, by)
        else:
            waited = now - page.paging_since()
            opened = now - page.created
            log.info("page %s acknowledged by %s after %s%s", page.id, by, duration(waited),
                     f" (open for {duration(opened)})" if opened - waited >= 1 else "")
            self.metrics.ack_seconds.labels(page.policy).observe(max(0.0, waited))
        page.state = PageState.ACKED
        page.acked_by = by
        page.updated = now
        page.log(now, "acked", by)
        self._cancel(page.id)
        if policy is not None and policy.ack_timeout:
            page.next_at = now + policy.ack_timeout
            self._schedule(page)
        else:
            page.next_at = 0.0
        await self._save(page)

    async def resolve(self, page: Page, by: str) -> None:
        if page.state is PageState.RESOLVED:
            return
        now = time.time()
        was = page.state
        log.info("page %s resolved by %s after %s, %s", page.id, by,
                 duration(now - page.created),
                 f"acknowledged by {page.acked_by}" if was is PageState.ACKED
                 else "nobody had acknowledged it" if was is PageState.OPEN
                 else "nobody had acknowledged it, every step had run")
        self.metrics.resolved.labels(page.policy, was.value).inc()
        page.state = PageState.RESOLVED
        page.resolved_by = by
        page.updated = now
        page.log(now, "resolved", by)
        self._cancel(page.id)
        self.pages.pop(page.id, None)
        if self._by_key.get(page.key) == page.id:
            del self._by_key[page.key]
        await self.store.set_doc(PAGES, page.id, None)

    # -- escalation ---------------------------------------------------------------------
    async def _run_step(self, page: Page) -> None:
        policy = self.policies[page.policy]
        step = policy.steps[page.step]
        now = time.time()
        page.log(now, "step", f"round {page.round + 1} step {page.step + 1}")
        if page.step or page.round:
            log.info("page %s escalated to step %d of %d%s: paging %s", page.id,
                     page.step + 1, len(policy.steps),
                     f" (round {page.round + 1} of {policy.repeat})" if policy.repeat > 1
                     else "", ", ".join(step.targets))
            self.metrics.escalations.labels(page.policy).inc()
        page.next_at = now + step.wait
        await self._save(page)  # before sending: a crash now re-runs the step, never skips it
        self._schedule(page)
        await self.send(page, step.targets, "page")

    async def _advance(self, page_id: str) -> None:
        lock = self._locks.setdefault(page_id, asyncio.Lock())
        async with lock:
            page = self.pages.get(page_id)
            if page is None or self._closing:
                return
            policy = self.policies.get(page.policy)
            if policy is None:
                log.error("page %s: policy %r is no longer configured", page.id, page.policy)
                return
            now = time.time()
            if page.state is PageState.ACKED:
                log.info("page %s: the ack of %s expired, neither renewed nor resolved; "
                         "paging again from step 1: %s", page.id, page.acked_by,
                         ", ".join(policy.steps[0].targets))
                page.log(now, "ack expired", page.acked_by or "")
                page.state = PageState.OPEN
                page.acked_by = None
                page.step, page.round = 0, 0
                await self._run_step(page)
                return
            if page.state is not PageState.OPEN:
                return
            page.step += 1
            if page.step >= len(policy.steps):
                page.step = 0
                page.round += 1
            if page.round >= policy.repeat:
                page.state = PageState.EXHAUSTED
                page.next_at = 0.0
                page.log(now, "exhausted")
                # A warning: the pager did not reach anyone who answered.
                log.warning("page %s: nobody acknowledged it after %d round(s) of %d "
                            "step(s) in %s; %s", page.id, policy.repeat, len(policy.steps),
                            duration(now - page.paging_since()),
                            f"final notice to {', '.join(policy.final)}" if policy.final
                            else "no final notice configured; it stays open")
                self.metrics.exhausted.labels(page.policy).inc()
                await self._save(page)
                if policy.final:
                    await self.send(page, policy.final, "final")
                return
            await self._run_step(page)

    def _schedule(self, page: Page) -> None:
        if self._closing:
            return
        self._cancel(page.id)
        delay = max(0.0, page.next_at - time.time())
        loop = asyncio.get_running_loop()
        self._timers[page.id] = loop.call_later(delay, self._fire, page.id)

    def _fire(self, page_id: str) -> None:
        self._timers.pop(page_id, None)
        task = asyncio.ensure_future(self._advance(page_id))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("escalation failed: %s", task.exception())

    def _cancel(self, page_id: str) -> None:
        timer = self._timers.pop(page_id, None)
        if timer is not None:
            timer.cancel()

    async def _save(self, page: Page) -> None:
        await self.store.set_doc(PAGES, page.id, page.to_doc())

    def _new_id(self) -> str:
        while True:
            page_id = "".join(secrets.choice(ID_ALPHABET) for _ in range(4))
            if page_id not in self.pages:
                return page_id


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
