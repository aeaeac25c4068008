"""Deliver notifications, or keep them durably until they can be delivered.

A publish is answered ``result`` only once its notification is either accepted
by the provider or written to the store's ``pending`` table; a restart loads
that table and carries on. Per node there is at most one request in flight and
one notification pending: a newer notification replaces an older pending one
(the phone only needs the latest wake-up), which is also how a burst above the
per-node rate limit is coalesced instead of dropped.

Transient failures are retried with exponential backoff and full jitter,
honouring the provider's Retry-After, for at most ``give_up_after`` seconds.

The pending table holds at most ``max_pending`` notifications, on every path
that adds to it (a throttled or coalesced publish, a slow provider, a failed
first attempt): a notification that would be the one too many is refused with
:class:`QueueFull` before anything is answered, so the publish gets ``wait``
(its server keeps the registration) and nothing answered ``result`` is dropped.

A registration whose app is not configured (any more: the operator removed it
from the config, or renamed its provider id) is never sent nor queued: ``submit``
says :attr:`Submitted.APP_REMOVED` and the caller decides what becomes of the
registration; a pending notification for one, kept from before a restart, is dropped.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from ..config import DeliveryPolicy
from ..errors import DeliveryResult, Outcome, StoreError
from ..logs import LogSampler, loggable_node
from ..metrics import Metrics
from ..models import Dialect, Notification, Registration
from ..payloads import RequestTemplates, build_request
from ..providers.base import Provider
from ..ratelimit import RateLimiter
from ..store import Store
from ..store.shared import SharedState
from .pending import LocalBook, Pending, PendingBook, SharedBook

log = logging.getLogger(__name__)


class Submitted(str, enum.Enum):
    """What became of a submitted notification by the time the publish is answered."""

    DELIVERED = "delivered"
    QUEUED = "queued"  # durably pending: retried, or sent after the in-flight one
    THROTTLED = "throttled"  # durably pending until the node's rate limit allows it
    DEAD_TOKEN = "dead_token"  # the registration was removed
    REJECTED = "rejected"  # the provider refused it for good (not the token's fault)
    APP_REMOVED = "app_removed"  # the registration's app is not configured: nothing sent

    @property
    def pushed(self) -> bool:
        """Whether the notification reached the device, or durably will."""
        return self in (Submitted.DELIVERED, Submitted.QUEUED, Submitted.THROTTLED)


_SUBMITTED = {
    Outcome.DELIVERED: Submitted.DELIVERED,
    Outcome.DEAD_TOKEN: Submitted.DEAD_TOKEN,
    Outcome.REJECTED: Submitted.REJECTED,
    Outcome.RETRY: Submitted.QUEUED,  # _settle stored it durably before we got here
}


#: The stats key of each provider outcome (built once: this is counted per push).
_PROVIDER_STATS = {outcome: f"provider_{outcome.value}" for outcome in Outcome}


class QueueFull(Exception):
    """Too many notifications are pending: answer the publish with ``wait``."""


async def _ended_within(task: asyncio.Task[Any], seconds: float) -> bool:
    """Whether ``task`` ended within ``seconds``: ``asyncio.wait({task}, timeout=...)``
    for one task, without the sets and checks it makes on every publish."""
    if task.done():
        return True
    loop = task.get_loop()
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    timer = loop.call_later(seconds, wake)
    task.add_done_callback(wake)
    try:
        await waiter
    finally:
        timer.cancel()
        task.remove_done_callback(wake)
    return task.done()


def _log_failure(task: asyncio.Future[Any]) -> None:
    # A store failure is not logged per notification: StoreStatus logs it once;
    # nor a full queue: Delivery counts it and samples its log line.
    if not task.cancelled() and task.exception() is not None \
            and not isinstance(task.exception(), StoreError | QueueFull):
        log.error("delivery failed: %s", task.exception())


DeadTokenHandler = Callable[[Registration, DeliveryResult], Awaitable[None]]
#: A pending notification that could not be claimed (the database failing) is tried again
#: after this many seconds.
CLAIM_RETRY = 1.0
#: Local notifications (pages, notices) whose request templates are kept.
TEMPLATES_KEPT = 4

__all__ = ["Delivery", "DeliveryPolicy", "Pending", "QueueFull", "RateLimiter", "Submitted"]


class Delivery:
    """Sends through the providers; owns the pending queue and its timers.

    ``shared``: several active instances share the database (``[appserver] instances =
    "all-active"``): pending notifications are leased, the rate limit is shared
    (:class:`~.pending.SharedBook`); without it this process keeps its own
    (:class:`~.pending.LocalBook`).
    """

    def __init__(self, store: Store, providers: dict[str, Provider],
                 policy: DeliveryPolicy, on_dead_token: DeadTokenHandler,
                 metrics: Metrics | None = None, shared: SharedState | None = None) -> None:
        self.store = store
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.queue_depth.set_function(lambda: len(self._pending))
        self.metrics.queue_oldest.set_function(self._oldest_age)
        self.providers = providers
        self.policy = policy
        self.on_dead_token = on_dead_token
        self.book: PendingBook
        if shared is None:
            self.book = LocalBook(store, policy)
        else:
            self.book = SharedBook(shared, store, policy, self.metrics, self._adopt,
                                   self._holding)
        self.stats: Counter[str] = Counter()
        self._pending: dict[str, Pending] = {}
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._closing = False
        self._full_log = LogSampler(log)
        self._refused_log = LogSampler(log)
        self._templates_by_notification: dict[int, RequestTemplates] = {}

    # -- life cycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Schedule every notification kept pending (after a restart); with a shared
        book, take part in its leases."""
        self.resume()
        await self.book.start()

    def resume(self) -> None:
        """Schedule every notification this process's store kept pending (one instance)."""
        self._adopt(self.book.resume())
        if self._pending:
            log.info("resuming %d pending notification(s)", len(self._pending))

    async def stop(self) -> None:
        """Stop timers and wait briefly for in-flight requests; pending stays stored."""
        self._closing = True
        await self.book.stop()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()), timeout=5.0)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def _oldest_age(self) -> float:
        if not self._pending:
            return 0.0
        return max(0.0, time.time() - min(e.first_queued for e in self._pending.values()))

    def _holding(self) -> set[str]:
        return self._pending.keys() | self._inflight.keys()

    def _adopt(self, entries: list[Pending]) -> None:
        """Deliver ``entries`` (resumed, taken over, found) from now on."""
        for entry in entries:
            node = entry.node
            known = self._pending.get(node)
            if known is not None and known.version >= entry.version:
                continue
            self._pending[node] = entry
            if node not in self._inflight:
                self._schedule(node, entry.due)

    # -- the publish path ----------------------------------------------------------
    async def submit(self, registration: Registration, notification: Notification, *,
                     inline: bool = False) -> Submitted:
        """Deliver now, or keep durably pending; say which.

        A publish (``inline=False``) is answered within ``reply_within``: a
        slow provider is left working in a task of its own. A local sender
        (pager, notices) has nothing to answer and waits inline, which spares
        a task and a timer per notification on a large fan-out.
        """
        if registration.app not in self.providers:
            return Submitted.APP_REMOVED
        node = registration.node
        now = time.time()
        wait = None
        if node not in self._pending and node not in self._inflight \
                and not self.book.pending_elsewhere(node):
            wait = await self.book.take_rate(node)
        if wait is None or node in self._pending or node in self._inflight:
            # Something for this node is already on its way or waiting: the
            # newer notification takes the pending place of any older one.
            await self._keep(registration, notification, due=None)
            return Submitted.QUEUED
        if wait > 0:
            await self._keep(registration, notification, due=now + wait)
            self.stats["throttled"] += 1
            self.metrics.rate_limited.inc()
            return Submitted.THROTTLED
        if inline:
            current = asyncio.current_task()
            assert current is not None
            self._inflight[node] = current
            result = await self._send_and_settle(registration, notification, local=True)
            return _SUBMITTED[result.outcome]
        task = self._start(registration, notification)
        if not await _ended_within(task, self.policy.reply_within):
            # Slow provider: persist it so a restart retries it; the task's
            # completion settles the pending entry either way.
            await self._keep(registration, notification, due=now, replace_newer=False)
            return Submitted.QUEUED
        return _SUBMITTED[task.result().outcome]

    async def _keep(self, registration: Registration, notification: Notification,
                    due: float | None, replace_newer: bool = True) -> None:
        """Make ``notification`` the node's durable pending notification."""
        node = registration.node
        old = self._pending.get(node)
        if old is None:
            self._make_room()
        if old is not None and not replace_newer and old.notification is not notification:
            return
        now = time.time()
        entry = Pending(
            registration, notification,
            attempts=old.attempts if old else 0,
            first_queued=old.first_queued if old else now,
            # A newer notification keeps an older one's backoff, not its place in line.
            due=due if due is not None else (old.due if old and old.attempts else now),
            version=old.version if old else 0,
        )
        self._pending[node] = entry
        try:
            held = await self.book.keep(entry)
        except StoreError:  # logged once by the store, answered 'wait' by the caller
            if self._pending.get(node) is entry:
                if old is None:
                    del self._pending[node]
                else:
                    self._pending[node] = old
            raise
        if self._pending.get(node) is not entry:
            return  # replaced meanwhile by a newer one, which scheduled itself
        if held is None:  # another instance holds the node's lease: it sends this one
            del self._pending[node]
            self._cancel_timer(node)
            return
        if node not in self._inflight:
            self._schedule(node, entry.due)

    async def drop(self, node: str) -> None:
        """Forget a node's pending notification (it was unregistered)."""
        if node in self._pending or self.book.pending_elsewhere(node):
            self._pending.pop(node, None)
            self._cancel_timer(node)
            try:
                await self.book.drop(node)
            except StoreError as exc:  # sent later to a registration that is gone: refused
                log.debug("node %s: cannot clear a pending notification: %s",
                          loggable_node(node), exc)

    # -- sending ----------------------------------------------------------------------
    def _templates(self, notification: Notification) -> RequestTemplates:
        """The request templates of ``notification`` (kept for the last few local ones:
        a page and a notice may fan out at once)."""
        key = id(notification)  # held below, so the id is not reused meanwhile
        templates = self._templates_by_notification.get(key)
        if templates is None:
            templates = self._templates_by_notification[key] = RequestTemplates(notification)
            if len(self._templates_by_notification) > TEMPLATES_KEPT:
                del self._templates_by_notification[next(iter(self._templates_by_notification))]
        return templates

    def _start(self, registration: Registration, notification: Notification,
               ) -> asyncio.Task[DeliveryResult]:
        node = registration.node
        task = asyncio.ensure_future(self._send_and_settle(registration, notification))
        task.add_done_callback(_log_failure)
        self._inflight[node] = task
        return task

    async def _send_and_settle(self, registration: Registration, notification: Notification,
                               local: bool = False) -> DeliveryResult:
        try:
            result = await self._send(registration, notification, local)
            if result.outcome is not Outcome.DELIVERED or registration.node in self._pending:
                await self._settle(registration, notification, result)  # else nothing to do
            return result
        finally:
            self._inflight.pop(registration.node, None)
            entry = self._pending.get(registration.node)
            if entry is not None and not self._closing:
                self._schedule(registration.node, entry.due)

    async def _send(self, registration: Registration, notification: Notification,
                    local: bool = False) -> DeliveryResult:
        provider = self.providers.get(registration.app)
        if provider is None:  # submit and _fire let none through: a safety net
            return DeliveryResult(Outcome.REJECTED,
                                  reason=f"app {registration.app!r} is not configured")
        try:
            if local:  # a local sender's fan-out: one notification, many devices
                request = self._templates(notification).build(registration, provider.app,
                                                              time.time())
            else:
                request = build_request(registration, notification, provider.app, time.time())
        except ValueError as exc:
            # Sampled: a page's devices share their content, so they share the failure.
            self._refused_log.log(logging.ERROR, f"unbuildable {registration.app}",
                                  "node %s: cannot build a request: %s",
                                  loggable_node(registration.node), exc)
            return DeliveryResult(Outcome.REJECTED, reason=str(exc))
        try:
            result = await provider.send(request)
        except Exception:  # a provider bug must not lose the notification
            log.exception("provider %s failed unexpectedly", provider.id)
            result = DeliveryResult(Outcome.RETRY, reason="provider error")
        self.stats[_PROVIDER_STATS[result.outcome]] += 1
        self.metrics.provider_result(registration.app, result, notification.received_at)
        return result

    async def _settle(self, registration: Registration, notification: Notification,
                      result: DeliveryResult) -> None:
        node = registration.node
        entry = self._pending.get(node)
        mine = entry is not None and entry.notification is notification
        if result.outcome is Outcome.RETRY:
            if entry is None or mine:
                if entry is None:  # a first attempt failed: it would be a new entry
                    self._make_room()
                attempts = entry.attempts + 1 if entry else 1
                first = entry.first_queued if entry else notification.received_at or time.time()
                if time.time() - first > self.policy.give_up_after:
                    log.error("node %s: giving up after %d attempts (%s)", loggable_node(node),
                              attempts,
                              result.reason)
                    self.stats["given_up"] += 1
                    await self._forget(node)
                    return
                due = time.time() + self._backoff(attempts, result.retry_after)
                kept = Pending(registration, notification, attempts, first, due,
                               entry.version if entry else 0)
                self._pending[node] = kept
                self.stats["retries"] += 1
                self.metrics.retries.labels(registration.app).inc()
                # A StoreError propagates: the publish is then answered with an
                # error instead of a result we could not keep.
                held = await self.book.retry(kept)
                if self._pending.get(node) is kept:
                    if held is None:
                        del self._pending[node]
                    else:
                        self._pending[node] = held
            # else a newer notification is pending: it replaces this one.
            return
        if result.outcome is Outcome.DEAD_TOKEN:
            await self._forget(node)
            await self.on_dead_token(registration, result)
            return
        if result.outcome is Outcome.REJECTED:
            said = " ".join(part for part in (str(result.status or ""), result.reason) if part)
            # Sampled per app and status: a page to 10,000 devices that the provider
            # refuses (a bad topic, a payload too large) is one line, not 10,000.
            self._refused_log.log(logging.ERROR, f"rejected {registration.app} {result.status}",
                                  "node %s: %s rejected the notification: %s",
                                  loggable_node(node), registration.app,
                                  said or "no reason given")
        if mine:
            await self._forget(node)

    def _make_room(self) -> None:
        """Raise :class:`QueueFull` (counted, its log line sampled) if a new entry
        would pass ``max_pending``."""
        if len(self._pending) < self.policy.max_pending:
            return
        self.stats["queue_full"] += 1
        self.metrics.queue_full.inc()
        self._full_log.log(logging.WARNING, "full",
                           "%d notifications pending ([delivery] max_pending): refusing new "
                           "ones with 'wait' until the queue drains", len(self._pending))
        raise QueueFull(f"{len(self._pending)} notifications pending")

    async def _forget(self, node: str) -> None:
        entry = self._pending.pop(node, None)
        self._cancel_timer(node)
        if entry is None:
            return
        try:
            newer = await self.book.settle(entry)
        except StoreError as exc:  # it will be delivered again after a restart: harmless
            log.debug("node %s: cannot clear a pending notification: %s",
                      loggable_node(node), exc)
            return
        if newer is not None:  # written by another instance meanwhile: ours to send
            self._adopt([newer])

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        ceiling = min(self.policy.retry_max_delay, self.policy.retry_base * 2 ** (attempts - 1))
        delay = random.uniform(ceiling / 2, ceiling)  # jitter keeps retries from aligning
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    # -- timers -----------------------------------------------------------------------
    def _schedule(self, node: str, due: float) -> None:
        if self._closing:
            return
        self._cancel_timer(node)
        loop = asyncio.get_running_loop()
        delay = max(0.0, due - time.time())
        self._timers[node] = loop.call_later(delay, self._fire, node)

    def _cancel_timer(self, node: str) -> None:
        timer = self._timers.pop(node, None)
        if timer is not None:
            timer.cancel()

    def _fire(self, node: str) -> None:
        self._timers.pop(node, None)
        entry = self._pending.get(node)
        if entry is None or node in self._inflight or self._closing:
            return
        task = asyncio.ensure_future(self._send_pending(entry))
        task.add_done_callback(_log_failure)
        self._inflight[node] = task

    async def _send_pending(self, entry: Pending) -> None:
        """Send a pending notification that is due, once it is this instance's to send,
        its registration still exists and the node's rate limit allows it."""
        node = entry.node
        try:
            claimed = await self.book.claim(entry)
        except StoreError:  # the database: logged by the book's lease loop
            return self._defer(node, time.time() + CLAIM_RETRY)
        if self._pending.get(node) is not entry:  # replaced meanwhile: the newer one counts
            return self._defer(node, time.time())
        if claimed is None:  # another instance delivers it
            self._pending.pop(node, None)
            self._inflight.pop(node, None)
            return None
        self._pending[node] = claimed
        if claimed.due > time.time() + 0.01:  # a newer notification kept its own due time
            return self._defer(node, claimed.due)
        registration = claimed.registration
        if registration.dialect is not Dialect.MONAL:  # stateless: nothing stored
            current = self.store.get(node)
            if current is None:  # unregistered meanwhile
                return await self._drop_unsent(node)
            registration = current
        if registration.app not in self.providers:
            log.warning("node %s: pending notification dropped: its app %r is not "
                        "configured any more", loggable_node(node), registration.app)
            return await self._drop_unsent(node)
        wait = await self._rate(node)
        if wait > 0:
            return self._defer(node, time.time() + wait)
        await self._send_and_settle(registration, claimed.notification)
        return None

    def _defer(self, node: str, when: float) -> None:
        """Not now: try the node's pending notification (if any is left) again at ``when``."""
        self._inflight.pop(node, None)
        if node in self._pending:
            self._schedule(node, when)

    async def _drop_unsent(self, node: str) -> None:
        """Drop the node's pending notification without sending it. It stays counted in
        flight until settled, so that the lease loop does not take it for a lost one."""
        await self._forget(node)
        self._inflight.pop(node, None)

    async def _rate(self, node: str) -> float:
        try:
            return await self.book.take_rate(node)
        except StoreError:
            return CLAIM_RETRY
