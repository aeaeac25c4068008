"""Run the app server from a :class:`~slixmpp_push.config.Config`.

Builds the XMPP object (an XEP-0114 component or a client account), opens
the store and the providers *before* connecting, so that a bad key or an
unreadable store stops start-up with a clear message, then stays connected
(reconnecting with backoff) until SIGTERM or SIGINT.

With a PostgreSQL store, several ``serve`` processes may share the database: one is
active, the others wait as standbys (:mod:`~slixmpp_push.active_lock`) with only
``/health`` and ``/metrics`` up, neither the store opened nor XMPP connected. The one
that takes over loads the store as the last active one left it. An active one that
loses its lock stops and raises :class:`StoreError` (``serve`` exits 1): it cannot know
whether a standby has taken over, and a restart by the service manager finds out safely
(it comes back as the standby, or as the active one). Going back to standby in the same
process would have to rebuild every part (the XMPP object, plugins, providers, store)
and trust that nothing of the last term lingers: a fresh process is sure of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from slixmpp import ClientXMPP, ComponentXMPP
from slixmpp.basexmpp import BaseXMPP

from .appserver import PushAppServer
from .config import ALL_ACTIVE, Config, listen_error
from .connection import StreamKeeper
from .errors import StoreError
from .metrics import Metrics
from .providers import Provider
from .status_http import StatusServer
from .store import Store, create_store, is_database_url

if TYPE_CHECKING:
    from .active_lock import ActiveLock

log = logging.getLogger(__name__)


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
    store = create_store(config.store, password=config.store_password,
                         journal_limit=config.store_journal_limit)
    if metrics is not None and is_database_url(config.store):
        from .store.postgresql import PostgresStore  # asyncpg: only with a database

        if isinstance(store, PostgresStore):
            store.observe = metrics.observe_store
    shared = None
    if config.instances == ALL_ACTIVE:
        from .store.shared import SharedState

        shared = SharedState(config.store, password=config.store_password,
                             observe=metrics.observe_store if metrics is not None else None)
    xmpp.register_plugin("push_appserver", {
        "apps": config.apps,
        "store": store,
        "allowed_domains": config.allowed_domains,
        "delivery": config.delivery,
        "remote_disable": config.remote_disable,
        "admins": config.admins,
        "trusted_publishers": tuple(config.trusted_publishers),
        "echo_window": config.echo_window,
        "limits": config.limits,
        "providers": providers,
        "metrics": metrics,
        "shared": shared,
    })
    if config.notifier is not None:
        xmpp.register_plugin("xep_0184")  # delivery receipts, recorded on pages
        xmpp.register_plugin("push_notifier", {**config.notifier.plugin_config(),
                                               "chat_sender": _chat_sender(xmpp, config, store),
                                               # all-active: escalations on the lock holder
                                               "shared": shared, "leading": shared is None})
    if config.xmpp.mode == "client":
        # Without presence the server keeps messages to the bare JID offline:
        # people's acks would never reach the bot.
        xmpp.add_event_handler("session_start", lambda _: xmpp.send_presence())
    return xmpp


def _chat_sender(xmpp: BaseXMPP, config: Config, store: Store) -> Any:
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
                providers: dict[str, Provider] | None = None,
                handle_signals: bool = True) -> None:
    """Run until a signal (or cancellation); pending notifications stay stored.

    ``handle_signals=False`` leaves SIGINT and SIGTERM to the caller, which then
    stops the app server by cancelling it (the demo, which owns the process).

    A start-up failure (store, providers, a listen address) stops what had
    started and raises: a ConfigError names the key, a StoreError the file, a
    LoginRefused what the XMPP server refused (the first login only; later
    refusals are retried). With a PostgreSQL store it first waits as a standby
    until it holds the active lock (a signal meanwhile just returns), and raises
    StoreError when it loses that lock.
    """
    metrics = Metrics()
    xmpp = build_xmpp(config, providers, metrics)
    plugins: Any = xmpp.plugin  # slixmpp types only its own plugin names
    appserver: PushAppServer = plugins["push_appserver"]
    keeper = StreamKeeper(xmpp, config.xmpp, metrics,
                          all_active=config.instances == ALL_ACTIVE)
    if ready is not None:
        xmpp.add_event_handler("session_start", lambda _: ready.set())
    stopping = asyncio.Event()
    started: list[Any] = []  # what to stop, in reverse order
    connection: asyncio.Future[None] | None = None
    leading: asyncio.Future[None] | None = None  # all-active: the pager's lock, awaited
    lock: ActiveLock | None = None
    loop = asyncio.get_running_loop()
    # Before anything that waits: a standby must stop at once on SIGTERM.
    for sig in (signal.SIGTERM, signal.SIGINT) if handle_signals else ():
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)
    try:
        if config.metrics_listen is not None:  # first: a standby answers /health too
            status = StatusServer(metrics, *config.metrics_listen)
            await _listening("metrics.listen", config.metrics_listen, status.start())
            started.append(status)
        if config.instances == ALL_ACTIVE:
            metrics.set_active()  # every instance serves: none waits as a standby
        elif is_database_url(config.store):
            lock = await _become_active(config, metrics, stopping)
            if lock is None:
                return  # stopped while a standby
        await appserver.start()
        started.append(appserver)
        if config.notifier is not None:
            await plugins["push_notifier"].start()
            started.append(plugins["push_notifier"])
            if config.instances == ALL_ACTIVE:
                from .pager_leader import lead_pages

                leading = asyncio.ensure_future(lead_pages(
                    plugins["push_notifier"].engine, config.store, config.xmpp.jid, metrics,
                    password=config.store_password))
            if config.ingest is not None:
                from .notifier.ingest import AlertReceiver

                receiver = AlertReceiver(plugins["push_notifier"], config.ingest)
                started.append(receiver)  # its stop() also undoes a half-done start
                await _listening("ingest.listen", (config.ingest.host, config.ingest.port),
                                 receiver.start())
        connection = asyncio.ensure_future(
            keeper.run(stopping, before_connect=lock.confirm if lock is not None else None))
        ends = [connection, asyncio.ensure_future(stopping.wait())]
        if lock is not None:
            ends.append(asyncio.ensure_future(lock.lost.wait()))
        try:
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for end in ends[1:]:
                end.cancel()
        if lock is not None and lock.lost.is_set() and not stopping.is_set():
            xmpp.abort()  # not one more publish answered: a standby may be active already
            raise StoreError(f"{lock.problem}: stopped serving (the service manager starts "
                             "this instance again, as a standby if another is active)")
        if connection.done():
            connection.result()  # a LoginRefused: the finally below stops the rest
    finally:
        if connection is not None:
            log.info("stopping")
        stopping.set()
        keeper.close()
        if leading is not None:  # steps the pager down and lets its lock go
            leading.cancel()
            await asyncio.gather(leading, return_exceptions=True)
        for part in reversed(started):
            await part.stop()
        with contextlib.suppress(Exception):
            await xmpp.disconnect(wait=1.0)
        if connection is not None:
            connection.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connection
        if lock is not None:
            await lock.release()  # last: a standby starts once this one stopped writing


async def _become_active(config: Config, metrics: Metrics,
                         stopping: asyncio.Event) -> ActiveLock | None:
    """Wait as a standby until this process holds the database's active lock for its
    JID; None when ``stopping`` was set first (nothing is left open)."""
    from .active_lock import ActiveLock

    lock = ActiveLock(config.store, config.xmpp.jid, metrics, password=config.store_password)
    acquiring = asyncio.ensure_future(lock.acquire())
    signalled = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait((acquiring, signalled), return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
        if not acquiring.done():
            acquiring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquiring
    if acquiring.cancelled():
        log.info("stopping (a standby)")
        return None
    acquiring.result()  # a StoreError: the database refused the login, or has no such name
    if stopping.is_set():  # the lock came with the signal: let it go again
        await lock.release()
        return None
    return lock


async def _listening(key: str, address: tuple[str, int], start: Awaitable[None]) -> None:
    """Await a server's start; a port that cannot be bound is a ConfigError naming ``key``."""
    try:
        await start
    except OSError as exc:
        raise listen_error(key, *address, exc) from None
