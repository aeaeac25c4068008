"""One notification per page: recognise the user's server echoing our own push.

When ``push_notifier`` pages an account through this app server, each device
gets the page's own push (critical, with the page's title), and then a chat
message with the full text goes to the account. If the account is offline,
its server stores that message and publishes for it: without this guard each
device would show a second, generic "New message" notification for the page
it has just shown.

So the notifier announces the echo before sending the chat message
(:meth:`EchoGuard.expect`), and the app server swallows the next publish for
that node within the window (answered ``result``, not pushed). What it costs:

- a publish is recognised by node and time only when the server sends no
  sender (Prosody and ejabberd by default); when it does, only a publish from
  the bot's own JID is taken as the echo;
- if the server never publishes for the chat message (the account was
  online), the expectation lingers for the window, and another person's
  message to that account within it is not pushed by itself: the device
  still holds the page's notification, and the next message after it is
  pushed as usual. The window is short (``echo_window``, 15 s by default) and
  ``0`` turns the guard off.
- a call is never swallowed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from slixmpp import JID
from slixmpp.jid import InvalidJID

from ..models import Notification

#: Expectations kept at most; beyond it the expired ones are dropped first.
MAX_EXPECTED = 100_000


@dataclass(slots=True)
class _Expected:
    sender: str  # bare JID the chat message comes from
    until: float  # time.monotonic() deadline
    count: int  # chat messages sent, each echoed at most once


class EchoGuard:
    """Per node: publishes to swallow because they repeat a push we sent."""

    def __init__(self) -> None:
        self._expected: dict[str, _Expected] = {}
        self.suppressed = 0

    def __len__(self) -> int:
        return len(self._expected)

    def expect(self, node: str, sender: str, window: float) -> None:
        """The next publish for ``node`` within ``window`` seconds repeats our push."""
        if window <= 0:
            return
        now = time.monotonic()
        expected = self._expected.get(node)
        if expected is not None and expected.until > now:
            expected.count += 1
            expected.until = now + window
            return
        if len(self._expected) >= MAX_EXPECTED:
            self._prune(now)
        self._expected[node] = _Expected(sender, now + window, 1)

    def is_echo(self, node: str, notification: Notification) -> bool:
        """Whether this publish is an announced echo (and consume it if so)."""
        expected = self._expected.get(node)
        if expected is None:
            return False
        if expected.until <= time.monotonic():
            del self._expected[node]
            return False
        if notification.is_call or not _may_be_from(notification.sender, expected.sender):
            return False
        expected.count -= 1
        if expected.count <= 0:
            del self._expected[node]
        self.suppressed += 1
        return True

    def _prune(self, now: float) -> None:
        for node in [n for n, e in self._expected.items() if e.until <= now]:
            del self._expected[node]
        while len(self._expected) >= MAX_EXPECTED:  # all live: drop the oldest
            del self._expected[next(iter(self._expected))]


def _may_be_from(sender: str | None, expected: str) -> bool:
    if not sender:
        return True  # the server does not say (the default): time and node decide
    try:
        return JID(sender).bare == expected
    except InvalidJID:
        return False
