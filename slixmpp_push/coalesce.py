"""Coalesced writes: one socket write for everything a connection has to send soon.

On the publish path each write is a system call that, on loopback and on virtual
machines alike, costs as much as all our Python code for one publish (measured: at
1,000 publishes/s a third of the app server's CPU went to ``send`` and to waking up
for each reply). :class:`CoalescedWrites` writes a connection's data once per event-loop
turn, and under load once per :data:`WRITE_INTERVAL`: when its last write was longer ago,
at the end of this turn (no delay at all at low rates); otherwise on the first wake-up of
the loop after the interval (a publish, a reply), or, should nothing wake it, on a timer
a little later. Each write then carries several requests or replies. The delay it may add
is a few milliseconds, far below a push's way through Apple or Google.

Each connection keeps its own clock: one clock for all of them was tried, and a write on
one connection then held back the next on another. Through Prosody, which publishes the
next notification for an account once we answered the last, every publish waited for
the interval behind our own answer (5 ms instead of 1 ms at 100 messages/s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: The shortest time between two writes of one connection (seconds). At 1,000
#: publishes/s a write then carries about three; p99 of the publish round trip stays near
#: 10 ms (2 ms and 4 ms were measured too: within the noise of each other for CPU, 4 ms
#: with longer round trips).
WRITE_INTERVAL = 0.003
#: A write due while the loop sleeps waits this many intervals for its timer: whatever
#: wakes the loop first (a publish, a reply) writes it, so under load it costs no wake-up.
BACKSTOP = 1.5


class CoalescedWrites:
    """Call ``write`` soon, once for all the calls of :meth:`soon` until then.

    ``write`` returns whether it wrote anything: a call with nothing to send (aioapns
    asks for one after every reply it reads) does not hold the next write back.
    ``now()`` writes at once (a batch that is big enough), leaving any write already
    due to send what comes after it.
    """

    __slots__ = ("_handle", "_last", "_loop", "_timed", "_write", "interval")

    def __init__(self, write: Callable[[], bool], loop: asyncio.AbstractEventLoop,
                 interval: float = WRITE_INTERVAL) -> None:
        self._write = write
        self._loop = loop
        self.interval = interval
        self._last = float("-inf")  # loop.time() of the last write that sent something
        self._handle: asyncio.Handle | None = None  # the write due
        self._timed = False  # it waits for a timer (else: the end of this turn)

    @property
    def scheduled(self) -> bool:
        """A write is due."""
        return self._handle is not None

    def soon(self) -> None:
        """Ask for a write. The caller runs, so the loop is awake: the end of this turn
        if the interval is up, else a timer, moved to the end of a later turn that comes
        after the interval."""
        if self._handle is not None and not self._timed:
            return
        now = self._loop.time()
        if now - self._last >= self.interval:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_soon(self._run)
            self._timed = False
        elif self._handle is None:
            self._handle = self._loop.call_at(self._last + self.interval * BACKSTOP,
                                              self._run)
            self._timed = True

    def now(self) -> None:
        if self._write():
            self._last = self._loop.time()

    def _run(self) -> None:
        self._handle = None
        self.now()
