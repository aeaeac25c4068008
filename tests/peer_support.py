"""push_appserver as the component of the fake XEP-0114 server
(tests/fakes/xmpp_server.py), over a real TCP stream on loopback: for tests that
send many stanzas at once and read every reply, as a user's server would."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fakes.xmpp_server import FakeComponentServer
from slixmpp import ComponentXMPP

import slixmpp_push  # noqa: F401  (registers the plugin)
from slixmpp_push import AppConfig, MemoryStore, Store
from slixmpp_push.appserver import PushAppServer
from slixmpp_push.providers.base import Provider

COMPONENT = "push.localhost"
SECRET = "peer-secret"


@contextlib.asynccontextmanager
async def appserver_on_fake_server(
        apps: Sequence[AppConfig], providers: dict[str, Provider], store: Store | None = None,
        **settings: Any) -> AsyncIterator[tuple[FakeComponentServer, PushAppServer]]:
    """The fake server and a started push_appserver whose commands are advertised."""
    async with FakeComponentServer(COMPONENT, SECRET) as server:
        xmpp = ComponentXMPP(COMPONENT, SECRET, "127.0.0.1", server.port)
        for plugin in ("xep_0030", "xep_0004", "xep_0050"):
            xmpp.register_plugin(plugin)
        xmpp.register_plugin("push_appserver", {
            "apps": list(apps), "providers": providers,
            "store": store if store is not None else MemoryStore(), **settings})
        appserver: PushAppServer = xmpp.plugin["push_appserver"]
        started = asyncio.get_running_loop().create_future()
        xmpp.add_event_handler("session_start",
                               lambda _: started.done() or started.set_result(None))
        xmpp.connect()
        await asyncio.wait_for(started, 15)
        await appserver.start()
        try:
            yield server, appserver
        finally:
            await appserver.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(xmpp.disconnect(wait=1.0), 3)
