"""The paging engine on its own: steps, repeat, final notice, ack expiry, resume."""

from __future__ import annotations

import asyncio

from slixmpp_push import MemoryStore, Priority
from slixmpp_push.notifier import Page, PageEngine, PageState, Policy, Step


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[str, ...], str]] = []

    async def __call__(self, page: Page, targets: tuple[str, ...], reason: str) -> None:
        self.sent.append((page.id, targets, reason))
        for target in targets:
            if target not in page.paged:
                page.paged.append(target)


Sent = list[tuple[str, tuple[str, ...], str]]


async def engine(policy: Policy, store: MemoryStore | None = None) -> tuple[PageEngine, Sent]:
    store = store or MemoryStore()
    await store.open()
    recorder = Recorder()
    return PageEngine(store, {policy.name: policy}, recorder), recorder.sent


async def test_steps_repeat_then_final_notice() -> None:
    policy = Policy("p", (Step(("a",), 0.05), Step(("b",), 0.05)), repeat=2, final=("boss",))
    paging, sent = await engine(policy)
    page, created = await paging.open("k", "t", "", Priority.HIGH, "p")
    assert created
    await asyncio.sleep(0.5)
    assert [(t, r) for _, t, r in sent] == [(("a",), "page"), (("b",), "page"),
                                            (("a",), "page"), (("b",), "page"),
                                            (("boss",), "final")]
    assert page.state is PageState.EXHAUSTED
    await paging.stop()


async def test_ack_stops_and_expires_into_a_new_escalation() -> None:
    policy = Policy("p", (Step(("a",), 0.1), Step(("b",), 0.1)), ack_timeout=0.2)
    paging, sent = await engine(policy)
    page, _ = await paging.open("k", "t", "", Priority.HIGH, "p")
    await paging.ack(page, "a")
    assert page.state is PageState.ACKED and page.acked_by == "a"
    await asyncio.sleep(0.15)
    assert len(sent) == 1  # the ack stopped the step to b
    await asyncio.sleep(0.15)  # past ack_timeout: pages a again from the first step
    assert page.state is PageState.OPEN and [t for _, t, _ in sent] == [("a",), ("a",)]
    await paging.resolve(page, "a")
    assert paging.find(page.id) is None
    await asyncio.sleep(0.25)
    assert len(sent) == 2  # resolved: nothing more
    await paging.stop()


async def test_duplicate_key_updates_instead_of_paging() -> None:
    paging, sent = await engine(Policy("p", (Step(("a",), 60),)))
    page, _ = await paging.open("k", "t", "one", Priority.HIGH, "p")
    again, created = await paging.open("k", "t", "two", Priority.HIGH, "p")
    assert again is page and not created and page.body == "two" and len(sent) == 1
    await paging.stop()


async def test_resume_keeps_the_step_and_its_time() -> None:
    store = MemoryStore()
    policy = Policy("p", (Step(("a",), 0.2), Step(("b",), 60)))
    paging, _ = await engine(policy, store)
    page, _ = await paging.open("k", "t", "", Priority.CRITICAL, "p")
    await paging.stop()  # "restart" before the step to b is due
    resumed, sent = await engine(policy, store)
    resumed.resume()
    assert resumed.find(page.id) is not None
    await asyncio.sleep(0.35)
    assert [t for _, t, _ in sent] == [("b",)]
    await resumed.stop()
