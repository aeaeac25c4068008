"""CoalescedWrites: one write for what is asked until then, on a clock shared by the loop.

The rules are checked on a loop whose time the test sets (:class:`ManualLoop`), so that
no assertion depends on how fast this machine is; the last test runs a real loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

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


def writer(loop: ManualLoop, interval: float = WRITE_INTERVAL
           ) -> tuple[CoalescedWrites, list[float]]:
    times: list[float] = []
    writes = CoalescedWrites(lambda: times.append(loop.now), loop,  # type: ignore[arg-type]
                             interval=interval + 1e-9)  # a clock of its own
    return writes, times


def test_after_a_quiet_while_a_write_goes_at_the_end_of_the_turn() -> None:
    loop = ManualLoop()
    writes, times = writer(loop)
    writes.soon()
    writes.soon()
    assert times == [] and writes.scheduled  # not inside the caller's turn
    loop.end_turn()
    assert times == [100.0] and loop.timer_due is None and not writes.scheduled


def test_within_the_interval_writes_wait_for_a_timer_a_little_after_it() -> None:
    loop = ManualLoop()
    writes, times = writer(loop, 0.002)
    writes.soon()
    loop.end_turn()
    loop.now += 0.0005
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
    loop = ManualLoop()
    writes, times = writer(loop, 0.002)
    writes.soon()
    loop.end_turn()
    loop.now += 0.0005
    writes.soon()  # within the interval: a timer
    timer = loop.timer_due
    assert timer is not None
    loop.now = 100.0 + 0.0021  # woken by something else, the interval up, the timer not due
    writes.soon()
    loop.end_turn()
    assert times == [100.0, 100.0021]
    assert loop.timer_due is None  # the timer was cancelled: no wake-up for nothing


def test_connections_of_one_clock_write_on_the_same_tick() -> None:
    loop = ManualLoop()
    to_apns = CoalescedWrites(lambda: written.append("apns"), loop)  # type: ignore[arg-type]
    to_xmpp = CoalescedWrites(lambda: written.append("xmpp"), loop)  # type: ignore[arg-type]
    written: list[str] = []
    to_apns.soon()
    loop.end_turn()
    assert written == ["apns"]
    loop.now += WRITE_INTERVAL / 4
    to_apns.soon()
    loop.end_turn()
    to_xmpp.soon()  # asked a turn later: the same tick
    loop.end_turn()
    assert written == ["apns"]
    assert loop.timer_due is not None
    loop.sleep_until(loop.timer_due)
    assert written == ["apns", "apns", "xmpp"]


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
    writes = CoalescedWrites(written.set, loop)
    for _ in range(3):
        writes.soon()
        await asyncio.wait_for(written.wait(), 5)
        written.clear()
