"""The TinyDB store's packed cache: its registrations as memory holds them, on disk.

Opening a store with 100k registrations parses every document of the snapshot and packs
it (``packed.py``): about as long again as a plain ``json.load`` of the file. Each
compaction therefore also writes, beside the snapshot, the packed records themselves
(``store.json.packed``, mode 0600). The next open reads them in one piece and parses
only the rest of the snapshot (the other, small tables), skipping the registrations
table's text.

The cache is used only for the very snapshot it was written with: it names that file's
size and CRC-32, where its registrations table lies in the text, and the CRC-32 of its
own contents. Any difference (the snapshot edited by hand or by ``store migrate``, a
compaction whose cache write failed, a damaged cache) and the snapshot is read as
ever. The journal is replayed on top either way. Deleting the cache is always safe.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import zlib
from pathlib import Path

from .files import replace_file
from .packed import FrozenRegistrations, RegistrationTable

log = logging.getLogger(__name__)

MAGIC = b"slixmpp-push packed registrations 1\n"
#: snapshot size, snapshot CRC-32, registrations table's span in the text (start of its
#: "{", end after its "}"), length of the values (JSON), of the records, and the CRC-32
#: of both.
_HEADER = struct.Struct("<QIQQQQI")
SUFFIX = ".packed"


def cache_path(snapshot: Path) -> Path:
    return snapshot.with_name(snapshot.name + SUFFIX)


class SnapshotMeter:
    """What :func:`write_cache` needs to know of the snapshot written through it: its
    bytes' size and CRC-32, and the span of its registrations table in the text."""

    def __init__(self) -> None:
        self.size = 0
        self.crc = 0
        self.chars = 0  # characters so far
        self.span: tuple[int, int] | None = None

    def chunk(self, text: str) -> str:
        data = text.encode("utf-8")
        self.size += len(data)
        self.crc = zlib.crc32(data, self.crc)
        self.chars += len(text)
        return text


def write_cache(snapshot: Path, meter: SnapshotMeter, registrations: FrozenRegistrations,
                temp_prefix: str) -> None:
    """Write the cache of the snapshot just written (``meter`` measured it). When it
    cannot be written (logged) there is none: an older one would not match anyway."""
    path = cache_path(snapshot)
    try:
        if meter.span is None:
            raise ValueError("the snapshot has no registrations table")
        # (An app or domain that is no JSON value came through the API, not a file.)
        values = json.dumps(registrations.values, separators=(",", ":")).encode()
        arena = registrations.live_arena()
        header = _HEADER.pack(meter.size, meter.crc, meter.span[0], meter.span[1],
                              len(values), len(arena), zlib.crc32(arena, zlib.crc32(values)))
        replace_file(path, lambda handle: handle.writelines((MAGIC, header, values, arena)),
                     temp_prefix=temp_prefix, binary=True)
    except (OSError, TypeError, ValueError) as exc:  # the snapshot is what counts
        log.warning("store: could not write %s (%s); the next start reads the snapshot "
                    "instead", path, exc)
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def read_cache(snapshot: Path, raw: bytes) -> tuple[RegistrationTable, tuple[int, int]] | None:
    """The registrations cached for the snapshot whose bytes are ``raw``, and the span
    of its registrations table; None when there is no cache for these very bytes."""
    path = cache_path(snapshot)
    try:
        with open(path, "rb") as handle:
            data = bytearray(os.fstat(handle.fileno()).st_size)
            data = data[:handle.readinto(data)]
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("store: cannot read %s (%s); reading the snapshot instead", path, exc)
        return None
    start = len(MAGIC) + _HEADER.size
    if not data.startswith(MAGIC) or len(data) < start:
        log.warning("store: %s is not a cache this version writes; reading the snapshot "
                    "instead", path)
        return None
    size, crc, first, last, values_length, arena_length, payload_crc = \
        _HEADER.unpack_from(data, len(MAGIC))
    if size != len(raw) or crc != zlib.crc32(raw):
        log.info("store: %s is of another snapshot; reading the snapshot", path)
        return None
    values = bytes(data[start:start + values_length])
    del data[:start + values_length]  # the records, in place (no second copy of them)
    if len(values) != values_length or len(data) != arena_length \
            or zlib.crc32(data, zlib.crc32(values)) != payload_crc:
        log.warning("store: %s is damaged; reading the snapshot instead", path)
        return None
    try:
        table = RegistrationTable.adopt(data, json.loads(values))
    except ValueError as exc:
        log.warning("store: %s is damaged (%s); reading the snapshot instead", path, exc)
        return None
    return table, (first, last)
