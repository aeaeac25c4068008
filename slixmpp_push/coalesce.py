"""Coalesced writes: one socket write for everything a connection has to send soon.

On the publish path each write is a system call that, on loopback and on virtual
machines alike, costs as much as all our Python code for one publish (measured: at
1,000 publishes/s a third of the app server's CPU went to ``send`` and to waking up
for each reply). :class:`CoalescedWrites` writes once per event-loop turn, and under load
once per tick of a clock shared by every connection of the loop (:data:`WRITE_INTERVAL`):
when the last tick was longer ago, at the end of this turn (no delay at all at low
rates); otherwise at the next tick, so that each write carries several requests or
replies, and the connection to APNs and the one to the XMPP server write in the same
wake-up. The delay it may add is bounded by the interval, a couple of milliseconds, far
below a push's way through Apple or Google.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable

log = logging.getLogger(__name__)

#: The shortest time between two ticks (seconds). At 1,000 publishes/s a write then
#: carries about three; p99 of the publish round trip stays near 10 ms (2 ms and 4 ms
#: were measured too: within the noise of each other for CPU, 4 ms longer round trips).
WRITE_INTERVAL = 0.003
#: A tick due while the loop sleeps waits for this many intervals (its timer): something
#: else waking the loop first (a publish, a reply) ticks with it.
BACKSTOP = 1.5


class _Clock:
    """The ticks of one event loop: each runs the writes asked for since the last."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        self.last = float("-inf")  # loop.time() of the last tick
        self.waiting: list[CoalescedWrites] = []
        self._handle: asyncio.Handle | None = None  # the next tick, when one is due
        self._timed = False  # that tick waits for a timer (else: the end of this turn)

    def add(self, writes: CoalescedWrites) -> None:
        self.waiting.append(writes)
        self.awake()

    def awake(self) -> None:
        """Someone asked for a write, so the loop is awake: tick at the end of this turn
        if the interval is up. Otherwise a timer ticks a little after it, in case nothing
        wakes the loop meanwhile (under load something does: a tick costs no wake-up)."""
        if self._handle is not None and not self._timed:
            return
        now = self.loop.time()
        if now - self.last >= self.interval:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self.loop.call_soon(self.tick)
            self._timed = False
        elif self._handle is None and self.waiting:
            self._handle = self.loop.call_at(self.last + self.interval * BACKSTOP, self.tick)
            self._timed = True

    def tick(self) -> None:
        self._handle = None
        self.last = self.loop.time()
        waiting, self.waiting = self.waiting, []
        for writes in waiting:
            writes.scheduled = False
            try:
                writes.now()
            except Exception:  # a bug in one connection's write: the others still write
                log.exception("a coalesced write failed")


_clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Clock] = \
    weakref.WeakKeyDictionary()


def _shared_clock(loop: asyncio.AbstractEventLoop) -> _Clock:
    clock = _clocks.get(loop)
    if clock is None:
        clock = _clocks[loop] = _Clock(loop, WRITE_INTERVAL)
    return clock


class CoalescedWrites:
    """Call ``write`` soon, once for all the calls of :meth:`soon` until then.

    ``now()`` writes at once (a batch that is big enough), leaving any scheduled write
    to send what comes after it. ``interval`` other than :data:`WRITE_INTERVAL` gives the
    connection a clock of its own (for tests).
    """

    __slots__ = ("_clock", "_write", "scheduled")

    def __init__(self, write: Callable[[], None], loop: asyncio.AbstractEventLoop,
                 interval: float = WRITE_INTERVAL) -> None:
        self._write = write
        self._clock = _shared_clock(loop) if interval == WRITE_INTERVAL \
            else _Clock(loop, interval)
        #: A write is due (for tests and the connection's bookkeeping).
        self.scheduled = False

    @property
    def interval(self) -> float:
        return self._clock.interval

    def soon(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self._clock.add(self)
        else:
            self._clock.awake()

    def now(self) -> None:
        self._write()
