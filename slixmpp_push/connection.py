"""Keep the app server's XMPP stream up, and tell the truth about it.

slixmpp connects and parses, but it cannot tell a stream that stopped carrying
stanzas from a quiet one: a server that restarts the stream (a second
``<stream:stream>`` header nests every later stanza inside a bogus element), a
hung server, or a half-open TCP connection all leave the component "connected"
and deaf. And it retries a refused login forever without saying why.
:class:`StreamKeeper` runs the connection for ``serve``:

- it connects; when an attempt ends before a session starts (refused handshake,
  wrong port, nothing listening, no answer), it asks the doctor's XMPP check
  (:func:`slixmpp_push.doctor.xmpp.check_xmpp`, a raw stream that reads the
  server's own words) why, and logs that in one line with the likely fix;
  then it waits (1 s, doubling up to :data:`RECONNECT_MAX_DELAY`) and retries;
- but when the very first login is refused by the server itself (a stream error
  in :data:`REFUSALS`, or every SASL mechanism refused) and the doctor's check
  fails too, no retry would change it: a wrong secret or password, the client
  port given for the component port, an unknown name. It raises
  :class:`~slixmpp_push.errors.LoginRefused` with that line, and ``serve`` exits
  with status 2 (systemd does not restart it). Once a session has been up, the
  same refusal is retried: the server's configuration may be changing;
- while a session is up it pings (XEP-0199) every ``[xmpp] ping_interval``; a
  ping not answered within ``ping_timeout`` means the stream is stuck: the
  connection is aborted and a new one made;
- it reports each state to :class:`~slixmpp_push.metrics.Metrics`, so that
  ``/health`` is ready only while the stream is usable, and says why not;
- before every connection it awaits ``before_connect`` when given: an active
  instance of several confirms it still holds its lock
  (:meth:`~slixmpp_push.active_lock.ActiveLock.confirm`), whose error ends ``run``;
  a reconnection must never take the component from the instance that took over;
- with several active instances (``[appserver] instances = "all-active"``) its stream
  header carries ``allowMultiple`` (:func:`allow_multiple`): Openfire then accepts one
  connection per instance for the same component and balances over them.

A component pings its own JID: the server routes the ping back to us and our
XEP-0199 handler answers it, so the round trip crosses the stream both ways
and needs no host name of the server (pinging the parent domain could start
an s2s attempt slower than the timeout). A client pings its server's domain.
Any answer counts, an error too: it crossed the stream.

With several instances connected for one component (all-active) the answer may not
come back to the instance that asked: ejabberd balances every stanza addressed to the
component's domain over its connections, replies included (measured: two instances
pinging themselves through ejabberd 24.12 dropped their streams as stuck within
seconds), and Tigase picks a connection by a hash of the receiver's or the sender's bare
JID. There any stanza arriving on the stream shows that it carries stanzas: the keeper
sends *probes* (pings whose answers it does not wait for) every
``ping_timeout / PROBES_PER_TIMEOUT`` seconds until something arrives, and calls the
stream stuck when nothing has within ``ping_timeout``. A probe goes to the component's
domain from a random address of it (``ping-<random>@push.example.org``): whichever JID a
server's balancing hashes (the receiver's or the sender's), the probe or its answer lands
on a random instance; ejabberd's default balancing puts both at random, and Openfire
gives the answer back to the connection that asked. Each instance therefore sees
something after a few probes; with N instances the chance that none of 40 lands on a
healthy one is (1 - 1/N) ** 40: 1e-12 for 2 instances, 1e-5 for 4.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import slixmpp
from slixmpp import JID
from slixmpp.basexmpp import BaseXMPP
from slixmpp.exceptions import IqError, IqTimeout

from .config import XmppConfig
from .errors import LoginRefused
from .metrics import Metrics

log = logging.getLogger(__name__)


class _ExplainedHere(logging.Filter):
    """Drops slixmpp's ERROR "No appropriate login method.": the keeper's own line says
    why (no TLS offered, no mechanism in common), with the fix."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "No appropriate login method."


_EXPLAINED_HERE = _ExplainedHere()

RECONNECT_FIRST_DELAY = 1.0
RECONNECT_MAX_DELAY = 30.0
#: A session that lasted this long was no tight failure loop: back to the first delay.
STABLE_SESSION = 60.0
#: A login (TCP, stream header, handshake or SASL) may take this many ping timeouts.
LOGIN_TIMEOUTS = 3
#: Stream errors by which a server refuses a login (not a shutdown or an overload):
#: not-authorized (secret, or an unknown component at ejabberd), host-unknown (no such
#: component; Prosody's client port too), invalid-namespace (ejabberd's client port),
#: conflict (a virtual host's name; "already connected" passes the doctor's check).
REFUSALS = frozenset({"not-authorized", "host-unknown", "improper-addressing",
                      "invalid-namespace", "conflict"})
#: All-active: probes sent within one ping_timeout, at most (see the module).
PROBES_PER_TIMEOUT = 40
#: Openfire lets several connections serve one component only when the component's stream
#: header carries this attribute (it looks for the attribute, not its value); without it a
#: second connection gets ``conflict``. Prosody, ejabberd and Tigase ignore it.
ALLOW_MULTIPLE = "allowMultiple"


def allow_multiple(xmpp: BaseXMPP) -> None:
    """Make the component ``xmpp`` ask for ``allowMultiple`` in its stream header.

    slixmpp keeps the header it sends as the string ``stream_header`` (set by
    ComponentXMPP, written as it is when a connection is made): the attribute goes in
    before its closing ``>``. A header of another shape means slixmpp changed how it
    writes one; that fails here rather than losing the attribute silently.
    """
    header = getattr(xmpp, "stream_header", None)
    if (not isinstance(header, str) or not header.startswith("<stream:stream ")
            or not header.endswith(">") or "jabber:component:accept" not in header):
        raise RuntimeError(f"cannot add {ALLOW_MULTIPLE} to the component stream header of "
                           f"slixmpp {slixmpp.__version__}: it is {header!r}")
    if f" {ALLOW_MULTIPLE}=" not in header:
        xmpp.stream_header = f'{header[:-1]} {ALLOW_MULTIPLE}="true">'


class StreamKeeper:
    """Connects ``xmpp`` as ``settings`` say, keeps it connected, reports to ``metrics``.

    ``run(stopping, before_connect)`` returns once ``stopping`` is set; the caller
    disconnects. An error of ``before_connect`` ends it.
    ``session`` is set while a session is up. ``all_active``: this component is one of
    several connections for its JID (:func:`allow_multiple`, and the keepalive of the
    module's last paragraph); ``slixmpp_push_all_active`` says so.
    """

    def __init__(self, xmpp: BaseXMPP, settings: XmppConfig, metrics: Metrics, *,
                 all_active: bool = False) -> None:
        if all_active:
            allow_multiple(xmpp)
            metrics.all_active.set(1)
        self.xmpp = xmpp
        self.all_active = all_active
        self.settings = settings
        self.metrics = metrics
        self.where = f"{settings.host}:{settings.port}"
        self.session = asyncio.Event()
        self._gone = asyncio.Event()  # the current attempt's connection ended
        self._had_session = False  # the current attempt got as far as a session
        self._ended = ""  # why the server ended the stream (its stream error)
        self._condition = ""  # that stream error's condition
        self._auth_refused = False  # the server refused every SASL mechanism
        self._ever_up = False  # a session has started since the process began
        self._stuck = ""  # set when a ping went unanswered
        self._pinger: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()  # all-active: a stanza arrived since it was cleared
        #: Keepalive checks passed (a ping answered; all-active: a stanza arrived).
        self.keepalives = 0
        for event, handler in self._handlers():
            xmpp.add_event_handler(event, handler)
        if all_active:
            self._watch_arrivals()
        # Once per logger (addFilter ignores a filter it has).
        logging.getLogger("slixmpp.features.feature_mechanisms.mechanisms").addFilter(
            _EXPLAINED_HERE)

    def _handlers(self) -> list[tuple[str, Any]]:
        return [("session_start", self._on_session), ("disconnected", self._on_disconnected),
                ("stream_error", self._on_stream_error),
                ("failed_all_auth", self._on_failed_all_auth),
                ("reconnect_delay", self._on_reconnect_delay)]

    def close(self) -> None:
        """Remove the event handlers and stop pinging."""
        for event, handler in self._handlers():
            self.xmpp.del_event_handler(event, handler)
        if self.all_active:
            del self.xmpp.data_received  # the class's method again
        self._stop_pinging()

    # -- slixmpp's events ------------------------------------------------------------
    def _on_session(self, _event: object) -> None:
        log.info("connected to %s as %s", self.where, self.xmpp.boundjid)
        self.session.set()
        self._had_session = self._ever_up = True
        self.metrics.set_connected(True)
        self._stop_pinging()
        self._pinger = asyncio.ensure_future(self._ping_loop())

    def _on_disconnected(self, _reason: object) -> None:
        self._stop_pinging()
        was_up = self.session.is_set()
        self.session.clear()
        self._gone.set()
        if was_up:
            self.metrics.set_connected(False, f"{self._end_reason()}; reconnecting")
        else:
            self.metrics.set_connected(False, f"connecting to {self.where}")

    def _end_reason(self) -> str:
        if self._stuck:
            return self._stuck
        if self._ended:
            return f"the server closed the stream: {self._ended}"
        return "the connection to the server was lost"

    def _on_stream_error(self, error: Any) -> None:
        self._condition = error["condition"]
        self._ended = " ".join(part for part in (error["condition"], error["text"]) if part)

    def _watch_arrivals(self) -> None:
        """All-active: set ``_arrived`` whenever data from the server completed stanzas.

        Not an incoming filter: the app server's publishes bypass those (its fast
        path). After the parser has taken the data, a depth of 1 means it is between
        stanzas of the stream itself, so the data ended one; a restarted stream nests
        everything deeper.
        """
        xmpp = self.xmpp
        receive = xmpp.data_received
        arrived = self._arrived

        def data_received(data: bytes | str) -> None:
            receive(data)
            if xmpp.xml_depth == 1 and not data.isspace():  # whitespace is no stanza
                arrived.set()

        xmpp.data_received = data_received  # type: ignore[method-assign]

    def _on_failed_all_auth(self, _event: object) -> None:
        self._auth_refused = True  # failed_auth is one mechanism; slixmpp tries the next

    def _on_reconnect_delay(self, _wait: object) -> None:
        # slixmpp found nothing to connect to (refused, unreachable, no DNS) and would
        # retry on its own schedule, growing to 5 minutes, silently. Take over: the
        # failure is diagnosed and retried with our backoff.
        self.xmpp.cancel_connection_attempt()
        self._gone.set()

    # -- the connection loop ---------------------------------------------------------
    async def run(self, stopping: asyncio.Event,
                  before_connect: Callable[[], Awaitable[None]] | None = None) -> None:
        delay = RECONNECT_FIRST_DELAY
        loop = asyncio.get_running_loop()
        quiet = False  # after a failed login the retries are logged by the diagnosis
        while not stopping.is_set():
            if before_connect is not None:
                await before_connect()
            self._gone.clear()
            self._had_session = self._auth_refused = False
            self._ended = self._stuck = self._condition = ""
            began = loop.time()
            (log.debug if quiet else log.info)(
                "connecting to %s as %s", self.where, self.settings.jid)
            if self.settings.mode == "component":
                self.xmpp.connect()
            else:
                self.xmpp.connect(self.settings.host, self.settings.port)
            login = await self._first(stopping, self.session, self._gone,
                                      timeout=LOGIN_TIMEOUTS * self.settings.ping_timeout)
            if stopping.is_set():
                return
            if self._had_session:
                await self._first(stopping, self._gone)
                if stopping.is_set():
                    return
                cause = "stuck" if self._stuck else "ended"
                if loop.time() - began > STABLE_SESSION:
                    delay = RECONNECT_FIRST_DELAY
                log.warning("%s; reconnecting in %.0f s", self._end_reason(), delay)
                quiet = False
            else:
                if not login:  # neither a session nor an end: a stalled login
                    await self._abort()
                cause = "login_failed"
                problem, confirmed = await self._diagnose(stalled=not login)
                refused = self._auth_refused or self._condition in REFUSALS
                if refused and confirmed and not self._ever_up:
                    raise LoginRefused(problem)
                self.metrics.set_connected(False, problem)
                log.error("%s (retrying in %.0f s)", problem, delay)
                quiet = True
            self.metrics.reconnects.labels(cause).inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    async def _diagnose(self, *, stalled: bool) -> tuple[str, bool]:
        """One line: why the login failed, and the likely fix (the doctor's check, on a
        stream of its own: slixmpp does not keep what the server said); and whether
        the check failed too (else it got in where we did not)."""
        from .doctor.report import Status
        from .doctor.xmpp import check_xmpp

        seen = self._ended and f"the server closed the stream: {self._ended}"
        if stalled:
            seen = (f"no session within {LOGIN_TIMEOUTS * self.settings.ping_timeout:g} s "
                    f"at {self.where}")
        result = await check_xmpp(self.settings, self.settings.ping_timeout,
                                  all_active=self.all_active)
        prefix = f"cannot log in to {self.where} as {self.settings.jid}"
        if result.status is Status.FAIL:
            return f"{prefix}: {result.detail}. Fix: {result.fix}", True
        # The check got in where we did not: say what we saw, and what it saw.
        return (f"{prefix}: {seen or 'the connection ended'} (a second try: {result.detail})",
                False)

    async def _abort(self) -> None:
        """End a stalled attempt, connected or not."""
        self.xmpp.cancel_connection_attempt()
        if self.xmpp.transport is not None:
            self.xmpp.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gone.wait(), 5.0)

    @staticmethod
    async def _first(*events: asyncio.Event, timeout: float | None = None) -> bool:
        """Wait until one of ``events`` is set; False on timeout."""
        waiters = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            done, _ = await asyncio.wait(waiters, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return bool(done)

    # -- pings -------------------------------------------------------------------------
    def _ping_target(self) -> tuple[JID, JID | None]:
        """(to, from): a component pings itself through the server (see the module)."""
        if self.settings.mode == "component":
            return self.xmpp.boundjid, self.xmpp.boundjid
        return JID(self.xmpp.boundjid.domain), None

    async def _ping_loop(self) -> None:
        timeout = self.settings.ping_timeout
        check = self._probe if self.all_active else self._ping
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.ping_interval)
            sent = loop.time()
            if not await check():
                self._stuck = (f"no stanza arrived within {timeout:g} s of pinging (XEP-0199)"
                               if self.all_active else
                               f"no answer to a ping (XEP-0199) within {timeout:g} s")
                self._stuck += ": the stream is stuck"
                self.metrics.set_connected(False, f"{self._stuck}; reconnecting")
                log.error("%s; dropping the connection to %s", self._stuck, self.where)
                self._pinger = None  # this task ends here; abort() must not cancel it
                self.xmpp.abort()
                return
            self.metrics.ping_seconds.set(loop.time() - sent)
            self.keepalives += 1

    async def _ping(self) -> bool:
        """One ping, answered (an error too: it crossed the stream) or not."""
        ping: Any = self.xmpp.plugin["xep_0199"]
        to, sender = self._ping_target()
        try:
            await ping.send_ping(to, ifrom=sender, timeout=self.settings.ping_timeout)
        except IqError:
            pass
        except IqTimeout:
            return False
        return True

    async def _probe(self) -> bool:
        """All-active: pings, without waiting for their answers, until any stanza arrives
        (False: none within ping_timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.ping_timeout
        every = self.settings.ping_timeout / PROBES_PER_TIMEOUT
        domain = self.xmpp.boundjid.domain
        self._arrived.clear()
        while not self._arrived.is_set():
            left = deadline - loop.time()
            if left <= 0:
                return False
            sender = JID(f"ping-{secrets.token_hex(4)}@{domain}")
            probe = self.xmpp.make_iq_get(ito=JID(domain), ifrom=sender)
            probe.enable("ping")
            self.xmpp.send(probe)  # not iq.send(): no waiting for an answer
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(every, left))
        return True

    def _stop_pinging(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
