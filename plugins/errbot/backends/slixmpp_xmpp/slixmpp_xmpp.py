"""errbot backend ``SlixmppXMPP``: errbot's XMPP backend on a current slixmpp.

errbot 6.2.1, the newest release, cannot run over XMPP with slixmpp 1.9 or later:
its backend calls ``ClientXMPP.process()`` (removed in slixmpp 1.9), would hand a
``(host, port)`` server to ``connect()`` as the host name, never reconnects, and
handles messages on slixmpp's event loop, where errbot waits for every admin
command (``!plugin config``…) to finish: the connection freezes meanwhile, and
a command that needs the loop waits for ever. This backend keeps errbot's
``XMPPBackend`` (identifiers, rooms, replies, presence) and replaces:

- the connection: errbot's main thread runs slixmpp's loop; a stanza sent from
  one of errbot's other threads is handed over to that loop;
- the thread model: errbot's handlers (messages, presence, connect, disconnect)
  run in arrival order on one thread of their own, never on the loop;
- reconnection: a dropped connection is retried with errbot's back-off (1 s,
  then 1.75 times the last plus up to 3 s of jitter, at most 10 min);
- stopping: SIGINT and SIGTERM deactivate the plugins, let the work they handed
  to the loop finish, then close the stream.

Settings in errbot's ``config.py``::

    BACKEND = "SlixmppXMPP"
    BOT_EXTRA_BACKEND_DIR = "/path/to/slixmpp-push/plugins/errbot/backends"
    BOT_IDENTITY = {
        "username": "bot@example.org",
        "password": "…",
        "server": ("xmpp.example.org", 5222),  # optional: default, the domain's DNS SRV
        "tls": "starttls",  # default; "direct" (TLS from the first byte, port 5223),
    }                       # or "none" (plain TCP: a test server on loopback only)

errbot's ``XMPP_FEATURE_MECHANISMS``, ``XMPP_KEEPALIVE_INTERVAL``, ``XMPP_CA_CERT_FILE``,
``XMPP_USE_IPV6`` and ``XMPP_XHTML_IM`` keep their meaning.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

# The module, not its classes: errbot loads the one ErrBot subclass this module holds.
from errbot.backends import xmpp as errbot_xmpp
from slixmpp import JID, ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream import StanzaBase

log = logging.getLogger(__name__)

TLS_MODES = ("starttls", "direct", "none")
PLUGINS = ("xep_0030", "xep_0045", "xep_0199", "xep_0203", "xep_0249")  # errbot's choice
STABLE_SESSION = 60.0  # seconds a session must last for the back-off to start over
STOP_GRACE = 10.0  # seconds the plugins' deactivation work on the loop gets at shutdown
Handler = Callable[[Any], Any]


class Server(NamedTuple):
    host: str
    port: int


def read_server(identity: Mapping[str, Any]) -> Server | None:
    """``BOT_IDENTITY['server']``: errbot's ``(host, port)``; None to resolve the domain."""
    server = identity.get("server")
    if server is None:
        return None
    if (not isinstance(server, tuple | list) or len(server) != 2
            or not isinstance(server[0], str) or not server[0]
            or type(server[1]) is not int or not 0 < server[1] < 65536):
        raise ValueError(f"BOT_IDENTITY['server']: must be (host, port), for example "
                         f"('xmpp.example.org', 5222); got {server!r}")
    return Server(server[0], server[1])


def read_tls(identity: Mapping[str, Any]) -> str:
    """``BOT_IDENTITY['tls']``: how the stream is encrypted (default ``starttls``)."""
    tls = identity.get("tls", "starttls")
    if tls not in TLS_MODES:
        raise ValueError(f"BOT_IDENTITY['tls']: must be one of "
                         f"{', '.join(map(repr, TLS_MODES))}; got {tls!r}")
    return str(tls)


class LoopClient(ClientXMPP):
    """A ``ClientXMPP`` whose ``send()`` may be called from any thread.

    slixmpp is not thread-safe: a stanza queued from another thread waits until the
    loop wakes up for something else (a keepalive, minutes later). errbot sends its
    replies from its thread pool.
    """

    def on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def send(self, data: StanzaBase | str, use_filters: bool = True) -> None:
        if self.loop.is_closed():
            log.warning("Not sent, the bot has stopped: %.200s", data)
        elif self.on_loop() or not self.loop.is_running():
            super().send(data, use_filters)
        else:
            self.loop.call_soon_threadsafe(super().send, data, use_filters)


class SlixmppConnection:
    """What errbot's backend uses of its ``XMPPConnection`` (``client``, ``connect``,
    ``add_event_handler``…), on a client bound to ``loop``.

    The handlers errbot adds do not run on the loop: ``dispatch`` hands them over.
    """

    def __init__(self, jid: str, password: str, *, loop: asyncio.AbstractEventLoop,
                 dispatch: Callable[[Handler, Any], None], server: Server | None, tls: str,
                 feature: Mapping[str, Any], keepalive: int | None, ca_cert: str | None,
                 use_ipv6: bool | None) -> None:
        self.loop = loop
        self.server = server
        self._dispatch = dispatch
        self._handlers: dict[tuple[str, Handler], Handler] = {}
        mechanisms = dict(feature)
        if tls == "none":
            mechanisms.setdefault("unencrypted_scram", True)  # SCRAM never sends the password
        self.client = LoopClient(jid, password, plugin_config={"feature_mechanisms": mechanisms},
                                 loop=loop)
        self.client.enable_direct_tls = tls == "direct"
        self.client.enable_starttls = tls == "starttls"
        self.client.enable_plaintext = tls == "none"
        for plugin in PLUGINS:
            self.client.register_plugin(plugin)
        if keepalive is not None:
            self.client.whitespace_keepalive = True
            self.client.whitespace_keepalive_interval = keepalive
        if use_ipv6 is not None:
            self.client.use_ipv6 = use_ipv6
        self.client.ca_certs = Path(ca_cert) if ca_cert else None  # for TLS certificates
        self.client.add_event_handler("session_start", self._session_start)

    async def _session_start(self, _event: Any) -> None:
        self.client.send_presence()
        try:
            await self.client.get_roster()
        except (IqError, IqTimeout) as exc:
            log.warning("The roster could not be fetched: %s", exc)

    def connect(self) -> SlixmppConnection:
        if self.server is None:
            self.client.connect()
        else:
            self.client.connect(self.server.host, self.server.port)
        return self

    def disconnect(self) -> asyncio.Future[Any]:
        return self.client.disconnect(wait=2.0)

    def add_event_handler(self, name: str, cb: Handler) -> None:
        def handler(event: Any) -> None:
            self._dispatch(cb, event)

        self._handlers[(name, cb)] = handler
        self._on_loop(self.client.add_event_handler, name, handler)

    def del_event_handler(self, name: str, cb: Handler) -> None:
        handler = self._handlers.pop((name, cb), None)
        if handler is not None:
            self._on_loop(self.client.del_event_handler, name, handler)

    def _on_loop(self, function: Callable[..., Any], *args: Any) -> None:
        if self.client.on_loop() or not self.loop.is_running():
            function(*args)
        else:
            self.loop.call_soon_threadsafe(function, *args)


def _log_failure(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("errbot handler failed", exc_info=future.exception())


class SlixmppXMPPBackend(errbot_xmpp.XMPPBackend):
    """errbot's XMPP backend with the connection, threads and reconnection above."""

    def __init__(self, config: Any) -> None:
        identity = config.BOT_IDENTITY
        self._server = read_server(identity)
        self._tls = read_tls(identity)
        self._loop = asyncio.new_event_loop()
        self._errbot_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="errbot-handlers")
        self._stopping = False  # no reconnecting
        self._closed = False  # errbot's handlers are no longer called
        self._reconnect: asyncio.TimerHandle | None = None
        self._session_began: float | None = None
        super().__init__(config)  # calls create_connection()
        client = self.conn.client
        client.add_event_handler("session_start", self._on_session_start)
        client.add_event_handler("disconnected", self._on_disconnected)
        client.add_event_handler("connection_failed", self._on_connection_failed)
        client.add_event_handler("failed_all_auth", self._on_failed_auth)
        client.add_event_handler("stream_error", self._on_stream_error)

    def create_connection(self) -> SlixmppConnection:
        return SlixmppConnection(
            self.jid, self.password, loop=self._loop, dispatch=self._dispatch,
            server=self._server, tls=self._tls, feature=self.feature,
            keepalive=self.keepalive, ca_cert=self.ca_cert, use_ipv6=self.use_ipv6)

    def _dispatch(self, handler: Handler, event: Any) -> None:
        """Run one of errbot's handlers on errbot's handler thread, in arrival order."""
        if not self._closed:
            self._errbot_thread.submit(handler, event).add_done_callback(_log_failure)

    # -- connection events, on the loop ------------------------------------------------
    def _on_session_start(self, _event: Any) -> None:
        self._session_began = self._loop.time()
        log.info("XMPP session started as %s", self.conn.client.boundjid)

    def _on_disconnected(self, reason: Any) -> None:
        if self._stopping or self._reconnect is not None:
            return
        began, self._session_began = self._session_began, None
        if began is not None and self._loop.time() - began >= STABLE_SESSION:
            self.reset_reconnection_count()
        delay = self._next_delay()
        log.warning("XMPP connection lost (%s): reconnecting in %.1f s (attempt %d)",
                    reason or "closed", delay, self._reconnection_count)
        self._reconnect = self._loop.call_later(delay, self._connect_again)

    def _connect_again(self) -> None:
        self._reconnect = None
        if not self._stopping:
            self.conn.connect()

    def _next_delay(self) -> float:
        """errbot's back-off (``Backend._delay_reconnect``), without sleeping on the loop."""
        delay = float(self._reconnection_delay)
        self._reconnection_delay = min(delay * self._reconnection_multiplier,
                                       self._reconnection_max_delay)
        self._reconnection_delay += random.uniform(*self._reconnection_jitter)
        self._reconnection_count += 1
        return delay

    def _on_connection_failed(self, error: Any) -> None:
        where = f"{self._server.host}:{self._server.port}" if self._server else "the server"
        log.warning("Cannot connect to %s: %s (slixmpp tries again)", where, error)

    def _on_failed_auth(self, _event: Any) -> None:
        log.error("The server refused the login of %s: check BOT_IDENTITY['username'] and "
                  "BOT_IDENTITY['password'] (and BOT_IDENTITY['tls']: without TLS only SCRAM "
                  "is allowed)", self.jid)

    def _on_stream_error(self, error: Any) -> None:
        log.warning("The server closed the stream: %s %s", error["condition"], error["text"])

    # -- errbot's entry point ----------------------------------------------------------
    def serve_forever(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._stopping = self._closed = True
            self._errbot_thread.shutdown(wait=True)
            self.shutdown()  # errbot's: storage, plugin storage, repositories
            self._close_loop()

    def _close_loop(self) -> None:
        """Cancel what is left (slixmpp's send queue), as asyncio.run does, and close."""
        left = asyncio.all_tasks(self._loop)
        for task in left:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    async def _serve(self) -> None:
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):  # errbot's !shutdown sends SIGINT
            self._loop.add_signal_handler(signum, stop.set)
        try:
            self.conn.connect()
            await stop.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._loop.remove_signal_handler(signum)
        log.info("Stopping: deactivating the plugins, then closing the XMPP stream")
        self._stopping = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        self.conn.client.cancel_connection_attempt()
        before = asyncio.all_tasks()
        try:
            await asyncio.wrap_future(self._errbot_thread.submit(self.disconnect_callback))
        except Exception:
            log.exception("Deactivating the plugins failed")
        self._closed = True
        handed_over = asyncio.all_tasks() - before  # e.g. a plugin's teardown coroutine
        if handed_over:
            _, late = await asyncio.wait(handed_over, timeout=STOP_GRACE)
            if late:
                log.warning("%d task(s) of the plugins still running after %.0f s: "
                            "stopping anyway", len(late), STOP_GRACE)
        if self.conn.client.is_connected():
            await self.conn.disconnect()

    # -- identifiers -------------------------------------------------------------------
    def build_identifier(self, txtrep: str) -> Any:
        """A person, a room or a room occupant, told apart by the rooms the bot is in.

        errbot's own asks the server (disco#info) through slixmpp's former blocking
        API: with a current slixmpp it fails, and errbot's threads must not wait for
        the loop anyway.
        """
        node, domain, resource = errbot_xmpp.split_identifier(txtrep)
        joined = self.conn.client.plugin["xep_0045"].get_joined_rooms()
        if JID(f"{node}@{domain}").bare in {JID(room).bare for room in joined}:
            return self._build_room_occupant(txtrep) if resource else self.query_room(txtrep)
        return self._build_person(txtrep)
