"""Our HPACK decoder (slixmpp_push/providers/apns_hpack.py) against hpack's own.

Every block here is written by hpack's encoder (or by hand, for what an encoder
would not write), and decoded by both: the headers, the table left behind and the
errors must be the same.
"""

from __future__ import annotations

import random
from importlib.metadata import version

import pytest
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableIndexError,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman as hpack_decode_huffman

from slixmpp_push.providers.apns_hpack import HPACK_FITS, HeaderDecoder, decode_huffman

HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def both() -> tuple[HeaderDecoder, Decoder]:
    return HeaderDecoder(), Decoder()


def same_outcome(ours: HeaderDecoder, theirs: Decoder, block: bytes) -> None:
    """Both decoders decode ``block`` alike: the same headers, or the same error."""
    try:
        expected = [tuple(h) for h in theirs.decode(block, raw=True)]
    except HPACKDecodingError as exc:
        with pytest.raises(type(exc)):
            ours.decode(block)
        return
    assert ours.decode(block) == expected
    assert list(ours.header_table.dynamic_entries) == list(theirs.header_table.dynamic_entries)
    assert ours.header_table_size == theirs.header_table_size


def test_the_huffman_decoder_agrees_with_hpacks_on_every_kind_of_input() -> None:
    rng = random.Random(7)
    texts = [b"", b"a", b"0123456789abcdef-ABCDEF", bytes(range(256)),
             b"Wed, 02 Dec 2026 19:11:27 GMT"]
    texts += [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 60))) for _ in range(300)]
    for text in texts:
        assert decode_huffman(HUFFMAN.encode(text)) == text
    # Anything at all, valid or not (EOS, padding longer than 7 bits or not all ones).
    for _ in range(3000):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 12)))
        try:
            expected = hpack_decode_huffman(data)
        except HPACKDecodingError:
            with pytest.raises(HPACKDecodingError):
                decode_huffman(data)
        else:
            assert decode_huffman(data) == expected


@pytest.mark.parametrize("seed", range(6))
def test_random_blocks_decode_as_hpack_decodes_them(seed: int) -> None:
    """Replies as APNs writes them and a good deal more: every representation, long
    names and values, Huffman or not, never-indexed fields, evictions, table resizes."""
    rng = random.Random(seed)
    encoder = Encoder()
    ours, theirs = both()
    names = [b":status", b"apns-id", b"date", b"retry-after", b"content-type",
             b"apns-unique-id", b"x-" + b"n" * 150]
    for _ in range(300):
        if rng.random() < 0.05:
            size = rng.choice([0, 64, 256, 4096])
            encoder.header_table_size = size
            for decoder in (ours, theirs):
                decoder.max_allowed_table_size = 4096
        headers: list[HeaderTuple | tuple[bytes, bytes]] = []
        for _ in range(rng.randint(0, 6)):
            name = rng.choice(names)
            value = rng.choice([b"200", b"410", b"application/json", b"%x" % rng.getrandbits(128),
                                bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))])
            headers.append(NeverIndexedHeaderTuple(name, value) if rng.random() < 0.2
                           else (name, value))
        block = encoder.encode(headers, huffman=rng.random() < 0.8)
        assert ours.decode(block) == [tuple(h) for h in theirs.decode(block, raw=True)]
        assert list(ours.header_table.dynamic_entries) == list(
            theirs.header_table.dynamic_entries)


@pytest.mark.parametrize(("block", "error"), [
    (b"\x80", InvalidTableIndexError),  # index 0
    (b"\xbe", InvalidTableIndexError),  # index 62: the dynamic table is empty
    (b"\xff", HPACKDecodingError),  # an integer cut short
    (b"\x40\x05ab", HPACKDecodingError),  # a name cut short
    (b"\x00\x01a\x83\xff", HPACKDecodingError),  # Huffman value cut short
    (b"\x00\x01a\x81\xff", HPACKDecodingError),  # Huffman padding of 8 bits
    (b"\x88\x20", HPACKDecodingError),  # a table size update after a header
    (b"\x3f\xe2\x1f", InvalidTableSizeError),  # over the allowed size (4,096)
    (b"\xff" + b"\xff" * 10 + b"\x01", HPACKDecodingError),  # an integer too long
])
def test_malformed_blocks_are_refused_as_hpack_refuses_them(
        block: bytes, error: type[Exception]) -> None:
    ours, theirs = both()
    for decoder in (ours, theirs):
        with pytest.raises(error):
            decoder.decode(block, raw=True)


def test_the_header_list_limit_and_table_size_settings_hold() -> None:
    ours, theirs = both()
    ours.max_header_list_size = theirs.max_header_list_size = 100
    block = Encoder().encode([(b"x-big", b"v" * 80)], huffman=False)
    for decoder in (ours, theirs):
        with pytest.raises(OversizedHeaderListError):
            decoder.decode(block, raw=True)

    # The peer may shrink the table, and must, before we let it grow back.
    ours, theirs = both()
    encoder = Encoder()
    same_outcome(ours, theirs, encoder.encode([(b"apns-id", b"1")]))
    encoder.header_table_size = 0
    same_outcome(ours, theirs, encoder.encode([(b"apns-id", b"2")]))
    assert ours.header_table.dynamic_entries == type(ours.header_table.dynamic_entries)()
    ours.max_allowed_table_size = theirs.max_allowed_table_size = 0
    same_outcome(ours, theirs, Encoder().encode([(b"apns-id", b"3")]))  # grows it: refused


def test_hpack_still_has_what_the_decoder_builds_on() -> None:
    assert HPACK_FITS, (
        f"hpack {version('hpack')}: apns_hpack.hpack_fits() says no: APNs connections fall "
        "back to hpack's own (slower) coding; review HeaderDecoder and decode_huffman")
