"""HPACK for our APNs connections: header blocks encoded and decoded for less CPU.

hpack (h2's HPACK library) keeps the dynamic tables (:class:`hpack.table.HeaderTable`);
these classes replace its pure-Python coding, where a request and its reply spent a
third of their HTTP/2 time:

- :class:`HeaderEncoder` writes request headers without Huffman coding, and the
  headers new with each request as never-indexed literals;
- :class:`HeaderDecoder` reads a reply's block in one pass over the bytes, with a
  Huffman decoder that goes a byte at a time (hpack's goes a nibble at a time),
  built from hpack's own table: a reply as the fake APNs writes it (``:status``,
  ``apns-id``, ``date``) is decoded in half the time (24 µs instead of 46 on the
  benchmark machine), its ``apns-id`` in 5.8 µs instead of 9.0.

Both are h2's ``encoder`` and ``decoder`` in
:class:`~slixmpp_push.providers.apns_h2.ApnsH2Connection`, so they keep the
attributes h2 sets (table sizes, the header list limit).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from hpack import Decoder, Encoder, HeaderTuple
from hpack.exceptions import HPACKDecodingError, InvalidTableSizeError, OversizedHeaderListError
from hpack.table import HeaderTable

try:  # the table and flags hpack decodes Huffman codes with, a nibble at a time
    from hpack.huffman_table import (
        HUFFMAN_COMPLETE,
        HUFFMAN_EMIT_SYMBOL,
        HUFFMAN_FAIL,
        HUFFMAN_TABLE,
    )
except ImportError:  # pragma: no cover (hpack_fits() says no: hpack's decoder is kept)
    HUFFMAN_COMPLETE, HUFFMAN_EMIT_SYMBOL, HUFFMAN_FAIL, HUFFMAN_TABLE = 1, 2, 4, []

__all__ = ["HPACK_FITS", "HeaderDecoder", "HeaderEncoder", "Headers", "decode_huffman"]

#: A header block as decoded (or to encode): ``(name, value)`` pairs of bytes.
Headers = list[tuple[bytes, bytes]]

def _hpack_integer(value: int, prefix_bits: int, flags: int = 0) -> bytes:
    """An HPACK integer (RFC 7541, 5.1) in a ``prefix_bits`` prefix, ``flags`` above it."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    encoded = bytearray((flags | limit,))
    value -= limit
    while value >= 0x80:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


_SHORT_LENGTHS = [bytes((n,)) for n in range(0x7F)]


def _hpack_string(data: bytes) -> bytes:
    """The length prefix of an HPACK string literal, without Huffman coding (5.2)."""
    size = len(data)
    return _SHORT_LENGTHS[size] if size < 0x7F else _hpack_integer(size, 7)


def _never_indexed_name(name: bytes) -> bytes:
    """The start of a never-indexed literal field (6.2.3): its name, as an index
    into the static table when there is one."""
    for index, (static_name, _) in enumerate(HeaderTable.STATIC_TABLE, 1):
        if static_name == name:
            return _hpack_integer(index, 4, 0x10)
    return b"\x10" + _hpack_string(name) + name


class HeaderEncoder(Encoder):
    """HPACK for the request headers we build, in place of h2's hpack encoder.

    - No Huffman coding: hpack's is pure Python, a third of its encoding time, for
      a few dozen bytes saved per request.
    - The headers new with nearly every request (``:path`` with the device token,
      ``apns-id``, ``apns-expiration``, ``apns-collapse-id``) are never-indexed
      literals: indexed, they would only churn the dynamic table, evicting the
      provider token (some 200 bytes sent again) and moving every index.
    - Every other header (``:method``, ``host``, ``apns-topic``, ``apns-priority``,
      ``apns-push-type``, ``authorization``) goes into the dynamic table the first
      time it is seen (hpack's table), and is then sent as a one-byte index, looked
      up in :attr:`_fields`: a dictionary emptied whenever the table changes (an
      entry added, a new size from the peer's SETTINGS).
    """

    #: Headers sent as never-indexed literals: name -> the field's first bytes.
    NEVER_INDEXED: ClassVar[dict[bytes, bytes]] = {}

    def __init__(self) -> None:
        super().__init__()
        self._fields: dict[tuple[bytes, bytes], bytes] = {}

    @property
    def header_table_size(self) -> int:
        return self.header_table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # As hpack's (h2 calls it with the peer's SETTINGS_HEADER_TABLE_SIZE);
        # a smaller table may have evicted entries: every cached index is stale.
        self.header_table.maxsize = value
        if self.header_table.resized:
            self.table_size_changes.append(value)
        self._fields.clear()

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        """The header block of ``headers`` (``(name, value)`` bytes, as h2 passes
        them); ``huffman`` is ignored."""
        table = self.header_table
        block: list[bytes] = []
        if table.resized:
            block.append(self._encode_table_size_change())
            table.resized = False
        fields, never_indexed = self._fields, self.NEVER_INDEXED
        for header in headers:
            name, value = header
            start = never_indexed.get(name)
            if start is None and isinstance(header, HeaderTuple) and not header.indexable:
                start = _never_indexed_name(name)
            if start is not None:
                block += (start, _hpack_string(value), value)
                continue
            field = fields.get(header)
            block.append(field if field is not None else self._field(name, value))
        return b"".join(block)

    def _field(self, name: bytes, value: bytes) -> bytes:
        """An indexed field, cached, when the tables hold the header; else a
        literal with incremental indexing, the header added to the table."""
        table = self.header_table
        match = table.search(name, value)
        if match is not None and match[2] is not None:
            field = self._fields[(name, value)] = _hpack_integer(match[0], 7, 0x80)
            return field
        if match is not None:  # the name is in a table
            field = _hpack_integer(match[0], 6, 0x40) + _hpack_string(value) + value
        else:
            field = b"\x40" + _hpack_string(name) + name + _hpack_string(value) + value
        table.add(name, value)
        self._fields.clear()  # every dynamic table index moved
        return field


def hpack_fits() -> bool:
    """Whether hpack still has what :class:`HeaderEncoder` and :class:`HeaderDecoder`
    build on (pinned by tests/test_provider_apns_hpack.py); if not, hpack's own are
    kept: slower, as correct."""
    encoder, decoder = Encoder(), Decoder()
    table = getattr(encoder, "header_table", None)
    return (len(getattr(HeaderTable, "STATIC_TABLE", ())) == 61
            and all(hasattr(table, name)
                    for name in ("search", "add", "get_by_index", "resized", "maxsize"))
            and isinstance(getattr(encoder, "table_size_changes", None), list)
            and hasattr(encoder, "_encode_table_size_change")
            and isinstance(getattr(decoder, "header_table", None), HeaderTable)
            and isinstance(getattr(decoder, "max_allowed_table_size", None), int)
            and isinstance(getattr(decoder, "max_header_list_size", None), int)
            and len(HUFFMAN_TABLE) == 256 * 16
            and HUFFMAN_TABLE[0] == (4, 0, 0))  # (state, flags, symbol), as decode_huffman


HPACK_FITS = hpack_fits()
if HPACK_FITS:
    HeaderEncoder.NEVER_INDEXED.update(
        (name, _never_indexed_name(name))
        for name in (b":path", b"apns-id", b"apns-expiration", b"apns-collapse-id"))


# -- decoding ------------------------------------------------------------------------------

#: Huffman decoding a byte at a time: ``state << 8 | byte`` -> (the state after it, the
#: bytes it completes, whether the input may end there). Filled as bytes are met, from
#: hpack's table of nibbles (256 states of 16 nibbles): at most 65,536 entries, a few
#: hundred for the header values APNs sends.
_BYTE_STEPS: dict[int, tuple[int, bytes, bool]] = {}


def _byte_step(key: int) -> tuple[int, bytes, bool]:
    state, flags, emitted = key >> 8, 0, bytearray()
    for nibble in (key >> 4 & 0x0F, key & 0x0F):
        state, flags, symbol = HUFFMAN_TABLE[state * 16 + nibble]
        if flags & HUFFMAN_FAIL:
            raise HPACKDecodingError("Invalid Huffman string")
        if flags & HUFFMAN_EMIT_SYMBOL:
            emitted.append(symbol)
    step = _BYTE_STEPS[key] = (state, bytes(emitted), bool(flags & HUFFMAN_COMPLETE))
    return step


def decode_huffman(data: bytes) -> bytes:
    """A Huffman-coded string (RFC 7541, 5.2), as hpack's ``decode_huffman`` decodes it."""
    steps, state, complete = _BYTE_STEPS, 0, True
    decoded = bytearray()
    for byte in data:
        key = state << 8 | byte
        state, emitted, complete = steps.get(key) or _byte_step(key)
        decoded += emitted
    if not complete:
        raise HPACKDecodingError("Incomplete Huffman string")
    return bytes(decoded)


def _integer(data: bytes, position: int, prefix_bits: int) -> tuple[int, int]:
    """The integer (5.1) at ``position`` with a ``prefix_bits`` prefix, and where it ends."""
    limit = (1 << prefix_bits) - 1
    value = data[position] & limit
    position += 1
    if value < limit:
        return value, position
    shift = 0
    while True:
        byte = data[position]  # IndexError: the block ends within it (see decode)
        position += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise HPACKDecodingError("HPACK integer too long")


class HeaderDecoder(Decoder):
    """hpack's decoder, with :meth:`decode` in one pass and :func:`decode_huffman`.

    The headers come back as plain tuples of bytes (what hpack gives with
    ``raw=True``, but for the never-indexed flag, which a client that does not pass
    replies on has no use for).
    """

    def decode(self, data: bytes, raw: bool = True) -> Headers:  # type: ignore[override]
        """The headers of the block ``data``; ``raw`` is ignored (always bytes)."""
        table = self.header_table
        headers: Headers = []
        listed, position, end = 0, 0, len(data)
        try:
            while position < end:
                first = data[position]
                if first & 0x80:  # indexed field (6.1)
                    index, position = _integer(data, position, 7)
                    header = table.get_by_index(index)
                elif first & 0x40:  # literal with incremental indexing (6.2.1)
                    header, position = self._literal(data, position, 6)
                    table.add(*header)
                elif first & 0x20:  # dynamic table size update (6.3)
                    if headers:
                        raise HPACKDecodingError("Table size update not at the start of the block")
                    size, position = _integer(data, position, 5)
                    if size > self.max_allowed_table_size:
                        raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                    table.maxsize = size
                    continue
                else:  # literal without indexing, or never indexed (6.2.2, 6.2.3)
                    header, position = self._literal(data, position, 4)
                headers.append(header)
                listed += len(header[0]) + len(header[1]) + 32
                if listed > self.max_header_list_size:
                    raise OversizedHeaderListError(
                        f"A header list larger than {self.max_header_list_size} has been received")
        except IndexError:  # an integer cut short
            raise HPACKDecodingError("Truncated header block") from None
        if table.maxsize > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        return headers

    def _literal(self, data: bytes, position: int, prefix_bits: int,
                 ) -> tuple[tuple[bytes, bytes], int]:
        index, position = _integer(data, position, prefix_bits)
        if index:
            name = self.header_table.get_by_index(index)[0]
        else:
            name, position = _string(data, position)
        value, position = _string(data, position)
        return (name, value), position


def _string(data: bytes, position: int) -> tuple[bytes, int]:
    """The string literal (5.2) at ``position``, and where it ends."""
    huffman = data[position] & 0x80
    length, position = _integer(data, position, 7)
    end = position + length
    if end > len(data):
        raise HPACKDecodingError("Truncated header block")
    text = data[position:end]
    return (decode_huffman(text) if huffman else text), end
