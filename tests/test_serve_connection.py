"""`slixmpp-push serve` keeps one stream up for as long as it lasts, and
reconnects when the server drops it (regression: it used to give up waiting
after 30 s and reconnect over its live stream, which Prosody refuses)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fakes.xmpp_server import FakeComponentServer

from slixmpp_push.config import parse_config
from slixmpp_push.server import serve

JID = "push.localhost"
SECRET = "s3cret-component"


async def test_stays_connected_past_30_s_and_reconnects_when_dropped(tmp_path: Path,
                                                                    monkeypatch: object) -> None:
    (tmp_path / "secret").write_text(SECRET)
    async with FakeComponentServer(JID, SECRET) as server:
        config = parse_config({
            "xmpp": {"jid": JID, "port": server.port, "secret_file": "secret"},
            "appserver": {"store": "store.json"},
            "apps": {"console": {"type": "console"}},
        }, tmp_path)
        ready = asyncio.Event()
        task = asyncio.ensure_future(serve(config, ready=ready))
        try:
            await asyncio.wait_for(ready.wait(), 15)
            first = await server.wait_session()
            await asyncio.sleep(35)  # longer than any default timeout in slixmpp
            assert first.alive and len(server.sessions) == 1, server.sessions
            first.abort("server restart")
            second = await server.wait_session(after=first.index, timeout=15)
            assert second.alive and len(server.sessions) == 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
