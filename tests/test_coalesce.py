"""CoalescedWrites: one write for what is asked until then, at most one per interval."""

from __future__ import annotations

import asyncio

from slixmpp_push.coalesce import WRITE_INTERVAL, CoalescedWrites


class Recorder:
    """The write: notes when it ran and wakes whoever waits for the next one."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.times: list[float] = []
        self.written = asyncio.Event()

    def __call__(self) -> None:
        self.times.append(self.loop.time())
        self.written.set()

    async def next(self) -> None:
        self.written.clear()
        await asyncio.wait_for(self.written.wait(), 5)


async def test_the_first_write_goes_at_the_end_of_the_turn_then_once_per_interval() -> None:
    loop = asyncio.get_running_loop()
    record = Recorder(loop)
    writes = CoalescedWrites(record, loop, interval=0.2)
    asked = loop.time()
    writes.soon()
    writes.soon()
    assert record.times == [] and writes.scheduled  # not inside the caller's turn
    await record.next()
    assert len(record.times) == 1 and record.times[0] - asked < 0.1  # no interval to wait for

    for _ in range(3):  # asked three times within the interval: one write, when it is up
        writes.soon()
        await asyncio.sleep(0.01)
    assert len(record.times) == 1
    await record.next()
    assert len(record.times) == 2
    assert record.times[1] - record.times[0] >= 0.2 - loop._clock_resolution  # type: ignore[attr-defined]


async def test_now_writes_at_once_and_a_scheduled_write_still_follows() -> None:
    loop = asyncio.get_running_loop()
    record = Recorder(loop)
    writes = CoalescedWrites(record, loop, interval=0.05)
    writes.soon()
    writes.now()  # a full batch
    assert len(record.times) == 1
    await record.next()  # whatever was asked after the batch still goes out
    assert len(record.times) == 2 and not writes.scheduled


async def test_connections_of_one_loop_write_on_the_same_tick() -> None:
    """The APNs connection and the XMPP stream write in the same wake-up under load."""
    loop = asyncio.get_running_loop()
    apns, xmpp = Recorder(loop), Recorder(loop)
    to_apns, to_xmpp = CoalescedWrites(apns, loop), CoalescedWrites(xmpp, loop)
    to_apns.soon()
    await apns.next()  # a tick: the next is WRITE_INTERVAL away
    to_apns.soon()
    await asyncio.sleep(0)
    to_xmpp.soon()  # asked a turn later, written on the same tick
    await asyncio.gather(apns.next(), xmpp.next())
    resolution = loop._clock_resolution  # type: ignore[attr-defined]
    # Not at once (its own first write would be): at the tick, with the other connection.
    assert xmpp.times[-1] - apns.times[0] >= WRITE_INTERVAL - resolution
    assert abs(xmpp.times[-1] - apns.times[-1]) < WRITE_INTERVAL / 2
