"""CoalescedWrites: one write for what is asked until then, at most one per interval."""

from __future__ import annotations

import asyncio

from slixmpp_push.coalesce import CoalescedWrites


async def test_the_first_write_goes_at_the_end_of_the_turn_then_once_per_interval() -> None:
    loop = asyncio.get_running_loop()
    times: list[float] = []
    writes = CoalescedWrites(lambda: times.append(loop.time()), loop, interval=0.2)
    asked = loop.time()
    writes.soon()
    writes.soon()
    assert times == [] and writes.scheduled  # not inside the caller's turn
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(times) == 1 and times[0] - asked < 0.1  # no interval to wait for

    for _ in range(3):  # asked three times within the interval: one write, when it is up
        writes.soon()
        await asyncio.sleep(0.01)
    assert len(times) == 1
    while writes.scheduled:
        await asyncio.sleep(0.01)
    assert len(times) == 2
    assert times[1] - times[0] >= 0.2 - loop._clock_resolution  # type: ignore[attr-defined]


async def test_now_writes_at_once_and_a_scheduled_write_still_follows() -> None:
    loop = asyncio.get_running_loop()
    calls: list[str] = []
    writes = CoalescedWrites(lambda: calls.append("write"), loop, interval=0.05)
    writes.soon()
    writes.now()  # a full batch
    assert calls == ["write"]
    while writes.scheduled:  # whatever was asked after the batch still goes out
        await asyncio.sleep(0.01)
    assert calls == ["write", "write"]
