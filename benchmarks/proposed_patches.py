"""Proposed hot-path changes, as monkeypatches, to measure them before anyone edits the package.

    python benchmarks/publish_throughput.py --patch all
    python benchmarks/publish_throughput.py --patch bare_publish_iq,h2_plain

Each patch mirrors one change proposed in benchmarks/README.md ("What limits
throughput"); ``apply(names)`` runs in the app server's process before the
plugin is registered. None of this is used by the package itself.

- ``bare_publish_iq`` (appserver/plugin.py): build publish IQs as bare Iq
  stanzas. slixmpp's ``_build_stanza`` otherwise instantiates a stanza object
  for every registered child (pubsub, publish, item, notification, the data
  forms and each of their fields, each asking ``get_lang``), which
  ``_on_publish`` never reads: it parses ``iq.xml``.
- ``batched_results`` (appserver/plugin.py, component only): write ``result``
  replies as raw XML, all replies of one event-loop iteration in one write.
- ``h2_plain`` (providers/apns.py): the APNs HTTP/2 connection encodes header
  strings without Huffman coding (pure-Python hpack Huffman is a third of the
  encoder's time; the bytes are a few more) and skips h2's validation of the
  headers aioapns itself builds.
- ``apns_coalesced_flush`` (providers/apns.py): one TLS write per event-loop
  iteration for all requests started in it, instead of one per request (and
  one inactivity-timer re-arm per write instead of per request).
- ``h2_no_index_unique`` (providers/apns.py, with h2_plain's encoder): send
  ``:path`` and ``apns-id`` as never-indexed literals. Both are new on nearly
  every request, so indexing them only churns the HPACK dynamic table, which
  hpack searches linearly for every header of every request.
- ``provider_timeout_cm`` (providers/apns.py, ``ApnsProvider.send``):
  ``async with asyncio.timeout(...)`` instead of ``asyncio.wait_for(...)``,
  which wraps the coroutine in one more Task per push (Python >= 3.11, as
  pyproject requires).
- ``direct_publish_dispatch`` (appserver/plugin.py; instead of
  bare_publish_iq): hand a publish IQ to ``_on_publish`` straight from
  ``_spawn_event``, skipping the Iq stanza object, the incoming filters and
  the match against every registered handler.
- ``cached_publish_counter`` (metrics.py): keep the labelled child of
  ``publishes_total`` like ``provider_result`` does, instead of ``labels()``
  on every publish.
"""

from __future__ import annotations

import asyncio
from typing import Any
from xml.sax.saxutils import escape

PUBSUB_PUBLISH = "{http://jabber.org/protocol/pubsub}pubsub/{http://jabber.org/protocol/pubsub}publish"


def bare_publish_iq() -> None:
    from slixmpp_push.appserver.plugin import PushAppServer

    original_init = PushAppServer.plugin_init

    def plugin_init(self: PushAppServer) -> None:
        original_init(self)
        xmpp = self.xmpp
        build = xmpp._build_stanza
        iq_tag = f"{{{xmpp.default_ns}}}iq"

        def _build_stanza(xml: Any, default_ns: str | None = None) -> Any:
            if xml.tag != iq_tag or xml.get("type") != "set" or xml.find(PUBSUB_PUBLISH) is None:
                return build(xml, default_ns)
            children = list(xml)
            del xml[:]  # the Iq is built without its payload: no stanza plugins
            try:
                return build(xml, default_ns)
            finally:
                xml.extend(children)  # _on_publish reads iq.xml as before

        xmpp._build_stanza = _build_stanza

    PushAppServer.plugin_init = plugin_init


def _attr(value: str) -> str:
    return escape(value, {'"': "&quot;"})


def batched_results() -> None:
    from slixmpp_push.appserver.plugin import PushAppServer

    original = PushAppServer._reply_result

    def _reply_result(self: PushAppServer, request: Any) -> None:
        if not self._component:
            original(self, request)
            return
        queue = self.__dict__.setdefault("_result_queue", [])
        queue.append(f'<iq type="result" id="{_attr(request.get("id", ""))}" '
                     f'to="{_attr(request.get("from", ""))}" '
                     f'from="{_attr(request.get("to", ""))}" />')
        if len(queue) == 1:
            asyncio.get_running_loop().call_soon(_flush, self)

    def _flush(self: PushAppServer) -> None:
        queue = self._result_queue
        data = "".join(queue)
        queue.clear()
        if self.xmpp.transport is not None:
            self.xmpp.send_raw(data)

    PushAppServer._reply_result = _reply_result


def h2_plain() -> None:
    from h2.config import H2Configuration
    from hpack import Encoder

    from slixmpp_push.providers import apns

    class PlainEncoder(Encoder):
        def encode(self, headers: Any, huffman: bool = True) -> bytes:
            return super().encode(headers, huffman=False)

    def __init__(self: Any, config: Any = None) -> None:
        apns.H2Connection.__init__(self, config or H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False))
        self.encoder = PlainEncoder()

    apns._CreditReturningH2Connection.__init__ = __init__


def apns_coalesced_flush() -> None:
    from aioapns.connection import APNsBaseClientProtocol

    from slixmpp_push.providers.apns import ApnsClientProtocol

    def flush(self: Any) -> None:
        if not self.__dict__.get("_flush_pending"):
            self._flush_pending = True
            self.loop.call_soon(_flush_now, self)

    def _flush_now(self: Any) -> None:
        self._flush_pending = False
        if self.transport is not None and not self.transport.is_closing():
            APNsBaseClientProtocol.flush(self)

    ApnsClientProtocol.flush = flush


def h2_no_index_unique() -> None:
    from hpack import HeaderTuple, NeverIndexedHeaderTuple

    from slixmpp_push.providers import apns

    unique = {b":path", ":path", b"apns-id", "apns-id"}
    previous_init = apns._CreditReturningH2Connection.__init__

    def __init__(self: Any, config: Any = None) -> None:
        previous_init(self, config)
        encode = self.encoder.encode

        def encode_unique_unindexed(headers: Any, huffman: bool = True) -> bytes:
            return encode([NeverIndexedHeaderTuple(h[0], h[1])
                           if h[0] in unique and not isinstance(h, HeaderTuple) else h
                           for h in headers], huffman)

        self.encoder.encode = encode_unique_unindexed

    apns._CreditReturningH2Connection.__init__ = __init__


def provider_timeout_cm() -> None:
    import types

    from slixmpp_push.providers import apns

    async def wait_for(awaitable: Any, timeout: float) -> Any:
        async with asyncio.timeout(timeout):
            return await awaitable

    namespace = types.SimpleNamespace(**{k: getattr(asyncio, k) for k in dir(asyncio)
                                         if not k.startswith("__")})
    namespace.wait_for = wait_for
    apns.asyncio = namespace  # ApnsProvider.send's asyncio.wait_for is now the above


def direct_publish_dispatch() -> None:
    from slixmpp_push.appserver.plugin import PushAppServer

    class Raw:  # what _on_publish reads of a stanza: .xml
        __slots__ = ("xml",)

        def __init__(self, xml: Any) -> None:
            self.xml = xml

    original_init = PushAppServer.plugin_init

    def plugin_init(self: PushAppServer) -> None:
        original_init(self)
        xmpp = self.xmpp
        spawn = xmpp._spawn_event
        iq_tag = f"{{{xmpp.default_ns}}}iq"
        loop_tasks: set[Any] = set()

        def _spawn_event(xml: Any) -> None:
            if xml.tag == iq_tag and xml.get("type") == "set" \
                    and xml.find(PUBSUB_PUBLISH) is not None:
                task = asyncio.ensure_future(self._on_publish(Raw(xml)))
                loop_tasks.add(task)
                task.add_done_callback(loop_tasks.discard)
                return
            spawn(xml)

        xmpp._spawn_event = _spawn_event

    PushAppServer.plugin_init = plugin_init


def cached_publish_counter() -> None:
    from slixmpp_push.metrics import Metrics

    def published(self: Metrics, dialect: str, outcome: str) -> None:
        cache = self.__dict__.setdefault("_publish_children", {})
        child = cache.get((dialect, outcome))
        if child is None:
            child = cache[(dialect, outcome)] = self.publishes.labels(dialect, outcome)
        child.inc()

    Metrics.published = published


PATCHES = {f.__name__: f for f in (bare_publish_iq, direct_publish_dispatch, batched_results,
                                   h2_plain, h2_no_index_unique, apns_coalesced_flush,
                                   provider_timeout_cm, cached_publish_counter)}
#: "all": every patch (direct_publish_dispatch supersedes bare_publish_iq).
ALL = [name for name in PATCHES if name != "bare_publish_iq"]


def apply(names: str) -> list[str]:
    chosen = ALL if names == "all" else [n for n in names.split(",") if n]
    for name in chosen:
        if name not in PATCHES:
            raise SystemExit(f"unknown patch {name!r}; known: {', '.join(PATCHES)}")
        PATCHES[name]()
    return chosen
