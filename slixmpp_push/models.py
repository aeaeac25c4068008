"""Value objects shared by the app server, the providers and the store.

They are parsed once at the edge (a stanza, a form, a store document) so that
the core never touches raw XML or dicts.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


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


@dataclass(slots=True)
class Registration:
    """One device registered with the app server, addressed by its node.

    ``account`` is the bare JID that registered it and ``domain`` the XMPP
    server allowed to publish to the node.
    """

    node: str
    account: str
    domain: str
    app: str  # the provider id of the configured app (e.g. "tigase:messenger:apns:1")
    token: str
    dialect: Dialect
    secret: str | None = None
    voip_token: str | None = None
    device_id: str | None = None  # android-id (p2) or client-chosen node (v1)
    device_key: str | None = None  # p2: sha1(account \0 device id), sent as "account"
    channel: str | None = None  # p2: muc bare JID this registration is for
    channel_key: str | None = None  # p2: sha1(muc \0 device id)
    created: float = 0.0
    updated: float = 0.0

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["dialect"] = self.dialect.value
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Registration:
        values = dict(doc)
        values["dialect"] = Dialect(values["dialect"])
        return cls(**values)


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
