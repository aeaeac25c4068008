"""The registration dialects, client side: which command, which fields, which answer.

Pure functions of values, no network: the plugin executes the command and
hands the result form back here. Each dialect mirrors what our app server
(:mod:`slixmpp_push.appserver.dialects`) and the real app servers serve:

============  ======================  ==============================  ===================
dialect       register command        fields sent                     answer read
============  ======================  ==============================  ===================
``tigase``    ``register-device``     provider, device-token,         node (features,
                                      [device-second-token]           max-payload-size)
``p2-fcm``    ``register-push-fcm``   token, android-id               jid, node, secret
``p2-apns``   ``register-push-apns``  token, android-id               jid, node, secret
``v1-apns``   ``v1-register-push``    type=apns, node=device id,      jid, node, secret
                                      token
``v1-fcm``    ``v1-register-push``    type=fcm, node, token           jid, node, secret
``stateless`` (none)                  node = the token, publish-      —
                                      option ``pushModule``
============  ======================  ==============================  ===================

p2 and v1 key a registration by a device id, so a new token for the same
device keeps its node (``keeps_node``); Tigase keys it by the token and
stateless *is* the token, so there a token change means a new node and the
old one must be turned off.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import RegistrationFailed

Fields = list[tuple[str, str]]
#: A result form as ``var → values`` (a multi-valued field keeps every value).
Values = dict[str, list[str]]

MONAL_MODULE_OPTION = "pushModule"


@dataclass(slots=True, frozen=True)
class EnableExtensions:
    """Tigase additions to ``<enable>`` (what Siskin sends; Tigase servers act on them)."""

    encrypt_key: str | None = None  # base64 AES key: asks for encrypted payloads
    encrypt_alg: str = "aes-128-gcm"
    max_size: int | None = None  # largest encrypted payload the app server accepts
    priority: bool = False  # ask for <priority>high|low</priority> in notifications
    jingle: bool = False  # ask for call (Jingle) details in notifications
    groupchat: str | None = None  # "always" | "mentioned" | "never"
    muted: tuple[str, ...] = ()  # conversations never pushed
    ignore_unknown: bool = False  # no pushes for senders outside the roster
    away: bool = False  # also push while the account is "away"

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["muted"] = list(self.muted)
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> EnableExtensions:
        values = dict(doc)
        values["muted"] = tuple(values.get("muted", ()))
        return cls(**values)


@dataclass(slots=True, frozen=True)
class ClientRegistration:
    """This account's registration with one app server, and how to enable it.

    ``app_server`` is the JID we registered with (the store key uses it);
    ``push_jid`` the JID the account's server must publish to, which p2 and v1
    return in their answer (usually the same).
    """

    account: str
    app_server: str
    dialect: str
    node: str
    token: str
    provider: str = ""
    push_jid: str = ""
    secret: str | None = None
    voip_token: str | None = None
    device_id: str | None = None
    push_module: str | None = None
    features: tuple[str, ...] = ()
    max_payload_size: int | None = None
    extensions: EnableExtensions | None = None
    registered_at: float = 0.0
    enabled_at: float | None = None

    @property
    def key(self) -> str:
        """Store key: one registration per (account, app server, dialect, provider)."""
        return record_key(self.account, self.app_server, self.dialect, self.provider)

    @property
    def target(self) -> str:
        """The JID to put in ``<enable jid>``."""
        return self.push_jid or self.app_server

    def publish_options(self) -> dict[str, str]:
        """The fields of the enable form: what the app server checks on each publish."""
        options: dict[str, str] = {}
        if self.secret:
            options["secret"] = self.secret
        if self.push_module:
            options[MONAL_MODULE_OPTION] = self.push_module
        return options

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["features"] = list(self.features)
        doc["extensions"] = self.extensions.to_doc() if self.extensions else None
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ClientRegistration:
        values = dict(doc)
        values["features"] = tuple(values.get("features", ()))
        extensions = values.get("extensions")
        values["extensions"] = EnableExtensions.from_doc(extensions) if extensions else None
        return cls(**values)

    def with_changes(self, **changes: Any) -> ClientRegistration:
        return replace(self, **changes)


def record_key(account: str, app_server: str, dialect: str, provider: str) -> str:
    # JIDs, dialect names and provider ids hold no spaces.
    return " ".join((account, app_server, dialect, provider))


@dataclass(slots=True, frozen=True)
class Device:
    """What this device registers: its tokens and the identity it keeps across tokens."""

    token: str
    provider: str = ""
    voip_token: str | None = None
    device_id: str | None = None
    push_module: str | None = None


@dataclass(slots=True, frozen=True)
class Answer:
    """What an app server answered to a registration."""

    node: str
    push_jid: str = ""
    secret: str | None = None
    features: tuple[str, ...] = field(default=())
    max_payload_size: int | None = None


def _first(values: Values, var: str) -> str:
    found = values.get(var) or [""]
    return found[0]


def _required(values: Values, dialect: str, *names: str) -> list[str]:
    found = [_first(values, name) for name in names]
    for name, value in zip(names, found, strict=True):
        if not value:
            raise RegistrationFailed(f"{dialect} registration", "bad-answer",
                                     f"the app server's answer has no '{name}' field")
    return found


class ClientDialect:
    """One registration dialect: the command forms out, the answer in."""

    name: str
    register_command: str | None
    unregister_command: str | None
    keeps_node: bool  # a new token for the same device keeps the node
    needs_provider: bool = False

    def prepare(self, device: Device) -> Device:
        """Fill in what the dialect needs and the caller left out (a device id)."""
        return device

    def register_fields(self, device: Device) -> Fields:
        raise NotImplementedError

    def read_answer(self, values: Values, device: Device) -> Answer:
        raise NotImplementedError

    def unregister_fields(self, registration: ClientRegistration) -> Fields:
        raise NotImplementedError


class Tigase(ClientDialect):
    """Siskin / Stork: the provider id names the app; the node is per token."""

    name = "tigase"
    register_command = "register-device"
    unregister_command = "unregister-device"
    keeps_node = False
    needs_provider = True

    def register_fields(self, device: Device) -> Fields:
        fields = [("provider", device.provider), ("device-token", device.token)]
        if device.voip_token:
            fields.append(("device-second-token", device.voip_token))
        return fields

    def read_answer(self, values: Values, device: Device) -> Answer:
        (node,) = _required(values, self.name, "node")
        size = _first(values, "max-payload-size")
        return Answer(node=node, features=tuple(v for v in values.get("features", ()) if v),
                      max_payload_size=int(size) if size.isdigit() else None)

    def unregister_fields(self, registration: ClientRegistration) -> Fields:
        return [("provider", registration.provider), ("device-token", registration.token)]


class P2(ClientDialect):
    """Conversations' dialect: an ``android-id`` keeps node and secret across tokens."""

    keeps_node = True

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.name = f"p2-{fmt}"
        self.register_command = f"register-push-{fmt}"
        self.unregister_command = f"unregister-push-{fmt}"

    def prepare(self, device: Device) -> Device:
        # Conversations sends the Android id: 16 hex digits, stable per device.
        return device if device.device_id else replace(device, device_id=secrets.token_hex(8))

    def register_fields(self, device: Device) -> Fields:
        return [("token", device.token), ("android-id", device.device_id or "")]

    def read_answer(self, values: Values, device: Device) -> Answer:
        jid, node, secret = _required(values, self.name, "jid", "node", "secret")
        return Answer(node=node, push_jid=jid, secret=secret)

    def unregister_fields(self, registration: ClientRegistration) -> Fields:
        return [("android-id", registration.device_id or "")]


class V1(ClientDialect):
    """mod_push_appserver's v1: the client picks a stable ``node`` (device id)."""

    keeps_node = True

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.name = f"v1-{fmt}"
        self.register_command = "v1-register-push"
        self.unregister_command = "v1-unregister-push"

    def prepare(self, device: Device) -> Device:
        return device if device.device_id else replace(device, device_id=str(uuid.uuid4()))

    def register_fields(self, device: Device) -> Fields:
        return [("type", self.fmt), ("node", device.device_id or ""), ("token", device.token)]

    def read_answer(self, values: Values, device: Device) -> Answer:
        jid, node, secret = _required(values, self.name, "jid", "node", "secret")
        return Answer(node=node, push_jid=jid, secret=secret)

    def unregister_fields(self, registration: ClientRegistration) -> Fields:
        return [("type", self.fmt), ("node", registration.device_id or "")]


class Stateless(ClientDialect):
    """Monal's mode: nothing to register; the node is the token, ``pushModule`` the app."""

    name = "stateless"
    register_command = None
    unregister_command = None
    keeps_node = False

    def register_fields(self, device: Device) -> Fields:
        return []

    def read_answer(self, values: Values, device: Device) -> Answer:
        return Answer(node=device.token)

    def unregister_fields(self, registration: ClientRegistration) -> Fields:
        return []


DIALECTS: dict[str, ClientDialect] = {
    d.name: d for d in (Tigase(), P2("fcm"), P2("apns"), V1("apns"), V1("fcm"), Stateless())
}
DIALECT_NAMES: Sequence[str] = tuple(DIALECTS)


def get_dialect(name: str) -> ClientDialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown dialect {name!r}: one of {', '.join(DIALECTS)}") from None
