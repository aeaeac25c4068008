"""Run the app server from a :class:`~slixmpp_push.config.Config`.

Builds the XMPP object (an XEP-0114 component or a client account), opens
the store and the providers *before* connecting, so that a bad key or an
unreadable store stops start-up with a clear message, then stays connected
(reconnecting with backoff) until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from slixmpp import ClientXMPP, ComponentXMPP
from slixmpp.basexmpp import BaseXMPP

from .appserver import PushAppServer
from .config import Config
from .metrics import Metrics
from .providers import Provider
from .status_http import StatusServer
from .store import TinyDBStore

log = logging.getLogger(__name__)

RECONNECT_MAX_DELAY = 30.0


def build_xmpp(config: Config, providers: dict[str, Provider] | None = None,
               metrics: Metrics | None = None) -> BaseXMPP:
    """The XMPP object with ``push_appserver`` registered from ``config``.

    ``providers`` replaces the providers of some apps (the demo shows its pushes).
    """
    import slixmpp_push  # noqa: F401  (registers the plugin)

    xmpp: BaseXMPP
    if config.xmpp.mode == "component":
        xmpp = ComponentXMPP(config.xmpp.jid, config.xmpp.secret, config.xmpp.host,
                             config.xmpp.port)
    else:
        xmpp = ClientXMPP(config.xmpp.jid, config.xmpp.secret)
    for plugin in ("xep_0030", "xep_0004", "xep_0050", "xep_0199"):
        xmpp.register_plugin(plugin)
    store = TinyDBStore(config.store)
    xmpp.register_plugin("push_appserver", {
        "apps": config.apps,
        "store": store,
        "allowed_domains": config.allowed_domains,
        "delivery": config.delivery,
        "remote_disable": config.remote_disable,
        "admins": config.admins,
        "providers": providers,
        "metrics": metrics,
    })
    if config.notifier is not None:
        xmpp.register_plugin("xep_0184")  # delivery receipts, recorded on pages
        xmpp.register_plugin("push_notifier", {**config.notifier.plugin_config(),
                                               "chat_sender": _chat_sender(xmpp, config, store)})
    if config.xmpp.mode == "client":
        # Without presence the server keeps messages to the bare JID offline:
        # people's acks would never reach the bot.
        xmpp.add_event_handler("session_start", lambda _: xmpp.send_presence())
    return xmpp


def _chat_sender(xmpp: BaseXMPP, config: Config, store: TinyDBStore) -> Any:
    """Plain chat, OMEMO-encrypted, and/or copied to a group chat, as configured."""
    settings = config.notifier
    assert settings is not None
    chat: Any = None
    if settings.omemo is not None:
        from .notifier.omemo import enable_omemo

        chat = enable_omemo(xmpp, store, settings.omemo.btbv,
                            trusted=settings.omemo.trusted,
                            fallback_plaintext=settings.omemo.fallback_plaintext)
    if settings.muc is not None:
        from .notifier.muc import MucChat

        xmpp.register_plugin("xep_0045")
        chat = MucChat(xmpp, settings.muc.room, chat, nick=settings.muc.nick,
                       password=settings.muc.password, window=settings.muc.window)
    return chat


async def serve(config: Config, ready: asyncio.Event | None = None,
                providers: dict[str, Provider] | None = None) -> None:
    """Run until a signal (or cancellation); pending notifications stay stored."""
    metrics = Metrics()
    xmpp = build_xmpp(config, providers, metrics)
    plugins: Any = xmpp.plugin  # slixmpp types only its own plugin names
    appserver: PushAppServer = plugins["push_appserver"]
    await appserver.start()
    status: StatusServer | None = None
    if config.metrics_listen is not None:
        status = StatusServer(metrics, *config.metrics_listen)
        await status.start()
    receiver: Any = None
    if config.notifier is not None:
        await plugins["push_notifier"].start()
        if config.ingest is not None:
            from .notifier.ingest import AlertReceiver

            receiver = AlertReceiver(plugins["push_notifier"], config.ingest)
            await receiver.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)
    gone = asyncio.Event()  # the stream ended (after a session or a refused handshake)

    def on_session(_: object) -> None:
        log.info("connected to %s:%s as %s", config.xmpp.host, config.xmpp.port,
                 xmpp.boundjid)
        if ready is not None:
            ready.set()

    xmpp.add_event_handler("session_start", on_session)
    xmpp.add_event_handler("disconnected", lambda _: gone.set())
    xmpp.add_event_handler("connection_failed", lambda error: log.warning(
        "cannot connect to %s:%s: %s (retrying)", config.xmpp.host, config.xmpp.port, error))
    xmpp.add_event_handler("stream_error", lambda error: log.error(
        "the server closed the stream: %s %s", error["condition"], error["text"]))

    async def stay_connected() -> None:
        # slixmpp retries a failed TCP connect by itself; after a stream ends
        # (the server restarted, or refused our handshake) we connect again.
        delay = 1.0
        while not stopping.is_set():
            gone.clear()
            began = loop.time()
            log.info("connecting to %s:%s as %s", config.xmpp.host, config.xmpp.port,
                     config.xmpp.jid)
            if config.xmpp.mode == "component":
                xmpp.connect()
            else:
                xmpp.connect(config.xmpp.host, config.xmpp.port)
            await gone.wait()
            if stopping.is_set():
                return
            if loop.time() - began > 60:
                delay = 1.0  # it had been up a while: not a tight failure loop
            log.warning("disconnected; reconnecting in %.0f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    keeper = asyncio.ensure_future(stay_connected())
    try:
        await stopping.wait()
    finally:
        log.info("stopping")
        stopping.set()
        if status is not None:
            await status.stop()
        if receiver is not None:
            await receiver.stop()
        if config.notifier is not None:
            await plugins["push_notifier"].stop()
        await appserver.stop()
        with contextlib.suppress(Exception):
            await xmpp.disconnect(wait=1.0)
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await keeper
