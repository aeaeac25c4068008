"""CoalescedWrites: one write for what is asked until then, at most one per interval.

The rules are checked on a loop whose time the test sets (:class:`ManualLoop`), so that
no assertion depends on how fast this machine is; the last test runs a real loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from slixmpp_push.coalesce import BACKSTOP, WRITE_INTERVAL, CoalescedWrites


class ManualLoop:
    """What the clock uses of an event loop: time, call_soon, call_at; run by hand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.soon: list[asyncio.Handle] = []
        self.timers: list[asyncio.TimerHandle] = []

    def time(self) -> float:
        return self.now

    def call_soon(self, callback: Callable[[], None]) -> asyncio.Handle:
        handle = asyncio.Handle(callback, (), self)  # type: ignore[arg-type]
        self.soon.append(handle)
        return handle

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, (), self)  # type: ignore[arg-type]
        self.timers.append(handle)
        return handle

    def _timer_handle_cancelled(self, handle: Any) -> None:
        pass

    def get_debug(self) -> bool:
        return False

    def end_turn(self) -> None:
        """Run what was called soon (the end of this loop turn)."""
        ready, self.soon = self.soon, []
        for handle in ready:
            if not handle.cancelled():
                handle._run()

    def sleep_until(self, when: float) -> None:
        """Time passes with nothing else waking the loop: due timers fire."""
        self.now = when
        due = [t for t in self.timers if t.when() <= when and not t.cancelled()]
        self.timers = [t for t in self.timers if t not in due]
        for timer in due:
            timer._run()
        self.end_turn()

    @property
    def timer_due(self) -> float | None:
        live = [t.when() for t in self.timers if not t.cancelled()]
        return min(live) if live else None


def writer(loop: ManualLoop, interval: float = WRITE_INTERVAL,
           sends: Callable[[], bool] = lambda: True) -> tuple[CoalescedWrites, list[float]]:
    """A connection's writes on ``loop``, and when they ran; ``sends`` says whether each
    had something to send."""
    times: list[float] = []

    def write() -> bool:
        times.append(loop.now)
        return sends()

    return CoalescedWrites(write, loop, interval=interval), times  # type: ignore[arg-type]


def test_after_a_quiet_while_a_write_goes_at_the_end_of_the_turn() -> None:
    loop = ManualLoop()
    writes, times = writer(loop)
    writes.soon()
    writes.soon()
    assert times == [] and writes.scheduled  # not inside the caller's turn
    loop.end_turn()
    assert times == [100.0] and loop.timer_due is None and not writes.scheduled


def half_a_millisecond_after_a_write(interval: float
                                     ) -> tuple[ManualLoop, CoalescedWrites, list[float]]:
    """A connection that wrote at 100.0; the loop's time is now 100.0005."""
    loop = ManualLoop()
    writes, times = writer(loop, interval)
    writes.soon()
    loop.end_turn()
    loop.now += 0.0005
    return loop, writes, times


def test_within_the_interval_writes_wait_for_a_timer_a_little_after_it() -> None:
    loop, writes, times = half_a_millisecond_after_a_write(0.002)
    for _ in range(3):  # asked three times, in different turns: one write
        writes.soon()
        loop.end_turn()
    assert times == [100.0]
    assert loop.timer_due is not None
    assert abs(loop.timer_due - (100.0 + 0.002 * BACKSTOP)) < 1e-6
    loop.sleep_until(loop.timer_due)
    assert len(times) == 2 and not writes.scheduled


def test_a_loop_woken_after_the_interval_writes_then_without_its_timer() -> None:
    """Under load something else (a publish, a reply) wakes the loop: the tick goes with it."""
    loop, writes, times = half_a_millisecond_after_a_write(0.002)
    writes.soon()  # within the interval: a timer
    timer = loop.timer_due
    assert timer is not None
    loop.now = 100.0 + 0.0021  # woken by something else, the interval up, the timer not due
    writes.soon()
    loop.end_turn()
    assert times == [100.0, 100.0021]
    assert loop.timer_due is None  # the timer was cancelled: no wake-up for nothing


def test_a_write_with_nothing_to_send_holds_nothing_back() -> None:
    """aioapns asks for a write after every reply it reads, usually with nothing to send:
    the next request still goes at once if the last real write is an interval ago."""
    loop = ManualLoop()
    sent: list[bool] = [True]
    writes, times = writer(loop, 0.002, sends=lambda: sent[-1])
    writes.soon()
    loop.end_turn()  # a request
    sent.append(False)
    loop.now += 0.0025
    writes.soon()  # the reply read: an empty write
    loop.end_turn()
    sent.append(True)
    loop.now += 0.0010  # 1 ms after the empty write, 3.5 ms after the request
    writes.soon()
    loop.end_turn()
    assert times == pytest.approx([100.0, 100.0025, 100.0035])
    assert loop.timer_due is None


def test_each_connection_has_its_own_clock() -> None:
    """Our reply on the XMPP stream does not hold back the next APNs request (Prosody
    publishes the next notification for an account once we answered the last)."""
    loop = ManualLoop()
    to_apns, apns = writer(loop)
    to_xmpp, xmpp = writer(loop)
    to_apns.soon()
    loop.end_turn()
    loop.now += 0.0005
    to_xmpp.soon()  # the reply to the XMPP server
    loop.end_turn()
    loop.now += 0.0010
    to_apns.soon()  # within the APNs connection's interval: it waits
    loop.end_turn()
    assert apns == [100.0] and xmpp == pytest.approx([100.0005])
    loop.now += 0.0030
    to_xmpp.soon()  # its own interval is up: at once, whatever the other does
    loop.end_turn()
    assert xmpp == pytest.approx([100.0005, 100.0045])


def test_now_writes_at_once_and_a_scheduled_write_still_follows() -> None:
    loop = ManualLoop()
    writes, times = writer(loop)
    writes.soon()
    writes.now()  # a full batch
    assert len(times) == 1
    loop.end_turn()  # whatever was asked after the batch still goes out
    assert len(times) == 2 and not writes.scheduled


async def test_on_a_real_loop_the_writes_happen() -> None:
    loop = asyncio.get_running_loop()
    written = asyncio.Event()

    def write() -> bool:
        written.set()
        return True

    writes = CoalescedWrites(write, loop)
    for _ in range(3):
        writes.soon()
        await asyncio.wait_for(written.wait(), 5)
        written.clear()
