"""The paging engine on its own: steps, repeat, final notice, ack expiry, resume."""

from __future__ import annotations

import asyncio
import logging

import pytest
from test_fault_stream import until

from slixmpp_push import MemoryStore, Priority
from slixmpp_push.notifier import Page, PageEngine, PageState, Policy, Step
from slixmpp_push.notifier.paging import duration


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
    # The ack expires (1.2 s) after the step to b was due (1.0 s): b paged by then would
    # show the ack did not stop it. After the expiry b is due 1.0 s later again: the
    # margins are wide, so that a loaded machine's late timers change nothing.
    policy = Policy("p", (Step(("a",), 1.0), Step(("b",), 1.0)), ack_timeout=1.2)
    paging, sent = await engine(policy)
    page, _ = await paging.open("k", "t", "", Priority.HIGH, "p")
    await paging.ack(page, "a")
    assert page.state is PageState.ACKED and page.acked_by == "a"
    await until(lambda: len(sent) == 2, "the ack expires and a is paged again", timeout=10)
    assert page.state is PageState.OPEN and [t for _, t, _ in sent] == [("a",), ("a",)]
    await paging.resolve(page, "a")
    assert paging.find(page.id) is None
    assert page.id not in paging.scheduled()  # resolved: nothing more
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


def paging_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records
            if r.name == "slixmpp_push.notifier.paging"]


async def test_each_turn_of_a_page_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    policy = Policy("oncall", (Step(("alice@x",), 0.3), Step(("group:sre", "bob@x"), 60)),
                    ack_timeout=0.2)
    paging, sent = await engine(policy)
    with caplog.at_level(logging.INFO, logger="slixmpp_push.notifier.paging"):
        page, _ = await paging.open("db1", "Disk full\non db1", "secret body text",
                                    Priority.CRITICAL, "oncall", source="alertmanager")
        await until(lambda: len(sent) == 2, "the second step")
        await paging.open("db1", "Disk full\non db1", "another body", Priority.CRITICAL,
                          "oncall", source="alertmanager")  # a duplicate: no line
        await paging.ack(page, "bob@x")
        await paging.ack(page, "bob@x")
        await until(lambda: len(sent) == 3, "paging again after the ack expired")
        await paging.ack(page, "alice@x")
        await paging.resolve(page, "alertmanager")
    await paging.stop()
    lines = paging_log(caplog)
    i = page.id
    assert lines[0] == (f"INFO page {i} opened (source alertmanager, policy oncall, critical):"
                        f" 'Disk full\\non db1'; paging alice@x")  # the newline escaped
    assert lines[1] == f"INFO page {i} escalated to step 2 of 2: paging group:sre, bob@x"
    assert lines[2].startswith(f"INFO page {i} acknowledged by bob@x after ")
    assert lines[3] == f"INFO page {i} acknowledged again by bob@x"
    assert lines[4] == (f"INFO page {i}: the ack of bob@x expired, neither renewed nor "
                        "resolved; paging again from step 1: alice@x")
    assert lines[5].startswith(f"INFO page {i} acknowledged by alice@x after ")
    assert lines[6].startswith(f"INFO page {i} resolved by alertmanager after ")
    assert lines[6].endswith(", acknowledged by alice@x")
    assert len(lines) == 7
    assert "body" not in caplog.text  # page bodies never reach the log


async def test_a_page_nobody_acks_is_a_warning_naming_the_final_notice(
        caplog: pytest.LogCaptureFixture) -> None:
    policy = Policy("p", (Step(("a@x",), 0.02),), repeat=2, final=("boss@x",))
    paging, sent = await engine(policy)
    with caplog.at_level(logging.INFO, logger="slixmpp_push.notifier.paging"):
        page, _ = await paging.open("k", "API down", "", Priority.HIGH, "p")
        await until(lambda: page.state is PageState.EXHAUSTED and len(sent) == 3,
                    "the final notice")
        await paging.resolve(page, "carol@x")
    await paging.stop()
    lines = paging_log(caplog)
    assert lines[1] == f"INFO page {page.id} escalated to step 1 of 1 (round 2 of 2): paging a@x"
    assert lines[2].startswith(f"WARNING page {page.id}: nobody acknowledged it after 2 "
                               "round(s) of 1 step(s) in ")
    assert lines[2].endswith("; final notice to boss@x")
    assert lines[3].startswith(f"INFO page {page.id} resolved by carol@x after ")
    assert lines[3].endswith(", nobody had acknowledged it, every step had run")


def test_durations_read_at_a_glance() -> None:
    assert [duration(s) for s in (0.4, 59.6, 125, 3600, 11220)] == [
        "0s", "1m00s", "2m05s", "1h00m", "3h07m"]
