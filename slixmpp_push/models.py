"""Value objects shared by the app server, the providers and the store.

They are parsed once at the edge (a stanza, a form, a store document) so that
the core never touches raw XML or dicts.
"""

from __future__ import annotations

import enum
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, overload


class Dialect(str, enum.Enum):
    """The registration protocol a client used to obtain its node."""

    TIGASE = "tigase"  # register-device (Siskin, Stork)
    P2 = "p2"  # register-push-fcm / register-push-apns (Conversations)
    V1 = "v1"  # v1-register-push (legacy mod_push_appserver, old Monal)
    MONAL = "monal"  # stateless: node is the APNs token, app from pushModule
    LOCAL = "local"  # registered through the Python API (push_registrar, tests)


class Priority(str, enum.Enum):
    """How urgently a notification must reach the person."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def is_urgent(self) -> bool:
        return self in (Priority.HIGH, Priority.CRITICAL)


#: The fields of a registration, in the order of its documents' keys.
REGISTRATION_FIELDS = ("node", "account", "domain", "app", "token", "dialect", "secret",
                       "voip_token", "device_id", "device_key", "channel", "channel_key",
                       "created", "updated")


def _shared(value: Any) -> Any:
    """One string object for every registration of an app or a domain: there are few."""
    return sys.intern(value) if type(value) is str else value


def _compact(value: Any) -> Any:
    """Hex text (APNs device tokens, p2's sha1 keys) as the bytes it spells, half the
    size; only text those bytes spell back exactly (lowercase, no spaces)."""
    if type(value) is str and value and not len(value) & 1:
        try:
            packed = bytes.fromhex(value)
        except ValueError:
            return value
        if packed.hex() == value:
            return packed
    return value


def _expand(value: Any) -> Any:
    return value.hex() if type(value) is bytes else value


def _updated(created: Any, updated: Any) -> Any:
    """``updated``, or the very ``created`` object when equal: most registrations were
    never updated, and then hold one float object instead of two."""
    if updated == created and type(updated) is float and type(created) is float and updated:
        return created
    return updated


#: The fields most registrations leave empty, kept together in one tuple (or None).
_RARE = ("secret", "device_id", "device_key", "channel", "channel_key")
_NO_RARE = (None,) * len(_RARE)


def _rare_fields(secret: str | None, device_id: str | None, device_key: str | None,
                 channel: str | None, channel_key: str | None) -> tuple[Any, ...] | None:
    if secret is None and device_id is None and device_key is None and channel is None \
            and channel_key is None:
        return None
    return (secret, _compact(device_id), _compact(device_key), channel, _compact(channel_key))


class _Rare:
    """One of the :data:`_RARE` fields of a :class:`Registration`, in its ``_rare`` tuple."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    @overload
    def __get__(self, instance: None, owner: Any = None) -> _Rare: ...
    @overload
    def __get__(self, instance: Registration, owner: Any = None) -> str | None: ...

    def __get__(self, instance: Registration | None, owner: Any = None) -> Any:
        if instance is None:
            return self
        rare = instance._rare
        return None if rare is None else _expand(rare[self.index])

    def __set__(self, instance: Registration, value: str | None) -> None:
        rare = [_expand(field) for field in instance._rare or _NO_RARE]
        rare[self.index] = value
        instance._rare = _rare_fields(*rare)


class Registration:
    """One device registered with the app server, addressed by its node.

    ``account`` is the bare JID that registered it and ``domain`` the XMPP
    server allowed to publish to the node. ``app`` is the provider id of the
    configured app (e.g. "tigase:messenger:apns:1"). p2 (Conversations) sets
    ``device_id`` (its android-id; v1: the client-chosen node), ``device_key``
    (sha1(account \\0 device id), sent as "account"), and for a group chat
    ``channel`` (its bare JID) and ``channel_key`` (sha1(muc \\0 device id)).

    A store keeps them packed (``store/packed.py``, about 150 bytes each) and makes one
    of these each time one is read. The object is compact too, for the many a fan-out
    holds at once: slots; one shared string per app and domain (interned); hex tokens
    and keys as the bytes they spell (the attributes still read and compare as text);
    the five fields most registrations leave empty in one slot. Reading ``token`` makes
    its text again (about 0.1 µs). Changing one changes nothing stored: ``Store.put``
    it again.
    """

    __slots__ = ("_rare", "_token", "_voip_token", "account", "app", "created", "dialect",
                 "domain", "node", "updated")

    node: str
    account: str
    domain: str
    app: str
    dialect: Dialect
    created: float
    updated: float

    def __init__(self, node: str, account: str, domain: str, app: str, token: str,
                 dialect: Dialect, secret: str | None = None, voip_token: str | None = None,
                 device_id: str | None = None, device_key: str | None = None,
                 channel: str | None = None, channel_key: str | None = None,
                 created: float = 0.0, updated: float = 0.0) -> None:
        self.node = node
        self.account = account
        self.domain = _shared(domain)
        self.app = _shared(app)
        self.dialect = dialect
        self.created = created
        self.updated = _updated(created, updated)
        self._token = _compact(token)
        self._voip_token = _compact(voip_token)
        self._rare = _rare_fields(secret, device_id, device_key, channel, channel_key)

    @property
    def token(self) -> str:
        token = self._token
        return token.hex() if type(token) is bytes else token

    @token.setter
    def token(self, value: str) -> None:
        self._token = _compact(value)

    @property
    def voip_token(self) -> str | None:
        token = self._voip_token
        return token.hex() if type(token) is bytes else token

    @voip_token.setter
    def voip_token(self, value: str | None) -> None:
        self._voip_token = _compact(value)

    secret = _Rare(0)
    device_id = _Rare(1)
    device_key = _Rare(2)
    channel = _Rare(3)
    channel_key = _Rare(4)

    def to_doc(self) -> dict[str, Any]:
        rare = self._rare or _NO_RARE
        token, voip_token = self._token, self._voip_token
        return {
            "node": self.node, "account": self.account, "domain": self.domain,
            "app": self.app, "token": token.hex() if type(token) is bytes else token,
            "dialect": self.dialect.value, "secret": rare[0],
            "voip_token": voip_token.hex() if type(voip_token) is bytes else voip_token,
            "device_id": _expand(rare[1]), "device_key": _expand(rare[2]),
            "channel": rare[3], "channel_key": _expand(rare[4]),
            "created": self.created, "updated": self.updated,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Registration:
        values = dict(doc)
        values["dialect"] = Dialect(values["dialect"])
        return cls(**values)

    def _values(self) -> tuple[Any, ...]:
        return (self.node, self.account, self.domain, self.app, self._token, self.dialect,
                self._rare, self._voip_token, self.created, self.updated)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Registration)
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it was

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in REGISTRATION_FIELDS)
        return f"{type(self).__name__}({shown})"


@dataclass(slots=True)
class Jingle:
    """A call proposal forwarded by a Tigase-extended server."""

    sid: str
    action: str = "propose"
    media: tuple[str, ...] = ()


@dataclass(slots=True)
class Notification:
    """What a publish (or a local page) asks us to tell a device."""

    message_count: int | None = None
    pending_subscriptions: int | None = None
    sender: str | None = None
    body: str | None = None
    title: str | None = None
    priority: Priority = Priority.NORMAL
    encrypted: str | None = None  # tigase:push:encrypt:0, forwarded unchanged
    iv: str | None = None
    encrypted_type: str | None = None  # "voip" for call notifications
    jingle: Jingle | None = None
    publish_options: dict[str, str] = field(default_factory=dict)
    received_at: float = 0.0
    #: The server's summary lists ``last-message-body`` but leaves it empty: Prosody's
    #: mark of an "unimportant" stanza (a chat state, a receipt), whose count says nothing.
    unimportant: bool = False
    #: Pages and keyed notices: a later push with the same key replaces this one
    #: on the device (APNs collapse id, FCM collapse key) instead of stacking.
    collapse_key: str | None = None

    @property
    def is_call(self) -> bool:
        return self.encrypted_type == "voip" or self.jingle is not None

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["priority"] = self.priority.value
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Notification:
        values = dict(doc)
        values["priority"] = Priority(values.get("priority", "normal"))
        jingle = values.get("jingle")
        if jingle is not None:
            values["jingle"] = Jingle(
                sid=jingle["sid"], action=jingle.get("action", "propose"),
                media=tuple(jingle.get("media", ())),
            )
        return cls(**values)
