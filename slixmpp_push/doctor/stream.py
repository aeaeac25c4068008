"""Just enough of an XMPP stream to diagnose a server's answer.

slixmpp hides why a connection failed; the XMPP check (:mod:`.xmpp`) needs the
server's own words: which stream namespace it answered with (which kind of port
this is), its ``<stream:error/>`` and its stream features. :class:`RawStream`
sends a stream header, then reads the reply with a pull parser, one top-level
element at a time, and gives up (:class:`NotXmpp`) on anything that is not an
XMPP stream or that runs past :data:`MAX_STREAM_BYTES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET
from collections import deque
from typing import Any
from xml.sax.saxutils import quoteattr

STREAM_NS = "http://etherx.jabber.org/streams"
STREAM_ERROR_NS = "urn:ietf:params:xml:ns:xmpp-streams"
COMPONENT_NS = "jabber:component:accept"
CLIENT_NS = "jabber:client"
SERVER_NS = "jabber:server"
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
#: Most bytes read from a server before its answer is judged (a stream header,
#: its features or an error fit in a few kilobytes).
MAX_STREAM_BYTES = 256 * 1024


class NotXmpp(Exception):
    """What the server sent is not an XMPP stream."""


class RawStream:
    """Just enough of an XMPP stream to diagnose one: the header's default
    namespace and attributes, then one top-level element at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser: ET.XMLPullParser[Any] = ET.XMLPullParser(
            events=("start-ns", "start", "end"))
        self.namespace: str | None = None  # the header's default namespace
        self.header: dict[str, str] | None = None
        self.elements: deque[ET.Element] = deque()
        self.ended = False  # </stream:stream> or EOF
        self._depth = 0
        self._read = 0

    async def open(self, namespace: str, to: str, version: bool = False,
                   allow_multiple: bool = False) -> None:
        """Send our stream header and wait for the server's (``allow_multiple``: a
        component that is one of several connections, for Openfire)."""
        attrs = f" to={quoteattr(to)}" + (" version='1.0'" if version else "") \
            + (" allowMultiple='true'" if allow_multiple else "")
        self.writer.write(f"<?xml version='1.0'?><stream:stream xmlns='{namespace}' "
                          f"xmlns:stream='{STREAM_NS}'{attrs}>".encode())
        await self.writer.drain()
        while self.header is None and not self.ended:
            await self._feed()

    async def next_element(self) -> ET.Element | None:
        """The next top-level element; None when the stream ended first."""
        while not self.elements and not self.ended:
            await self._feed()
        return self.elements.popleft() if self.elements else None

    def send(self, data: str) -> None:
        self.writer.write(data.encode())

    async def _feed(self) -> None:
        data = await self.reader.read(4096)
        if not data:
            self.ended = True
            return
        self._read += len(data)
        if self._read > MAX_STREAM_BYTES:
            raise NotXmpp(f"more than {MAX_STREAM_BYTES} bytes without an answer")
        try:
            self.parser.feed(data)
            events: list[Any] = list(self.parser.read_events())
        except ET.ParseError as exc:
            raise NotXmpp(f"not XML ({exc}): {data[:40]!r}") from None
        for event, item in events:
            if event == "start-ns" and self._depth == 0:
                prefix, uri = item
                if prefix == "":
                    self.namespace = uri
            elif event == "start":
                assert isinstance(item, ET.Element)
                self._depth += 1
                if self._depth == 1:
                    if item.tag != f"{{{STREAM_NS}}}stream":
                        raise NotXmpp(f"the first element is <{item.tag}>, not a stream")
                    self.header = dict(item.attrib)
            elif event == "end":
                assert isinstance(item, ET.Element)
                self._depth -= 1
                if self._depth == 1:
                    self.elements.append(item)
                elif self._depth == 0:
                    self.ended = True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if not self.writer.is_closing():
                self.writer.write(b"</stream:stream>")
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


def stream_error(element: ET.Element) -> tuple[str, str] | None:
    """(condition, text) of a ``<stream:error/>``; None for any other element."""
    if element.tag != f"{{{STREAM_NS}}}error":
        return None
    condition, text = "undefined-condition", ""
    for child in element:
        local = child.tag.rpartition("}")[2]
        if local == "text":
            text = (child.text or "").strip()
        elif child.tag.startswith(f"{{{STREAM_ERROR_NS}}}"):
            condition = local
    return condition, text


def sasl_mechanisms(element: ET.Element) -> list[str]:
    """The SASL mechanisms a ``<stream:features/>`` offers, sorted."""
    found = element.find(f"{{{SASL_NS}}}mechanisms")
    if found is None:
        return []
    return sorted(m.text.strip() for m in found if m.text)
