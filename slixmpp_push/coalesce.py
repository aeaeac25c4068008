"""Coalesced writes: one socket write for everything a connection has to send soon.

On the publish path each write is a system call that, on loopback and on virtual
machines alike, costs as much as all our Python code for one publish (measured: at
1,000 publishes/s a third of the app server's CPU went to ``send`` and to waking up
for each reply). :class:`CoalescedWrites` writes once per event-loop turn, and at most
once per ``interval``: when the last write was longer ago, at the end of this turn (no
delay at all at low rates); otherwise when the interval is up, so that under load each
write carries several requests or replies. The delay it may add is bounded by
``interval``, a millisecond or two, far below a push's way through Apple or Google.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: The shortest time between two writes of one connection (seconds). At 1,000 publishes/s
#: a write then carries about two; p99 of the publish round trip stays in milliseconds.
WRITE_INTERVAL = 0.002


class CoalescedWrites:
    """Call ``write`` soon, once for all the calls of :meth:`soon` until then.

    ``now()`` writes at once (a batch that is big enough), leaving any scheduled write
    to send what comes after it.
    """

    __slots__ = ("_last", "_loop", "_scheduled", "_write", "interval")

    def __init__(self, write: Callable[[], None], loop: asyncio.AbstractEventLoop,
                 interval: float = WRITE_INTERVAL) -> None:
        self._write = write
        self._loop = loop
        self.interval = interval
        self._scheduled = False
        self._last = float("-inf")  # loop.time() of the last write

    @property
    def scheduled(self) -> bool:
        """A write is due (for tests and the connection's bookkeeping)."""
        return self._scheduled

    def soon(self) -> None:
        if self._scheduled:
            return
        self._scheduled = True
        due = self._last + self.interval
        if due > self._loop.time():
            self._loop.call_at(due, self._run)
        else:
            self._loop.call_soon(self._run)

    def now(self) -> None:
        self._last = self._loop.time()
        self._write()

    def _run(self) -> None:
        self._scheduled = False
        self.now()
