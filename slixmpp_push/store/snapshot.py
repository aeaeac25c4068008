"""The TinyDB store's snapshot file, read and written in one pass.

The file is a TinyDB database: ``{"_meta": {"1": {"schema": 1}}, "registrations":
{"1": {…, "_key": node}, …}, "pending": {…}, …}``. Reading it with ``json.load``
builds a dictionary for each of 100k registrations (and the table holding them) only
to pack them afterwards: a second copy of the store in memory, several times its
packed size, and as much time again. :func:`read_snapshot` instead walks the top-level
object and the registrations table with the ``json`` module's own scanner, one document
at a time, and hands each to a :class:`~.base.LoadedRegistrations` at once; the
document is garbage before the next one is read. The other tables are small and are
parsed whole.

A file this walk does not expect (whitespace where json.dump writes none is fine; a
repeated name or id is not, nor anything malformed) raises :class:`IrregularSnapshot`:
the caller then parses it whole with ``json.loads``, which gives the same result or
the same error as ever. :func:`snapshot_chunks` writes the same format, document by
document, so that a compaction does not build a second copy of the store either.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from json.scanner import make_scanner
from typing import Any

from .base import REGISTRATIONS, TABLES, LoadedRegistrations
from .packed import FrozenRegistrations
from .packed_cache import SnapshotMeter

#: The TinyDB table holding the schema version.
META_TABLE = "_meta"

#: json.loads's (C) scanner: (value, end) of the JSON value at an index. (typeshed
#: wants a scanner for the context; it reads the decoder's settings from it.)
_scan = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_SPACE = re.compile(r"[ \t\n\r]*")  # what JSON allows between tokens
_encode = json.JSONEncoder(separators=(",", ":")).encode  # as json.dump did
#: Documents per piece written.
CHUNK = 1_000


class IrregularSnapshot(Exception):
    """The file is not as :func:`snapshot_chunks` writes it: parse it whole."""


def read_snapshot(text: str, registrations: LoadedRegistrations,
                  cached: tuple[int, int] | None = None) -> dict[str, Any]:
    """The top-level object of the snapshot ``text``, except that a registrations table
    that is an object is not in it: its documents went to ``registrations``, keyed by
    their ``_key`` (a document without a string ``_key`` is left out). ``cached``: the
    span of the registrations table in ``text``, whose registrations are in
    ``registrations`` already (the packed cache): skipped."""
    try:
        return _walk(text, registrations, cached)
    except (StopIteration, ValueError, IndexError):  # what the scanner raises
        raise IrregularSnapshot from None


def _walk(text: str, registrations: LoadedRegistrations,
          cached: tuple[int, int] | None) -> dict[str, Any]:
    index = _skip(text, 0)
    if text[index] != "{":
        raise IrregularSnapshot
    top: dict[str, Any] = {}
    walked = False
    index = _skip(text, index + 1)
    if text[index] == "}":
        return _ended(text, index, top)
    while True:
        if text[index] != '"':
            raise IrregularSnapshot
        name, index = _scan(text, index)
        index = _skip(text, index)
        if text[index] != ":" or name in top or (name == REGISTRATIONS and walked):
            raise IrregularSnapshot  # a repeated name: json.loads keeps the last one
        index = _skip(text, index + 1)
        if name == REGISTRATIONS and text[index] == "{":
            if cached is None:
                index = _walk_registrations(text, index, registrations)
            elif cached[0] == index and text[cached[1] - 1] == "}":
                index = cached[1]
            else:
                raise IrregularSnapshot  # not where the cache says: parsed whole
            walked = True
        else:
            top[name], index = _scan(text, index)
        index = _skip(text, index)
        if text[index] == "}":
            return _ended(text, index, top)
        if text[index] != ",":
            raise IrregularSnapshot
        index = _skip(text, index + 1)


def _ended(text: str, index: int, top: dict[str, Any]) -> dict[str, Any]:
    if _skip(text, index + 1) != len(text):
        raise IrregularSnapshot  # extra data
    return top


def _walk_registrations(text: str, index: int, registrations: LoadedRegistrations) -> int:
    """Read the registrations table whose ``{`` is at ``index``; the index after it.
    Whitespace is looked for only where a token was expected: json.dump writes none."""
    put, scan, skip = registrations.put, _scan, _skip
    # TinyDB's document ids must increase (as TinyDB and snapshot_chunks write them), or
    # a repeated one could hide: json.loads would keep only its last document. (Not
    # a set of them: 100k small strings freed at the end leave 6 MB of holes.)
    last = 0
    index = skip(text, index + 1)
    if text[index] == "}":
        return index + 1
    while True:
        if text[index] != '"':
            index = skip(text, index)
            if text[index] != '"':
                raise IrregularSnapshot
        doc_id, index = scan(text, index)
        if text[index] != ":":
            index = skip(text, index)
            if text[index] != ":":
                raise IrregularSnapshot
        try:
            doc, index = scan(text, index + 1)
        except StopIteration:  # the scanner skips no whitespace
            doc, index = scan(text, skip(text, index + 1))
        number = int(doc_id)
        if number <= last:
            raise IrregularSnapshot
        last = number
        if type(doc) is dict:
            key = doc.pop("_key", None)
            if type(key) is str:
                put(key, doc)
        if text[index] != ",":
            index = skip(text, index)
            if text[index] == "}":
                return index + 1
            if text[index] != ",":
                raise IrregularSnapshot
        index += 1


def _skip(text: str, index: int) -> int:
    """The index of the first character from ``index`` on that is not JSON whitespace."""
    return _SPACE.match(text, index).end()  # type: ignore[union-attr]  # matches anything


def snapshot_chunks(schema: int, documents: Mapping[str, Mapping[str, dict[str, Any]]],
                    registrations: FrozenRegistrations,
                    meter: SnapshotMeter | None = None) -> Iterator[str]:
    """The snapshot file's text, in pieces: ``documents`` (every table but the
    registrations) and ``registrations``, each document with its key as ``_key`` under
    TinyDB ids from 1, as ``json.dump`` of that whole database wrote it. ``meter``
    measures the pieces, and where the registrations table lies (for the packed cache)."""
    pieces = _pieces(schema, documents, registrations)
    if meter is None:
        yield from pieces
        return
    opening = _table_opening(REGISTRATIONS)
    start = -1
    for piece in pieces:
        if piece == opening:
            start = meter.chars + len(piece) - 1  # its "{"
        elif start >= 0 and meter.span is None and piece in _OPENINGS:  # the next table
            meter.span = (start, meter.chars)
        yield meter.chunk(piece)


def _table_opening(name: str) -> str:
    return "," + _encode(name) + ":{"


_OPENINGS = {_table_opening(name) for name in TABLES}


def _pieces(schema: int, documents: Mapping[str, Mapping[str, dict[str, Any]]],
            registrations: FrozenRegistrations) -> Iterator[str]:
    yield "{" + _encode(META_TABLE) + ":" + _encode({"1": {"schema": schema}})
    for name in TABLES:
        yield _table_opening(name)
        pieces: list[str] = []
        if name == REGISTRATIONS:
            for number, doc in enumerate(registrations.docs(), start=1):
                doc["_key"] = doc["node"]
                pieces.append(f'"{number}":{_encode(doc)}')
                if len(pieces) == CHUNK:
                    yield ",".join(pieces) + ("," if number < len(registrations) else "")
                    pieces = []
        else:
            table = documents[name]
            for number, (key, doc) in enumerate(table.items(), start=1):
                pieces.append(f'"{number}":{_encode({**doc, "_key": key})}')
                if len(pieces) == CHUNK:
                    yield ",".join(pieces) + ("," if number < len(table) else "")
                    pieces = []
        yield ",".join(pieces) + "}"
    yield "}"
