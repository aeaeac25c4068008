"""The publish hot path on a component stream: from the parser to the plugin, and back.

slixmpp turns every incoming element into a stanza object, builds an interface
object for each registered child (pubsub, publish, item, the data forms and each of
their fields), runs the incoming filters and matches the stanza against every
registered handler; a reply is another stanza object, queued for a task that runs
the outgoing filters and writes it alone. For a publish that was two thirds of the
app server's CPU, and the plugin only reads ``iq.xml``.

:class:`PublishFastPath` takes a publish IQ (type ``set``, a ``pubsub/publish``
child) as the parser hands it over and gives the element to the plugin's handler,
and :meth:`PublishFastPath.reply_result` writes ``result`` replies as raw XML, several
in one write (:class:`~slixmpp_push.coalesce.CoalescedWrites`). Everything else goes
through slixmpp unchanged, and so do publishes when someone registered an incoming
filter (it would expect to see them). Component streams only: on a client stream the
incoming filters count stanzas for XEP-0198, and a raw write would not be counted. Nor
are publishes built there as bare stanzas (their children detached while slixmpp builds
the ``Iq``): slixmpp makes an interface asked for later as a new, empty child instead of
reading the one there, so another plugin's handler would see an empty publish.

This relies on two slixmpp internals, pinned by ``tests/test_fastpath.py``:
``XMLStream._spawn_event(xml)``, called by ``data_received`` for each top-level
element, and the name-mangled ``XMLStream.__filters`` dict of filter lists.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any
from xml.etree.ElementTree import Element

from slixmpp import ComponentXMPP
from slixmpp.xmlstream import tostring
from slixmpp.xmlstream.xmlstream import NotConnectedError

from ..coalesce import CoalescedWrites
from ..xep_0357.publish import PUBLISH_PATH

log = logging.getLogger(__name__)

_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})

PublishHandler = Callable[[Element], Coroutine[Any, Any, None]]
#: slixmpp's logger of the stanzas it sends and receives (its ``RECV:`` lines).
_stream_log = logging.getLogger("slixmpp.xmlstream.xmlstream")


class _Shown:
    """An element as slixmpp shows a received stanza, made only if a line is written."""

    __slots__ = ("xml", "xmpp")

    def __init__(self, xml: Element, xmpp: ComponentXMPP) -> None:
        self.xml = xml
        self.xmpp = xmpp

    def __str__(self) -> str:
        return tostring(self.xml, xmlns=self.xmpp.default_ns, stream=self.xmpp,
                        top_level=True)


def is_publish(xml: Element, iq_tag: str) -> bool:
    """An IQ set carrying a pubsub publish: what the fast path takes."""
    return xml.tag == iq_tag and xml.get("type") == "set" \
        and xml.find(PUBLISH_PATH) is not None


def _attribute(value: str) -> str:
    # Values come from a parsed stanza, so rarely need it: skip the copy then.
    if "&" in value or "<" in value or ">" in value or '"' in value:
        return value.translate(_ESCAPES)
    return value


class PublishFastPath:
    """Publishes from the parser straight to ``handle``; results written in batches.

    ``install()`` and ``uninstall()`` put it in front of ``xmpp``'s dispatch and take
    it away. ``handle`` receives the IQ element and must answer it (it is the plugin's
    publish handler, which turns every exception into an error reply).
    """

    def __init__(self, xmpp: ComponentXMPP, handle: PublishHandler) -> None:
        self.xmpp = xmpp
        self.handle = handle
        self.iq_tag = f"{{{xmpp.default_ns}}}iq"
        #: Publishes handed over directly since install (for tests and metrics).
        self.taken = 0
        self._spawn_event: Callable[[Element], None] | None = None
        self._incoming_filters: list[Any] = xmpp._XMLStream__filters["in"]  # type: ignore[attr-defined]
        self._tasks: set[asyncio.Task[None]] = set()
        self._results: list[str] = []
        self._writes: CoalescedWrites | None = None  # made in the loop, at the first result

    def install(self) -> None:
        if self._spawn_event is None:
            self._spawn_event = self.xmpp._spawn_event
            self.xmpp._spawn_event = self._dispatch  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._spawn_event is not None:
            self.xmpp._spawn_event = self._spawn_event  # type: ignore[method-assign,assignment]
            self._spawn_event = None

    def _dispatch(self, xml: Element) -> None:
        xml = self.xmpp.incoming_filter(xml)  # jabber:client → the component's namespace
        if not self._incoming_filters and is_publish(xml, self.iq_tag):
            self.taken += 1
            if _stream_log.isEnabledFor(logging.DEBUG):  # as slixmpp logs what it receives
                _stream_log.debug("RECV: %s", _Shown(xml, self.xmpp))
            task = asyncio.ensure_future(self.handle(xml))
            self._tasks.add(task)  # the loop holds tasks weakly
            task.add_done_callback(self._tasks.discard)
            return
        assert self._spawn_event is not None
        self._spawn_event(xml)

    def reply_result(self, request: Element) -> None:
        """Answer ``request`` with an empty ``result``, in the next coalesced write."""
        self._results.append(
            f'<iq type="result" id="{_attribute(request.get("id", ""))}" '
            f'to="{_attribute(request.get("from", ""))}" '
            f'from="{_attribute(request.get("to", ""))}"/>')
        if self._writes is None:
            self._writes = CoalescedWrites(self._write_results, asyncio.get_running_loop())
        self._writes.soon()

    def _write_results(self) -> bool:
        if not self._results:
            return False
        data = "".join(self._results)
        self._results.clear()
        try:
            self.xmpp.send_raw(data)
        except NotConnectedError:
            # The stream is gone, and the server with it forgot these IQs: a reply on
            # the next stream would answer nothing. It publishes again if it must.
            log.debug("stream closed before %d result(s) could be written", data.count("<iq"))
            return False
        return True
