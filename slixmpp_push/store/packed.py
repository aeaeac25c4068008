"""The store's registrations in memory, packed: one byte array, two hash indexes.

A store answers every publish from memory, and holds every registration there: 100k of
them and more. As Python objects, even compact ones, a registration costs about 525
bytes (the object, its node, account and token objects, its dictionary entries); a
process holding 100k was twice the size of an empty one. Here each is one record of 110
to 150 bytes (without and with a VoIP token) in a single ``bytearray`` (the *arena*),
found through two open-addressing hash tables of arena offsets (``array('q')``, 8 bytes
a slot): one by node, one by account (an account may have several registrations). A
:class:`~slixmpp_push.models.Registration` is made when one is read: a few µs, once per
publish.

A record::

    size u32 | live u8 | dialect u8 | app u32 | domain u32 | node | account | token |
    voip_token | secret | device_id | device_key | channel | channel_key | created | updated

``app`` and ``domain`` are indexes into a list of the distinct values (there are few).
Every field after them is a tag byte and its payload (:data:`STR8` … :data:`JSON`):
text as UTF-8, hex text as the bytes it spells (as ``Registration`` keeps it), a float
as 8 bytes, ``updated`` as :data:`SAME` when it is ``created``'s very float, and
anything else a hand-written document may hold (an int, a list) as JSON, so that every
value reads back exactly as it was given.

A replaced or removed record is only marked dead; records are appended, so the arena
is in insertion order (what iteration gives, as a dict's would). Once dead records take
more room than live ones the arena is rewritten without them and the indexes rebuilt.
"""

from __future__ import annotations

import json
import struct
from array import array
from collections.abc import Iterator
from operator import itemgetter
from typing import Any

from ..models import REGISTRATION_FIELDS, Dialect, Registration, _expand

_HEAD = struct.Struct("<IBBII")  # size, live, dialect, app, domain
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_FIELDS = _HEAD.size  # where the tagged fields start
_NODE_LENGTH = _FIELDS + 1  # a short node's length byte (after its STR8 tag)
_NODE = _FIELDS + 2  # a short node's first byte

# Tags of the fields.
NONE, STR8, STR32, HEX8, HEX32, FLOAT, SAME, JSON = range(8)

#: Most records have none of the five rare fields, and floats for ``created`` and
#: ``updated``: one struct each, by the lengths of their node, account, token and VoIP
#: token (-1: none) and whether ``updated`` is ``created``'s float
#: (:meth:`RegistrationTable._common`).
_COMMON: dict[tuple[int, int, int, int, bool], struct.Struct] = {}
_RARE_NONE = bytes((NONE,) * 5)


def _common_layout(node: int, account: int, token: int, voip: int,
                   same: bool) -> struct.Struct | None:
    """The struct of a common record with fields of these lengths (None: one is too
    long for a one-byte length)."""
    if max(node, account, token, voip) > 255:
        return None
    layout = struct.Struct(f"<IBBIIBB{node}sBB{account}sBB{token}s"
                           + (f"BB{voip}s" if voip >= 0 else "B") + "5sBd"
                           + ("B" if same else "Bd"))
    if len(_COMMON) < 16384:  # every length of account below 256, several times over
        _COMMON[(node, account, token, voip, same)] = layout
    return layout


#: The tag of a token as Registration keeps it, by its type.
_TOKEN_TAGS: dict[type, int] = {bytes: HEX8, str: STR8, type(None): NONE}


def _as_bytes(token: bytes | str | None) -> bytes:
    if isinstance(token, str):
        return token.encode("utf-8", "surrogatepass")
    return b"" if token is None else token


def _hex_or_text(value: str) -> tuple[int, bytes]:
    """The tag and bytes of a token as Registration keeps it: hex text as the bytes it
    spells (lowercase, an even number of digits), other text as UTF-8."""
    try:
        packed = _fromhex(value)
        if value and packed.hex() == value:
            return HEX8, packed
    except ValueError:
        pass
    return STR8, value.encode("utf-8", "surrogatepass")


#: Index slots: no record, and a record removed (probing goes on past it).
EMPTY, GONE = -1, -2
#: Dead bytes tolerated before the arena is rewritten, however few live ones there are.
MIN_COMPACTION = 64 * 1024

_DIALECT_LIST = list(Dialect)
_DIALECT_NUMBER = {dialect: number for number, dialect in enumerate(_DIALECT_LIST)}
_DIALECT_NUMBER_OF_TEXT = {dialect.value: number for number, dialect in enumerate(_DIALECT_LIST)}
_NO_RARE = (None,) * 5
_fromhex = bytes.fromhex
_new = object.__new__
_doc_values = itemgetter(*REGISTRATION_FIELDS)


def _put_sized(out: bytearray, short: int, long: int, data: bytes) -> None:
    """``data`` with its length, under tag ``short`` (a one-byte length) or ``long``."""
    if len(data) < 256:
        out += bytes((short, len(data)))
    else:
        out.append(long)
        out += _U32.pack(len(data))
    out += data


def _put_text(out: bytearray, text: str) -> None:
    _put_sized(out, STR8, STR32, text.encode("utf-8", "surrogatepass"))


def _put_value(out: bytearray, value: Any) -> None:
    kind = type(value)
    if value is None:
        out.append(NONE)
    elif kind is str:
        _put_text(out, value)
    elif kind is bytes:  # hex text, compacted
        _put_sized(out, HEX8, HEX32, value)
    elif kind is float:
        out.append(FLOAT)
        out += _F64.pack(value)
    else:  # what only a hand-written document holds: kept exactly, type and all
        # (What JSON cannot hold, the store could not write either: TypeError.)
        data = json.dumps(value, separators=(",", ":")).encode()
        out.append(JSON)
        out += _U32.pack(len(data))
        out += data


def _get_value(arena: bytes | bytearray, at: int) -> tuple[Any, int]:
    """The value of the field at ``at``, and where the next field starts."""
    tag = arena[at]
    if tag == STR8:
        end = at + 2 + arena[at + 1]
        return arena[at + 2:end].decode("utf-8", "surrogatepass"), end
    if tag == NONE:
        return None, at + 1
    if tag == HEX8:
        end = at + 2 + arena[at + 1]
        return bytes(arena[at + 2:end]), end
    if tag == FLOAT:
        return _F64.unpack_from(arena, at + 1)[0], at + 9
    length = _U32.unpack_from(arena, at + 1)[0]
    end = at + 5 + length
    if tag == STR32:
        return arena[at + 5:end].decode("utf-8", "surrogatepass"), end
    if tag == HEX32:
        return bytes(arena[at + 5:end]), end
    if tag == JSON:
        return json.loads(arena[at + 5:end]), end
    raise AssertionError(f"registration record: unknown tag {tag} at {at}")


def _skip_field(arena: bytes | bytearray, at: int) -> int:
    """Where the text field at ``at`` (a node) ends."""
    if arena[at] == STR8:
        return at + 2 + arena[at + 1]
    return at + 5 + _U32.unpack_from(arena, at + 1)[0]


def _text_bytes(arena: bytes | bytearray, at: int) -> bytes | bytearray:
    if arena[at] == STR8:
        return arena[at + 2:at + 2 + arena[at + 1]]
    return arena[at + 5:at + 5 + _U32.unpack_from(arena, at + 1)[0]]


def _build(arena: bytes | bytearray, at: int, values: list[Any],
           node: str | None = None) -> Registration:
    """The Registration of the record at ``at`` (``node``: its node, known already)."""
    _, _, dialect, app, domain = _HEAD.unpack_from(arena, at)
    get = _get_value
    if node is None:
        node, cursor = get(arena, at + _FIELDS)
    else:
        cursor = _skip_field(arena, at + _FIELDS)
    registration = _new(Registration)
    registration.node = node
    registration.account, cursor = get(arena, cursor)
    registration.domain = values[domain]
    registration.app = values[app]
    registration.dialect = _DIALECT_LIST[dialect]
    registration._token, cursor = get(arena, cursor)
    registration._voip_token, cursor = get(arena, cursor)
    secret, cursor = get(arena, cursor)
    device_id, cursor = get(arena, cursor)
    device_key, cursor = get(arena, cursor)
    channel, cursor = get(arena, cursor)
    channel_key, cursor = get(arena, cursor)
    if secret is None and device_id is None and device_key is None and channel is None \
            and channel_key is None:
        registration._rare = None
    else:
        registration._rare = (secret, device_id, device_key, channel, channel_key)
    created, cursor = get(arena, cursor)
    registration.created = created
    registration.updated = created if arena[cursor] == SAME else get(arena, cursor)[0]
    return registration


class RegistrationTable:
    """Registrations by node, packed (see the module's docstring); an account's are
    found through :meth:`by_account`. Iteration is in insertion order (a replaced
    registration moves to the end), and fails, as a dict's does, if the table is
    rewritten meanwhile. ``put`` raises TypeError for a node or account that is not
    text, ValueError for an unknown dialect, and changes nothing then.

    A store loading its registrations calls :meth:`reserve` first, and the indexes
    are sized once.
    """

    __slots__ = ("_accounts", "_app_counts", "_arena", "_dead", "_filled", "_generation",
                 "_grow_at", "_live", "_mask", "_nodes", "_text_numbers", "_value_numbers",
                 "_values")

    def __init__(self) -> None:
        self._arena = bytearray()
        self._values: list[Any] = []  # app and domain values, by number
        self._value_numbers: dict[tuple[type, Any], int] = {}
        self._text_numbers: dict[str, int] = {}  # the same, for text values (most)
        self._app_counts: dict[int, int] = {}  # app number -> live records
        self._live = 0  # records alive
        self._dead = 0  # bytes of dead records
        self._generation = 0  # arena rewrites (iterations in progress then fail)
        self._nodes = self._accounts = array("q")
        #: Slots of either index not empty (at most), and how many may be before it grows.
        self._mask = self._filled = self._grow_at = 0
        self._reindex(0)

    # -- reading -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._live

    def __contains__(self, node: object) -> bool:
        return type(node) is str and self._node_slot(node) >= 0

    def get(self, node: str) -> Registration | None:
        slot = self._node_slot(node)
        if slot < 0:
            return None
        return _build(self._arena, self._nodes[slot], self._values, node)

    def __getitem__(self, node: str) -> Registration:
        registration = self.get(node)
        if registration is None:
            raise KeyError(node)
        return registration

    def __iter__(self) -> Iterator[str]:
        """The nodes."""
        arena = self._arena
        for at in self._offsets():
            yield _get_value(arena, at + _FIELDS)[0]

    def values(self) -> Iterator[Registration]:
        arena, values = self._arena, self._values
        for at in self._offsets():
            yield _build(arena, at, values)

    def by_account(self, account: str) -> list[Registration]:
        """The account's registrations, oldest first."""
        key = account.encode("utf-8", "surrogatepass")
        arena, slots, mask = self._arena, self._accounts, self._mask
        found = []
        slot = hash(account) & mask
        while True:
            at = slots[slot]
            if at == EMPTY:
                break
            if at >= 0 and _text_bytes(arena, _skip_field(arena, at + _FIELDS)) == key:
                found.append(at)
            slot = (slot + 1) & mask
        found.sort()
        return [_build(arena, at, self._values) for at in found]

    def count_by_app(self) -> dict[Any, int]:
        return {self._values[number]: count for number, count in self._app_counts.items()}

    @classmethod
    def adopt(cls, arena: bytearray, values: list[Any]) -> RegistrationTable:
        """A table of the live records ``arena`` holds (:meth:`FrozenRegistrations.live_arena`
        wrote them, numbering app and domain values in ``values``); ValueError if they
        are not laid out as records (their fields are trusted: the caller checked that
        the bytes are the ones written). The table keeps ``arena`` itself."""
        table = cls()
        for value in values:
            table._number(value)
        if len(table._values) != len(values):
            raise ValueError("repeated app or domain values")
        table._arena = arena
        counts: dict[int, int] = {}
        at, end, live = 0, len(arena), 0
        try:
            while at < end:
                size, alive, dialect, app, domain = _HEAD.unpack_from(arena, at)
                if not alive or size <= _FIELDS or at + size > end \
                        or dialect >= len(_DIALECT_LIST) or app >= len(values) \
                        or domain >= len(values):
                    raise ValueError(f"no record at {at}")
                counts[app] = counts.get(app, 0) + 1
                live += 1
                at += size
            table._live, table._app_counts = live, counts
            table._reindex(live, room=False)  # reads each node and account
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise ValueError(f"no record at {at}: {exc}") from None
        return table

    def copy(self) -> RegistrationTable:
        twin = RegistrationTable.__new__(RegistrationTable)
        twin._arena = bytearray(self._arena)
        twin._values, twin._value_numbers = list(self._values), dict(self._value_numbers)
        twin._text_numbers = dict(self._text_numbers)
        twin._app_counts = dict(self._app_counts)
        twin._live, twin._dead, twin._generation = self._live, self._dead, 0
        twin._nodes, twin._accounts = array("q", self._nodes), array("q", self._accounts)
        twin._mask = self._mask
        twin._filled, twin._grow_at = self._filled, self._grow_at
        return twin

    def frozen(self) -> FrozenRegistrations:
        """The registrations as they are now, to be read in another thread (the arena
        copied: one ``memcpy``; the registrations are made as the copy is read)."""
        return FrozenRegistrations(bytes(self._arena), list(self._values), self._live)

    @property
    def nbytes(self) -> int:
        """Memory the records and indexes take (allocated, not counting over-allocation)."""
        return (len(self._arena) + self._nodes.itemsize * len(self._nodes)
                + self._accounts.itemsize * len(self._accounts))

    # -- writing -------------------------------------------------------------------------
    def put(self, registration: Registration) -> None:
        """Add ``registration``, replacing the one with its node."""
        token, voip_token = registration._token, registration._voip_token
        created, updated = registration.created, registration.updated
        if registration._rare is None and float is type(created) is type(updated) \
                and type(token) in _TOKEN_TAGS and type(voip_token) in _TOKEN_TAGS \
                and type(registration.node) is str and type(registration.account) is str \
                and type(registration.app) is str and type(registration.domain) is str:
            dialect = _DIALECT_NUMBER.get(registration.dialect)
            node_bytes = registration.node.encode("utf-8", "surrogatepass")
            if dialect is not None:
                app = self._number(registration.app)
                packed = self._common(
                    node_bytes, registration.account.encode("utf-8", "surrogatepass"), dialect,
                    app, self._number(registration.domain), _TOKEN_TAGS[type(token)],
                    _as_bytes(token), _TOKEN_TAGS[type(voip_token)], _as_bytes(voip_token),
                    created, updated, updated is created)
                if packed is not None:
                    self._append(packed, registration.node, node_bytes, registration.account,
                                 app)
                    return
        record, app = self._record(registration.node, registration.account,
                                   registration.dialect, registration.app, registration.domain)
        _put_value(record, registration._token)
        _put_value(record, registration._voip_token)
        for value in registration._rare or _NO_RARE:
            _put_value(record, value)
        _put_value(record, created)
        if updated is created and type(created) is float:
            record.append(SAME)
        else:
            _put_value(record, updated)
        _U32.pack_into(record, 0, len(record))
        self._append(record, registration.node, registration.node.encode(
            "utf-8", "surrogatepass"), registration.account, app)

    def put_stored(self, key: str, doc: dict[str, Any]) -> bool:
        """Add the registration of ``doc``, a document as ``Registration.to_doc`` writes
        it, stored under ``key`` (its node), without making the object; False (nothing
        added) for any other document (:meth:`Registration.from_doc` then decides)."""
        if len(doc) != len(REGISTRATION_FIELDS):
            return False
        try:
            (node, account, domain, app, token, dialect, secret, voip_token, device_id,
             device_key, channel, channel_key, created, updated) = _doc_values(doc)
        except KeyError:
            return False
        if node != key or type(node) is not str or type(account) is not str \
                or type(dialect) is not str:
            return False
        dialect_number = _DIALECT_NUMBER_OF_TEXT.get(dialect)
        if dialect_number is None:
            return False
        if None is secret is device_id is device_key is channel is channel_key \
                and float is type(created) is type(updated) \
                and str is type(token) is type(app) is type(domain) \
                and (voip_token is None or type(voip_token) is str):
            # Most registrations, in one struct (a store loads 100k at start).
            numbers = self._text_numbers
            app_number = numbers.get(app)
            domain_number = numbers.get(domain)
            if app_number is None or domain_number is None:
                app_number, domain_number = self._number(app), self._number(domain)
            node_bytes = node.encode("utf-8", "surrogatepass")
            account_bytes = account.encode("utf-8", "surrogatepass")
            token_tag, token_bytes = _hex_or_text(token)
            voip_tag, voip_bytes = (NONE, b"") if voip_token is None \
                else _hex_or_text(voip_token)
            packed = self._common(node_bytes, account_bytes, dialect_number, app_number,
                                  domain_number, token_tag, token_bytes, voip_tag, voip_bytes,
                                  created, updated, updated == created and updated != 0.0)
            if packed is not None:
                self._append(packed, node, node_bytes, account, app_number)
                return True
        # Anything else a hand-written document holds: as Registration keeps it.
        try:
            self.put(Registration(node, account, domain, app, token,
                                  _DIALECT_LIST[dialect_number], secret, voip_token, device_id,
                                  device_key, channel, channel_key, created, updated))
        except TypeError:  # an app or domain that is no key of a dict
            return False
        return True

    @staticmethod
    def _common(node: bytes, account: bytes, dialect: int, app: int, domain: int,
                token_tag: int, token: bytes, voip_tag: int, voip: bytes, created: float,
                updated: float, same: bool) -> bytes | None:
        """A common record (see :data:`_COMMON`); None if a field is too long for it."""
        lengths = (len(node), len(account), len(token),
                   -1 if voip_tag == NONE else len(voip), same)
        layout = _COMMON.get(lengths)
        if layout is None:
            layout = _common_layout(*lengths)
            if layout is None:
                return None
        voip_field = (NONE,) if voip_tag == NONE else (voip_tag, lengths[3], voip)
        tail = (FLOAT, created, SAME) if same else (FLOAT, created, FLOAT, updated)
        return layout.pack(layout.size, 1, dialect, app, domain, STR8, lengths[0], node, STR8,
                           lengths[1], account, token_tag, lengths[2], token, *voip_field,
                           _RARE_NONE, *tail)

    def pop(self, node: str) -> Registration | None:
        """Remove the registration of ``node``; it, or None if there was none."""
        slot = self._node_slot(node)
        if slot < 0:
            return None
        at = self._nodes[slot]
        removed = _build(self._arena, at, self._values, node)
        self._kill(slot, at, removed.account)
        self._compact_if_due()
        return removed

    def discard(self, node: str) -> bool:
        """Remove the registration of ``node`` (without making it); whether there was one."""
        slot = self._node_slot(node)
        if slot < 0:
            return False
        self._kill(slot, self._nodes[slot], account=None)
        self._compact_if_due()
        return True

    def _record(self, node: str, account: str, dialect: Dialect, app: Any,
                domain: Any) -> tuple[bytearray, int]:
        """A record's head, node and account; and its app's number."""
        if type(node) is not str or type(account) is not str:
            raise TypeError("a registration's node and account must be text")
        number = _DIALECT_NUMBER.get(dialect)
        if number is None:
            raise ValueError(f"{dialect!r} is not a valid Dialect")
        app_number = self._number(app)
        record = bytearray(_HEAD.pack(0, 1, number, app_number, self._number(domain)))
        _put_text(record, node)
        _put_text(record, account)
        return record, app_number

    def _number(self, value: Any) -> int:
        key = (type(value), value)
        number = self._value_numbers.get(key)
        if number is None:
            number = self._value_numbers[key] = len(self._values)
            self._values.append(value)
            if type(value) is str:
                self._text_numbers[value] = number
        return number

    def _append(self, record: bytes | bytearray, node: str, node_bytes: bytes, account: str,
                app_number: int) -> None:
        """Add ``record`` (its size written) for ``node``, replacing the one before."""
        if self._filled >= self._grow_at:
            self._reindex(self._live + 1)
        self._filled += 1
        arena, nodes, mask = self._arena, self._nodes, self._mask
        at = len(arena)
        # One probe finds the node's record, if any, and the slot for the new one.
        length = len(node_bytes)
        slot = hash(node) & mask
        other = nodes[slot]
        while other != EMPTY:
            if other >= 0 and (
                    arena[other + _FIELDS] == STR8 and arena[other + _NODE_LENGTH] == length
                    and arena[other + _NODE:other + _NODE + length] == node_bytes
                    if length < 256 else _text_bytes(arena, other + _FIELDS) == node_bytes):
                self._kill(slot, other, account=None)  # replaced: its slot is ours
                break
            slot = (slot + 1) & mask
            other = nodes[slot]
        nodes[slot] = at
        arena += record
        self._live += 1
        counts = self._app_counts
        counts[app_number] = counts.get(app_number, 0) + 1
        slots = self._accounts
        slot = hash(account) & mask
        while slots[slot] >= 0:
            slot = (slot + 1) & mask
        slots[slot] = at
        if other >= 0:  # one was replaced: dead bytes grew
            self._compact_if_due()

    def _kill(self, slot: int, at: int, account: str | None) -> None:
        """Mark the record at ``at`` (in node slot ``slot``) dead and unindex it."""
        arena = self._arena
        if account is None:
            account = _get_value(arena, _skip_field(arena, at + _FIELDS))[0]
        self._nodes[slot] = GONE
        slots, mask = self._accounts, self._mask
        other = hash(account) & mask
        while slots[other] != at:
            other = (other + 1) & mask
        slots[other] = GONE
        arena[at + 4] = 0
        self._live -= 1
        size, _, _, app_number, _ = _HEAD.unpack_from(arena, at)
        self._dead += size
        left = self._app_counts[app_number] - 1
        if left:
            self._app_counts[app_number] = left
        else:
            del self._app_counts[app_number]

    # -- upkeep --------------------------------------------------------------------------
    def _node_slot(self, node: str) -> int:
        """The node index's slot holding ``node``'s record; -1 if none does."""
        key = node.encode("utf-8", "surrogatepass")
        length = len(key)
        arena, slots, mask = self._arena, self._nodes, self._mask
        slot = hash(node) & mask
        if length < 256:
            end = _NODE + length
            while True:
                at = slots[slot]
                if at == EMPTY:
                    return -1
                if at >= 0 and arena[at + _NODE_LENGTH] == length \
                        and arena[at + _FIELDS] == STR8 and arena[at + _NODE:at + end] == key:
                    return slot
                slot = (slot + 1) & mask
        while True:
            at = slots[slot]
            if at == EMPTY:
                return -1
            if at >= 0 and _text_bytes(arena, at + _FIELDS) == key:
                return slot
            slot = (slot + 1) & mask

    def _offsets(self) -> Iterator[int]:
        """The live records' offsets, in arena order."""
        arena, generation = self._arena, self._generation
        at, end = 0, len(arena)
        while at < end:
            if self._generation != generation:
                raise RuntimeError("the registrations changed during iteration")
            size = _U32.unpack_from(arena, at)[0]
            if arena[at + 4]:
                yield at
            at += size

    def _compact_if_due(self) -> None:
        if self._dead > MIN_COMPACTION and self._dead > len(self._arena) - self._dead:
            self._compact()

    def _compact(self) -> None:
        old, arena = self._arena, bytearray()
        at, end = 0, len(old)
        while at < end:
            size = _U32.unpack_from(old, at)[0]
            if old[at + 4]:
                arena += old[at:at + size]
            at += size
        self._arena = arena
        self._dead = 0
        self._generation += 1
        self._reindex(self._live)

    def _reindex(self, expected: int, room: bool = True) -> None:
        """Both indexes afresh, sized for ``expected`` records (at most two thirds full;
        with ``room``, half that: room to grow before the next rebuild)."""
        size = 8
        while size * 2 < expected * 3:
            size *= 2
        if room:
            size *= 2
        nodes, accounts = array("q", [EMPTY]) * size, array("q", [EMPTY]) * size
        mask = size - 1
        arena, at, end = self._arena, 0, len(self._arena)
        indexed = 0
        while at < end:
            record_size = _U32.unpack_from(arena, at)[0]
            if arena[at + 4]:
                indexed += 1
                node, cursor = _get_value(arena, at + _FIELDS)
                account = _get_value(arena, cursor)[0]
                slot = hash(node) & mask
                while nodes[slot] != EMPTY:
                    slot = (slot + 1) & mask
                nodes[slot] = at
                slot = hash(account) & mask
                while accounts[slot] != EMPTY:
                    slot = (slot + 1) & mask
                accounts[slot] = at
            at += record_size
        self._nodes, self._accounts, self._mask = nodes, accounts, mask
        self._filled, self._grow_at = indexed, size * 2 // 3

    def reserve(self, expected: int) -> None:
        """About ``expected`` more registrations are coming (a store loading): size the
        indexes for them at once."""
        if self._filled + expected > self._grow_at:
            self._reindex(self._live + expected, room=False)




class FrozenRegistrations:
    """A copy of a :class:`RegistrationTable`'s registrations, read once in order (in
    a worker thread: nothing here is shared with the table)."""

    __slots__ = ("_arena", "_count", "_values")

    def __init__(self, arena: bytes, values: list[Any], count: int) -> None:
        self._arena, self._values, self._count = arena, values, count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Registration]:
        arena, values = self._arena, self._values
        at, end = 0, len(arena)
        while at < end:
            if arena[at + 4]:
                yield _build(arena, at, values)
            at += _U32.unpack_from(arena, at)[0]

    def docs(self) -> Iterator[dict[str, Any]]:
        """Each registration's document, as ``Registration.to_doc`` makes it (without
        making the object: a compaction writes 100k of them)."""
        arena, values, get = self._arena, self._values, _get_value
        at, end = 0, len(arena)
        while at < end:
            if arena[at + 4]:
                _, _, dialect, app, domain = _HEAD.unpack_from(arena, at)
                node, cursor = get(arena, at + _FIELDS)
                account, cursor = get(arena, cursor)
                token, cursor = get(arena, cursor)
                voip_token, cursor = get(arena, cursor)
                secret, cursor = get(arena, cursor)
                device_id, cursor = get(arena, cursor)
                device_key, cursor = get(arena, cursor)
                channel, cursor = get(arena, cursor)
                channel_key, cursor = get(arena, cursor)
                created, cursor = get(arena, cursor)
                yield {
                    "node": node, "account": account, "domain": values[domain],
                    "app": values[app], "token": _expand(token),
                    "dialect": _DIALECT_LIST[dialect].value, "secret": secret,
                    "voip_token": _expand(voip_token), "device_id": _expand(device_id),
                    "device_key": _expand(device_key), "channel": channel,
                    "channel_key": _expand(channel_key), "created": created,
                    "updated": created if arena[cursor] == SAME else get(arena, cursor)[0],
                }
            at += _U32.unpack_from(arena, at)[0]


    def live_arena(self) -> bytes:
        """The live records, one after the other (what :meth:`RegistrationTable.adopt`
        takes back)."""
        arena = self._arena
        pieces = []
        at, end = 0, len(arena)
        while at < end:
            size = _U32.unpack_from(arena, at)[0]
            if arena[at + 4]:
                pieces.append(arena[at:at + size])
            at += size
        return b"".join(pieces)

    @property
    def values(self) -> list[Any]:
        """The app and domain values the records number."""
        return self._values
