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
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from ..errors import StoreError
from ..models import Priority
from ..store import PAGES, Store
from .models import Page, PageState, Policy

log = logging.getLogger(__name__)

Send = Callable[[Page, tuple[str, ...], str], Awaitable[None]]
ID_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read out at 3 a.m.


class UnknownPolicy(KeyError):
    pass


class PageEngine:
    def __init__(self, store: Store, policies: dict[str, Policy], send: Send) -> None:
        self.store = store
        self.policies = policies
        self.send = send
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
        try:
            await self._run_step(page)
        except StoreError:
            # Neither kept nor sent (the save comes first): forget it, so that the
            # sender's retry opens it afresh instead of finding a page nobody runs.
            del self.pages[page.id]
            self._by_key.pop(key, None)
            raise
        return page, True

    async def ack(self, page: Page, by: str) -> None:
        if page.state is PageState.RESOLVED:
            return
        now = time.time()
        policy = self.policies.get(page.policy)
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
