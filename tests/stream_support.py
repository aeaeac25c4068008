"""push_appserver on a SlixTest mock component stream, for the stream tests.

:class:`AppServerStreamTest` starts the plugin as ``push.localhost`` with the
ad-hoc command plugins it needs, on a :class:`MemoryStore`, stops it after
each test, and reads back what it sent (:meth:`~AppServerStreamTest.sent_raw`).
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from slixmpp.test import SlixTest

import slixmpp_push  # noqa: F401  (registers the plugin)
from slixmpp_push import AppConfig, MemoryStore
from slixmpp_push.providers.base import Provider


class AppServerStreamTest(SlixTest):
    """A SlixTest case whose ``setUp`` calls :meth:`start_appserver`."""

    #: Unescape XML entities in what :meth:`sent_raw` returns (for tests that
    #: read form values and notes as text).
    unescape: ClassVar[bool] = False

    def start_appserver(self, apps: Sequence[AppConfig], provider: Provider,
                        **settings: Any) -> None:
        """Open the component stream and start push_appserver for ``apps`` on a fresh
        ``self.store``: ``provider`` serves the first app, the others get their default."""
        self.stream_start(mode="component", jid="push.localhost", server="localhost",
                          plugins=["xep_0030", "xep_0004", "xep_0050"])
        self.store = MemoryStore()
        self.xmpp.register_plugin("push_appserver", {
            "apps": list(apps), "store": self.store, "providers": {apps[0].id: provider},
            **settings})
        self.plugin = self.xmpp["push_appserver"]
        self.plugin.session_bind(self.xmpp.boundjid)
        self.run_coro(self.plugin.start())

    def tearDown(self) -> None:
        self.run_coro(self.plugin.stop())
        super().tearDown()

    def sent_raw(self, timeout: float = 2.0) -> str:
        """The next stanza the plugin sent, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.wait_(0.01)
            self.wait_for_send_queue()
            data = self.xmpp.socket.next_sent()
            if data:
                text = data.decode() if isinstance(data, bytes) else data
                return html.unescape(text) if self.unescape else text
        self.fail("nothing was sent")
