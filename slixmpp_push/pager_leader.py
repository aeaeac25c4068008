"""Which of several active instances runs the page escalations (all-active).

With ``[appserver] instances = "all-active"`` every ``serve`` opens, acknowledges and
resolves pages (:mod:`slixmpp_push.notifier.paging`), but a page's escalation timers must
fire on exactly one of them. That one holds the database's pager lock: a session-level
advisory lock keyed apart from the serving lock (:class:`~slixmpp_push.active_lock.ActiveLock`
with ``purpose="pager"``, the same waiting, pinging and losing). :func:`lead_pages` runs
in the background of every instance: it waits for the lock, then makes the engine lead;
when the lock is lost (the database restarted, the connection was cut) the engine stops
escalating at once and the wait starts again, while another instance, blocked in the same
wait, takes over within milliseconds. While both still escalate (the old leader has not
yet noticed its loss) the engine's conditional writes keep each step to one send.
"""

from __future__ import annotations

import asyncio
import logging

from .active_lock import PAGER, ActiveLock
from .errors import StoreError
from .metrics import Metrics
from .notifier.paging import PageEngine

log = logging.getLogger(__name__)

#: After the database refused the lock's login (a wrong password, no such database): the
#: next try. Waiting for a database that cannot be reached is the lock's own business.
RETRY_DELAY = 10.0


async def lead_pages(engine: PageEngine, url: str, name: str, metrics: Metrics, *,
                     password: str | None = None, retry_delay: float = RETRY_DELAY) -> None:
    """Lead ``engine`` (the app server ``name``'s pager) while this process holds the pager
    lock in the database ``url``; runs until cancelled, and then lets the lock go."""
    said = ""
    while True:
        lock = ActiveLock(url, name, metrics, password=password, purpose=PAGER)
        try:
            try:
                await lock.acquire()
            except StoreError as exc:
                if str(exc) != said:  # one line per trouble, not one per try
                    said = str(exc)
                    log.error("pager: cannot wait for the pager lock of %s (trying again "
                              "every %g s): %s", name, retry_delay, exc)
                await asyncio.sleep(retry_delay)
                continue
            said = ""
            engine.lead()
            await lock.lost.wait()
        finally:
            engine.step_down()
            await lock.release()
