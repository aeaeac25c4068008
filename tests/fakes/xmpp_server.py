"""A small XEP-0114 server-side peer: what Prosody is to an external component.

It listens on 127.0.0.1, accepts the component stream
(``jabber:component:accept``), sends a stream id, checks the ``<handshake>``
(hex SHA-1 of stream id + secret) and answers ``<handshake/>``. A test then
sends stanzas to the component and awaits the replies to its IQs (matched by
id, with timeouts); every stanza the component sends is recorded.

Like a real server it routes what the component addresses to its own JID back
to it (the component's XEP-0199 keepalive pings itself that way). Faults a
test can inject into a live session: :meth:`ComponentSession.restart_stream`
(a second ``<stream:stream>`` header), :meth:`ComponentSession.stop_answering`
(a hung server: it reads, but routes and answers nothing) and
:meth:`ComponentSession.freeze` (a half-open connection: nothing read, nothing
written, no FIN).

Each accepted connection is a :class:`ComponentSession`. The component may
disconnect and come back (a ``kill -9`` and a restart): the new connection is
a new session, and the IQs still waiting on the dead one fail at once with
:class:`ComponentGone`. A new session that authenticates while an older one
is still open replaces it (the older one is closed), so a restarted process
is never locked out by a half-dead connection.

Usage::

    async with FakeComponentServer("push.localhost", "s3cret") as server:
        ...  # start the component with host 127.0.0.1, port server.port
        session = await server.wait_session()
        reply = await server.request(
            "<iq type='set' from='localhost' to='push.localhost'>...</iq>")
        assert reply.get("type") == "result"

Stanzas go out as raw XML strings (un-namespaced elements are in the stream's
``jabber:component:accept`` namespace, as on the wire) or as ElementTree
elements; :func:`command_iq` and :func:`publish_iq` build the usual ones.
Received stanzas are ElementTree elements with Clark names
(``{jabber:component:accept}iq``); :func:`error_of` and :func:`form_values`
read replies. Replies are matched to requests by id alone (like a server's
IQ tracking, without checking ``from``).

Standalone, for manual checks or benchmarks::

    python -m tests.fakes.xmpp_server --jid push.localhost --secret s3cret --port 0

prints ``PORT <n>`` once listening and logs each stanza it receives.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self
from xml.etree import ElementTree as ET

from slixmpp.xmlstream.tostring import tostring

__all__ = [
    "NS_COMPONENT",
    "ComponentGone",
    "ComponentSession",
    "FakeComponentServer",
    "Received",
    "command_iq",
    "error_of",
    "form_values",
    "publish_iq",
]

NS_COMPONENT = "jabber:component:accept"
NS_STREAM = "http://etherx.jabber.org/streams"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
_IQ = f"{{{NS_COMPONENT}}}iq"
_HANDSHAKE = f"{{{NS_COMPONENT}}}handshake"
_ids = itertools.count(1)


class ComponentGone(ConnectionError):
    """No component session to send on, or it closed before answering."""


@dataclass(slots=True)
class Received:
    """One stanza the component sent."""

    session: int  # ComponentSession.index
    element: ET.Element
    at: float  # time.monotonic()

    @property
    def text(self) -> str:
        return tostring(self.element, xmlns=NS_COMPONENT)


def _qualify(element: ET.Element) -> ET.Element:
    """Put un-namespaced elements in the component namespace (the stream default)."""
    for item in element.iter():
        if isinstance(item.tag, str) and not item.tag.startswith("{"):
            item.tag = f"{{{NS_COMPONENT}}}{item.tag}"
    return element


def _element(stanza: str | ET.Element) -> ET.Element:
    if isinstance(stanza, str):
        return _qualify(ET.fromstring(stanza))
    return stanza


class ComponentSession:
    """One component connection, from stream header to close."""

    def __init__(self, server: FakeComponentServer, index: int,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.index = index
        self.stream_id = secrets.token_hex(8)
        self.authenticated = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._reader = reader
        self._writer = writer
        self._waiting: dict[str, asyncio.Future[ET.Element]] = {}
        self.answering = True  # route the component's self-addressed stanzas back
        self.frozen = False  # half-open: nothing goes out

    def __repr__(self) -> str:
        state = "closed" if self.closed.is_set() else (
            "authenticated" if self.authenticated.is_set() else "opening")
        return f"<ComponentSession #{self.index} {state}>"

    @property
    def alive(self) -> bool:
        return self.authenticated.is_set() and not self.closed.is_set()

    # -- sending -------------------------------------------------------------------
    def send(self, stanza: str | ET.Element) -> ET.Element:
        """Send one stanza; returns the element sent."""
        element = _element(stanza)
        self._write(tostring(element, xmlns=NS_COMPONENT))
        return element

    def send_raw(self, data: str) -> None:
        """Write ``data`` as it is (for malformed-XML tests)."""
        self._write(data)

    # -- faults ----------------------------------------------------------------------
    def restart_stream(self) -> None:
        """Send a second stream header on the live stream, as a confused server or a
        proxy that reconnected upstream does (no XML declaration: mid-stream it parses
        as the start of an element that never ends)."""
        self._write(f"<stream:stream xmlns:stream='{NS_STREAM}' xmlns='{NS_COMPONENT}' "
                    f"from='{self.server.jid}' id='{secrets.token_hex(8)}'>")

    def stop_answering(self) -> None:
        """A hung server: stanzas are still read (and recorded), nothing is routed back."""
        self.answering = False

    def freeze(self) -> None:
        """A half-open connection: stop reading, write nothing, keep the socket open."""
        self.frozen = True
        transport = self._writer.transport
        if isinstance(transport, asyncio.ReadTransport):
            transport.pause_reading()

    async def request(self, stanza: str | ET.Element, timeout: float = 10.0) -> ET.Element:
        """Send an IQ (an id is added when it has none) and return its reply.

        Raises :class:`ComponentGone` if the session closes first, and
        :class:`TimeoutError` after ``timeout`` seconds.
        """
        element = _element(stanza)
        if element.tag != _IQ:
            raise ValueError(f"request() sends IQs, not {element.tag}")
        iq_id = element.get("id") or f"fake{next(_ids)}"
        element.set("id", iq_id)
        if iq_id in self._waiting:
            raise ValueError(f"an IQ with id {iq_id!r} is already waiting")
        future: asyncio.Future[ET.Element] = asyncio.get_running_loop().create_future()
        self._waiting[iq_id] = future
        try:
            self.send(element)
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TimeoutError(f"session #{self.index}: no reply to IQ {iq_id!r} "
                               f"within {timeout} s") from None
        finally:
            self._waiting.pop(iq_id, None)

    def _write(self, data: str) -> None:
        if self.closed.is_set() or self._writer.is_closing():
            raise ComponentGone(f"session #{self.index} is closed ({self.close_reason})")
        if not self.frozen:
            self._writer.write(data.encode())

    # -- the connection --------------------------------------------------------------
    async def run(self) -> None:
        parser = ET.XMLPullParser(events=("start", "end"))
        depth = 0
        root: ET.Element | None = None
        reason = "component closed the connection"
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                try:
                    parser.feed(data)
                    events = list(parser.read_events())
                except ET.ParseError as exc:
                    reason = f"not well-formed XML: {exc}"
                    self._stream_error("not-well-formed")
                    break
                for event, element in events:
                    assert isinstance(element, ET.Element)
                    if event == "start":
                        depth += 1
                        if depth == 1:
                            root = element
                            if not self._open_stream(element):
                                reason = f"unknown component {element.get('to')!r}"
                                return
                        continue
                    depth -= 1
                    if depth == 0:  # </stream:stream>
                        reason = "component closed its stream"
                        self._write_quietly("</stream:stream>")
                        return
                    if depth == 1:
                        assert root is not None
                        root.remove(element)  # keep memory flat
                        if not self._stanza(element):
                            reason = "handshake refused"
                            return
        except (ConnectionError, OSError) as exc:
            reason = f"connection lost: {exc}"
        finally:
            self._close(reason)

    def _open_stream(self, header: ET.Element) -> bool:
        to = header.get("to", "")
        self._write_quietly(
            "<?xml version='1.0'?>"
            f"<stream:stream xmlns:stream='{NS_STREAM}' xmlns='{NS_COMPONENT}' "
            f"from='{self.server.jid}' id='{self.stream_id}'>")
        if to != self.server.jid:
            self._stream_error("host-unknown")
            return False
        return True

    def _stanza(self, element: ET.Element) -> bool:
        """Handle one top-level element; False ends the session."""
        if not self.authenticated.is_set():
            expected = hashlib.sha1((self.stream_id + self.server.secret).encode()).hexdigest()
            if element.tag != _HANDSHAKE or (element.text or "").strip().lower() != expected:
                self._stream_error("not-authorized")
                return False
            self._write_quietly("<handshake/>")
            self.authenticated.set()
            self.server._authenticated(self)
            return True
        self.server._received(Received(self.index, element, time.monotonic()))
        if element.get("to") == self.server.jid and self.answering:
            self._write_quietly(tostring(element, xmlns=NS_COMPONENT))  # routed back
            return True
        if element.tag == _IQ and element.get("type") in ("result", "error"):
            future = self._waiting.get(element.get("id", ""))
            if future is not None and not future.done():
                future.set_result(element)
        return True

    def _stream_error(self, condition: str) -> None:
        self._write_quietly(f"<stream:error><{condition} xmlns='{NS_STREAM_ERRORS}'/>"
                            "</stream:error></stream:stream>")

    def _write_quietly(self, data: str) -> None:
        with contextlib.suppress(ComponentGone, ConnectionError, OSError):
            self._write(data)

    def _close(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        for iq_id, future in list(self._waiting.items()):
            if not future.done():
                future.set_exception(ComponentGone(
                    f"session #{self.index} closed before answering IQ {iq_id!r}: {reason}"))
        self._waiting.clear()
        with contextlib.suppress(Exception):
            self._writer.close()
        self.server._closed(self)

    def abort(self, reason: str = "closed by the test") -> None:
        """Close this session from the server side."""
        self._close(reason)


class FakeComponentServer:
    """Accepts XEP-0114 components for ``jid`` with ``secret`` on ``host:port``.

    Attributes: :attr:`sessions` (every session, in order), :attr:`received`
    (every stanza from every session), :attr:`current` (the live session).
    ``on_stanza`` callbacks see each received stanza as it arrives.
    """

    def __init__(self, jid: str, secret: str, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.jid = jid
        self.secret = secret
        self.host = host
        self.port = port
        self.sessions: list[ComponentSession] = []
        self.received: list[Received] = []
        self.on_stanza: list[Callable[[Received], Any]] = []
        self.current: ComponentSession | None = None
        self._changed = asyncio.Event()  # replaced by a fresh one at each change
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    # -- life cycle -------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.abort("server stopping")
        # Closing the transports ends each connection's reader: no need to cancel
        # (cancelling a stream handler makes asyncio 3.11 log a spurious error).
        if self._tasks:
            _, stuck = await asyncio.wait(list(self._tasks), timeout=5)
            for task in stuck:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- sessions ---------------------------------------------------------------------
    async def wait_session(self, after: int = -1, timeout: float = 15.0) -> ComponentSession:
        """The first live, authenticated session whose index is above ``after``."""
        def ready() -> bool:
            return (self.current is not None and self.current.alive
                    and self.current.index > after)

        await self._until(ready, timeout, f"no component session (after #{after})")
        assert self.current is not None
        return self.current

    def session(self) -> ComponentSession:
        """The live session, or :class:`ComponentGone`."""
        if self.current is None or not self.current.alive:
            raise ComponentGone("no component is connected")
        return self.current

    def send(self, stanza: str | ET.Element) -> ET.Element:
        return self.session().send(stanza)

    async def request(self, stanza: str | ET.Element, timeout: float = 10.0) -> ET.Element:
        return await self.session().request(stanza, timeout)

    async def wait_for(self, match: Callable[[Received], bool], timeout: float = 10.0,
                       start: int = 0) -> Received:
        """The first received stanza (from index ``start`` of :attr:`received`) matching."""
        found: list[Received] = []
        index = start

        def seen() -> bool:
            nonlocal index
            while not found and index < len(self.received):
                if match(self.received[index]):
                    found.append(self.received[index])
                index += 1
            return bool(found)

        await self._until(seen, timeout, "no matching stanza")
        return found[0]

    async def _until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what} within {timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    # -- internals ----------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = ComponentSession(self, len(self.sessions), reader, writer)
        self.sessions.append(session)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await session.run()
        finally:
            self._tasks.discard(task)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _authenticated(self, session: ComponentSession) -> None:
        old = self.current
        self.current = session
        if old is not None and old is not session:
            old._stream_error("conflict")
            old.abort(f"replaced by session #{session.index}")
        self._notify()

    def _closed(self, session: ComponentSession) -> None:
        if self.current is session:
            self.current = None
        self._notify()

    def _received(self, received: Received) -> None:
        self.received.append(received)
        for callback in self.on_stanza:
            callback(received)
        self._notify()


# -- stanza templates ---------------------------------------------------------------------
def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;").replace('"', "&quot;"))


def command_iq(frm: str, to: str, node: str, fields: dict[str, str],
               iq_id: str | None = None) -> str:
    """An ad-hoc command ``execute`` with a submitted form (XEP-0050)."""
    body = "".join(f"<field var='{_escape(k)}'><value>{_escape(v)}</value></field>"
                   for k, v in fields.items())
    id_attr = f" id='{_escape(iq_id)}'" if iq_id else ""
    return (f"<iq type='set' from='{_escape(frm)}' to='{_escape(to)}'{id_attr}>"
            f"<command xmlns='http://jabber.org/protocol/commands' node='{_escape(node)}' "
            f"action='execute'><x xmlns='jabber:x:data' type='submit'>{body}</x>"
            "</command></iq>")


def publish_iq(frm: str, to: str, node: str, *, message_count: int | None = None,
               sender: str | None = None, body: str | None = None,
               options: dict[str, str] | None = None, iq_id: str | None = None) -> str:
    """A XEP-0357 publish as a user's server sends it (summary form, publish-options)."""
    fields = ["<field var='FORM_TYPE' type='hidden'><value>urn:xmpp:push:summary</value>"
              "</field>"]
    for var, value in (("message-count", message_count), ("last-message-sender", sender),
                       ("last-message-body", body)):
        if value is not None:
            fields.append(f"<field var='{var}'><value>{_escape(str(value))}</value></field>")
    publish_options = ""
    if options:
        option_fields = "".join(f"<field var='{_escape(k)}'><value>{_escape(v)}</value></field>"
                                for k, v in options.items())
        publish_options = (
            "<publish-options><x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE' type='hidden'>"
            "<value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
            f"{option_fields}</x></publish-options>")
    id_attr = f" id='{_escape(iq_id)}'" if iq_id else ""
    return (f"<iq type='set' from='{_escape(frm)}' to='{_escape(to)}'{id_attr}>"
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'>"
            f"<publish node='{_escape(node)}'><item>"
            "<notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='submit'>"
            f"{''.join(fields)}</x></notification></item></publish>{publish_options}"
            "</pubsub></iq>")


# -- reading replies ------------------------------------------------------------------------
_STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def error_of(stanza: ET.Element) -> tuple[str, str, str] | None:
    """``(type, condition, text)`` of an error stanza, ``None`` if it is no error.

    The ``<error>`` element is looked up in any namespace (a component that
    gets it wrong sends ``jabber:client``; that is for the caller to check).
    """
    if stanza.get("type") != "error":
        return None
    for child in stanza:
        if child.tag.rpartition("}")[2] == "error":
            condition = text = ""
            for item in child:
                name = item.tag.rpartition("}")[2]
                if item.tag.startswith(f"{{{_STANZA_ERRORS}}}"):
                    if name == "text":
                        text = item.text or ""
                    else:
                        condition = name
            return child.get("type", ""), condition, text
    return "", "", ""


def form_values(stanza: ET.Element) -> dict[str, list[str]]:
    """``var → values`` of every data-form field in ``stanza``."""
    return {field.get("var", ""): [v.text or "" for v in field.iter("{jabber:x:data}value")]
            for field in stanza.iter("{jabber:x:data}field")}


# -- standalone ---------------------------------------------------------------------------
async def _serve(args: argparse.Namespace) -> None:
    import signal

    server = FakeComponentServer(args.jid, args.secret, host=args.host, port=args.port)
    server.on_stanza.append(lambda r: print(f"#{r.session} {r.text}", flush=True))
    async with server:
        print(f"PORT {server.port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake XEP-0114 server side, for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--jid", required=True, help="the component's JID")
    parser.add_argument("--secret", required=True)
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
