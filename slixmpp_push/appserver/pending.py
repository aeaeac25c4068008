"""Where pending notifications are kept: this process's store, or leases shared by several.

:class:`~.delivery.Delivery` decides what to send and when; a book decides where a
pending notification is kept and who delivers it:

- :class:`LocalBook` (one active instance): the store's ``pending`` table, written whole
  by this process, read back at start; the local token bucket limits each node.
- :class:`SharedBook` (``[appserver] instances = "all-active"``): the same table with
  leases (:class:`~slixmpp_push.store.shared.SharedState`): a notification is delivered by
  the instance holding its lease, each write has a version so that settling an older one
  never deletes a newer one, a crashed instance's notifications are swept up by the others
  when its leases run out, and the rate limit is one budget per node in the database.

Every method that writes raises :class:`~slixmpp_push.errors.StoreError` when it cannot;
the caller keeps memory as it was and answers ``wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import DeliveryPolicy
from ..errors import StoreError
from ..logs import loggable_node
from ..metrics import Metrics
from ..models import Notification, Registration
from ..ratelimit import RateLimiter
from ..store import PENDING, Store
from ..store.shared import Leased, SharedState

log = logging.getLogger(__name__)

#: The shared rate budgets that are full again are pruned this often (seconds).
PRUNE_EVERY = 60.0


@dataclass(slots=True)
class Pending:
    registration: Registration
    notification: Notification
    attempts: int
    first_queued: float
    due: float  # wall clock
    version: int = 0  # of its row in a shared book (0: not written there)

    @property
    def node(self) -> str:
        return self.registration.node

    def to_doc(self) -> dict[str, Any]:
        return {"registration": self.registration.to_doc(),
                "notification": self.notification.to_doc(), "attempts": self.attempts,
                "first_queued": self.first_queued, "due": self.due}

    @classmethod
    def from_doc(cls, doc: dict[str, Any], version: int = 0) -> Pending:
        return cls(Registration.from_doc(doc["registration"]),
                   Notification.from_doc(doc["notification"]), int(doc["attempts"]),
                   float(doc["first_queued"]), float(doc["due"]), version)


def read_entry(node: str, doc: dict[str, Any], version: int = 0) -> Pending | None:
    """The entry of a stored document; None (logged) for one that cannot be read."""
    try:
        return Pending.from_doc(doc, version)
    except (KeyError, TypeError, ValueError) as exc:
        log.error("pending notification for node %s is unreadable: %s", loggable_node(node),
                  exc)
        return None


class PendingBook(Protocol):
    """Keeps pending notifications durably and says which are this instance's to send."""

    def resume(self) -> list[Pending]:
        """What this instance delivers after a start."""

    def pending_elsewhere(self, node: str) -> bool:
        """Whether another instance holds a pending notification for ``node`` (a newer
        one then replaces it instead of going out on its own)."""

    async def take_rate(self, node: str) -> float:
        """0.0 if the node may be sent to now, else the seconds to wait."""

    async def keep(self, entry: Pending) -> Pending | None:
        """Write ``entry`` (new, or replacing the node's): the entry this instance now holds,
        or None when another instance delivers it."""

    async def retry(self, entry: Pending) -> Pending | None:
        """Write ``entry`` again after a failed attempt: what this instance holds for the
        node now (a newer notification may have replaced it), or None."""

    async def claim(self, entry: Pending) -> Pending | None:
        """Before sending ``entry`` once it is due: the node's current notification, now
        this instance's, or None when another instance delivers it."""

    async def settle(self, entry: Pending) -> Pending | None:
        """``entry`` is done with (delivered, refused, given up): delete it; a newer
        notification for the node that this instance must now send, or None."""

    async def drop(self, node: str) -> None:
        """Delete the node's pending notification (unregistered)."""

    async def start(self) -> None:
        """Begin background work (a shared book's leases)."""

    async def stop(self) -> None:
        """End it."""


class LocalBook:
    """The store's ``pending`` table, this process's alone."""

    def __init__(self, store: Store, policy: DeliveryPolicy) -> None:
        self.store = store
        self.limiter = RateLimiter(policy.rate_burst, policy.rate_interval)

    def resume(self) -> list[Pending]:
        entries = (read_entry(node, doc) for node, doc in list(self.store.table(PENDING).items()))
        return [entry for entry in entries if entry is not None]

    def pending_elsewhere(self, node: str) -> bool:
        return False

    async def take_rate(self, node: str) -> float:
        return self.limiter.take(node, time.time())

    async def keep(self, entry: Pending) -> Pending | None:
        await self.store.set_doc(PENDING, entry.node, entry.to_doc())
        return entry

    async def retry(self, entry: Pending) -> Pending | None:
        return await self.keep(entry)

    async def claim(self, entry: Pending) -> Pending | None:
        return entry

    async def settle(self, entry: Pending) -> Pending | None:
        await self.store.set_doc(PENDING, entry.node, None)
        return None

    async def drop(self, node: str) -> None:
        await self.store.set_doc(PENDING, node, None)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


Adopt = Callable[[list[Pending]], None]


class SharedBook:
    """Leased rows of the shared ``pending`` table (see :mod:`~slixmpp_push.store.shared`).

    ``adopt(entries)`` hands Delivery the notifications this instance must now deliver
    although it did not queue them: taken over from an instance whose lease ran out, or
    held in the database but unknown here (a settle that failed). ``holding()`` says which
    nodes Delivery knows (pending or in flight).
    """

    def __init__(self, shared: SharedState, store: Store, policy: DeliveryPolicy,
                 metrics: Metrics, adopt: Adopt, holding: Callable[[], set[str]]) -> None:
        self.shared = shared
        self.store = store
        self.policy = policy
        self.metrics = metrics
        self.adopt = adopt
        self.holding = holding
        self._leases: asyncio.Task[None] | None = None
        self._trouble = ""  # the last failure of the lease loop, logged once

    def resume(self) -> list[Pending]:
        return []  # the first sweep takes what nobody holds

    def pending_elsewhere(self, node: str) -> bool:
        # The store's copy of the table follows every instance's writes within ms.
        return node in self.store.table(PENDING)

    async def take_rate(self, node: str) -> float:
        return await self.shared.take_rate(node, self.policy.rate_burst,
                                           self.policy.rate_interval)

    async def keep(self, entry: Pending) -> Pending | None:
        entry.version, mine, stored = await self.shared.keep(entry.node, entry.to_doc())
        if not mine:
            return None
        newer = read_entry(entry.node, stored) if stored is not None else None
        if newer is not None:
            # A notification received later is stored already: it stands for this one,
            # so this entry becomes it (a send of this one in flight then settles nothing).
            entry.registration, entry.notification = newer.registration, newer.notification
            entry.attempts, entry.first_queued, entry.due = (
                newer.attempts, newer.first_queued, newer.due)
        return entry

    async def retry(self, entry: Pending) -> Pending | None:
        if not entry.version:  # a first attempt failed: no row yet
            return await self.keep(entry)
        version = await self.shared.reschedule(entry.node, entry.version, entry.to_doc())
        if version is not None:
            entry.version = version
            return entry
        return self._entry(await self.shared.leased(entry.node))

    async def claim(self, entry: Pending) -> Pending | None:
        return self._entry(await self.shared.claim(entry.node))

    async def settle(self, entry: Pending) -> Pending | None:
        if not entry.version:
            return None  # never written: nothing to delete
        return self._entry(await self.shared.settle(entry.node, entry.version))

    async def drop(self, node: str) -> None:
        await self.shared.drop(node)

    async def start(self) -> None:
        self._leases = asyncio.create_task(self._keep_leases(), name="push-pending-leases")

    async def stop(self) -> None:
        if self._leases is not None:
            self._leases.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._leases
            self._leases = None

    async def _keep_leases(self) -> None:
        """Renew this instance's leases, adopt what it holds without knowing, take over
        what expired; every third of a lease, the first time at once."""
        pruned = time.monotonic()
        while True:
            try:
                await self._round()
                if time.monotonic() - pruned > PRUNE_EVERY:
                    await self.shared.prune_rates()
                    pruned = time.monotonic()
                if self._trouble:
                    log.info("pending notifications: the database answers again")
                    self._trouble = ""
            except StoreError as exc:
                if str(exc) != self._trouble:
                    self._trouble = str(exc)
                    log.warning("pending notifications: cannot renew or sweep leases: %s "
                                "(others take this instance's over when they expire)", exc)
            except Exception:  # a bug: the leases must go on being renewed regardless
                log.exception("pending notifications: the lease round failed")
            await asyncio.sleep(self.shared.lease / 3)

    async def _round(self) -> None:
        held = await self.shared.renew()
        unknown = held - self.holding()
        found = []
        for key in sorted(unknown):
            entry = self._entry(await self.shared.leased(key))
            if entry is not None and entry.node not in self.holding():
                found.append(entry)
        rows = await self.shared.sweep()
        others = sum(1 for row in rows if row.previous_owner not in (None, self.shared.owner))
        if others:
            log.info("took over %d pending notification(s) from other instances (their "
                     "leases ran out or were let go)", others)
            self.metrics.lease_takeovers.inc(others)
        taken = [entry for entry in map(self._entry, rows) if entry is not None]
        if found or taken:
            self.adopt(found + taken)

    @staticmethod
    def _entry(leased: Leased | None) -> Pending | None:
        if leased is None:
            return None
        return read_entry(leased.key, leased.doc, leased.version)
