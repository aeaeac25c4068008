"""EchoGuard: the user's server's publish for a page's chat message is not pushed twice."""

from __future__ import annotations

import pytest

from slixmpp_push.appserver import echoes
from slixmpp_push.appserver.echoes import EchoGuard
from slixmpp_push.models import Jingle, Notification

BOT = "push.example.org"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(echoes.time, "monotonic", fake)
    return fake


def test_the_announced_echo_is_swallowed_once(clock: Clock) -> None:
    guard = EchoGuard()
    assert not guard  # empty: the publish path skips it at no cost
    guard.expect("n1", BOT, window=15)
    assert guard.is_echo("n1", Notification(message_count=1, body="New Message!"))
    assert not guard.is_echo("n1", Notification(message_count=1))  # the next one is real
    assert guard.suppressed == 1 and len(guard) == 0


def test_other_nodes_are_untouched(clock: Clock) -> None:
    guard = EchoGuard()
    guard.expect("n1", BOT, window=15)
    assert not guard.is_echo("n2", Notification(message_count=1))
    assert len(guard) == 1


def test_an_expired_expectation_swallows_nothing(clock: Clock) -> None:
    guard = EchoGuard()
    guard.expect("n1", BOT, window=15)
    clock.now += 15.01
    assert not guard.is_echo("n1", Notification(message_count=1))
    assert len(guard) == 0


def test_a_known_sender_must_be_the_bot(clock: Clock) -> None:
    guard = EchoGuard()
    guard.expect("n1", BOT, window=15)
    assert not guard.is_echo("n1", Notification(sender="bob@example.org/phone"))
    assert not guard.is_echo("n1", Notification(sender="not a jid@@"))
    assert guard.is_echo("n1", Notification(sender=f"{BOT}"))


def test_a_call_is_never_swallowed(clock: Clock) -> None:
    guard = EchoGuard()
    guard.expect("n1", BOT, window=15)
    assert not guard.is_echo("n1", Notification(jingle=Jingle(sid="s")))
    assert not guard.is_echo("n1", Notification(encrypted="e", iv="i", encrypted_type="voip"))
    assert guard.is_echo("n1", Notification(encrypted="e", iv="i"))


def test_two_chat_messages_two_echoes_and_the_window_restarts(clock: Clock) -> None:
    guard = EchoGuard()
    guard.expect("n1", BOT, window=15)
    clock.now += 10
    guard.expect("n1", BOT, window=15)  # an escalation repeat: a second chat message
    clock.now += 10  # past the first window, inside the second
    assert guard.is_echo("n1", Notification())
    assert guard.is_echo("n1", Notification())
    assert not guard.is_echo("n1", Notification())


def test_window_zero_turns_it_off(clock: Clock) -> None:
    guard = EchoGuard()
    guard.expect("n1", BOT, window=0)
    assert not guard
    assert not guard.is_echo("n1", Notification())


def test_memory_is_bounded(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(echoes, "MAX_EXPECTED", 10)
    guard = EchoGuard()
    for i in range(5):
        guard.expect(f"old{i}", BOT, window=1)
    clock.now += 2
    for i in range(20):
        guard.expect(f"live{i}", BOT, window=60)
    assert len(guard) <= 10
    assert guard.is_echo("live19", Notification())  # the newest are kept
    assert not guard.is_echo("old0", Notification())
