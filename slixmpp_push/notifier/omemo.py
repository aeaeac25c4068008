"""OMEMO-encrypted chat messages for the notifier (extra ``omemo``: slixmpp-omemo).

Only for a bot that runs as a *client account*: OMEMO keeps its device list
and key bundles in the account's PEP, and a component has no PEP. The
messages use OMEMO 0.3 (``eu.siacs.conversations.axolotl``), the version
Conversations, Monal, Siskin and Dino speak::

    chat = enable_omemo(xmpp, store)                 # before connecting
    xmpp.register_plugin("push_notifier", {"chat_sender": chat, "store": store, ...})

The keys, sessions and trust decisions live in the project's store (table
``omemo``), so they are written through its journal like everything else:
a restart keeps the bot's OMEMO identity, and people don't see a new device
each time.

Trust: with blind trust before verification (``btbv``, the default) every
device of a person is trusted until a fingerprint of that person is verified,
that is: listed in ``trusted`` (``{jid: [fingerprint, …]}``, fingerprints as
clients show them, 64 hex digits, spaces allowed). From then on, and for
everyone when ``btbv`` is off, only listed devices are encrypted for; other
devices are recorded as distrusted (and trusted again as soon as their
fingerprint is listed).

When a message cannot be encrypted for someone (no OMEMO device, no bundle,
no trusted device), it is sent in plain text only with
``fallback_plaintext=True``; either way the reason is logged, never the text.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any
from xml.etree import ElementTree as ET

from slixmpp import JID, Message
from slixmpp.basexmpp import BaseXMPP

from ..errors import ConfigError, MissingDependency
from ..store import Store
from .chat import PlainChat

log = logging.getLogger(__name__)

OMEMO_TABLE = "omemo"
OLDMEMO_NS = "eu.siacs.conversations.axolotl"
EME_NS = "urn:xmpp:eme:0"
DEFAULT_FALLBACK_MESSAGE = ("This message is encrypted with OMEMO: open it in an OMEMO client "
                            "(Conversations, Monal, Siskin, Dino).")

# slixmpp-omemo and python-omemo log plaintexts and key material at DEBUG level.
_LEAKY_LOGGERS = ("omemo.core", "slixmpp_omemo.xep_0384")
_LEAKY_WORDS = ("plaintext", "plain key", "plainkeymaterial", "key material", "message encrypted",
                "decrypted")


class _NoSecrets(logging.Filter):
    """Drops the debug records of the OMEMO libraries that carry text or keys."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            return True
        text = str(record.msg).lower()
        return not any(word in text for word in _LEAKY_WORDS)


_NO_SECRETS = _NoSecrets()


def _silence_leaky_loggers() -> None:
    for name in _LEAKY_LOGGERS:
        logger = logging.getLogger(name)
        if _NO_SECRETS not in logger.filters:
            logger.addFilter(_NO_SECRETS)


def normalize_fingerprint(fingerprint: str) -> str:
    """``"05ab12cd …"`` or ``"ab12cd…"`` (64 hex digits, any spacing) → 64 lowercase hex digits."""
    digits = "".join(c for c in fingerprint.lower() if c not in " :-\t\n")
    if len(digits) == 66 and digits.startswith("05"):  # the key type byte some clients show
        digits = digits[2:]
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"not an OMEMO fingerprint (64 hex digits): {fingerprint!r}")
    return digits


@functools.cache
def omemo_plugin_class() -> type[Any]:
    """The ``xep_0384`` plugin class backed by a :class:`Store` (imports slixmpp-omemo)."""
    try:
        from omemo.session_manager import SessionManager
        from omemo.storage import Just, Maybe, Nothing, Storage
        from omemo.types import DeviceInformation, JSONType
        from slixmpp_omemo import XEP_0384, TrustLevel
    except ImportError as exc:
        raise MissingDependency("slixmpp-omemo", "omemo", "OMEMO chat messages") from exc

    _silence_leaky_loggers()

    class StoreStorage(Storage):
        """python-omemo's key/value storage on a generic table of the project's store.

        Each value is one document ``{"v": value}`` under ``prefix + key``; a write
        returns once the store made it durable (its journal), as python-omemo requires.
        The store keeps every table in memory, so there is no second cache here.
        """

        def __init__(self, store: Store, prefix: str, table: str = OMEMO_TABLE) -> None:
            super().__init__(disable_cache=True)
            self.push_store = store
            self.prefix = prefix
            self.table_name = table

        async def _load(self, key: str) -> Maybe[JSONType]:
            await self.push_store.open()
            doc = self.push_store.table(self.table_name).get(self.prefix + key)
            if doc is None:
                return Nothing()
            return Just(doc["v"])

        async def _store(self, key: str, value: JSONType) -> None:
            await self.push_store.open()
            # A JSON round trip: a private copy, and exactly what a reload gives back.
            doc = {"v": json.loads(json.dumps(value))}
            await self.push_store.set_doc(self.table_name, self.prefix + key, doc)

        async def _delete(self, key: str) -> None:
            await self.push_store.open()
            await self.push_store.set_doc(self.table_name, self.prefix + key, None)

    class PushOmemo(XEP_0384):
        """XEP-0384 with its state in a :class:`Store`; config ``store``, ``btbv``, ``trusted``."""

        name = "xep_0384"
        default_config = {
            "fallback_message": DEFAULT_FALLBACK_MESSAGE,
            "store": None,
            "btbv": True,
            "trusted": {},
        }

        def plugin_init(self) -> None:
            if self.config.get("store") is None:
                raise ConfigError("xep_0384.store", "OMEMO needs a store for its keys")
            self._push_storage: StoreStorage | None = None
            self.lock = asyncio.Lock()  # python-omemo does not guard its state
            self.trusted: dict[str, set[str]] = {
                JID(jid).bare: {normalize_fingerprint(f) for f in fingerprints}
                for jid, fingerprints in dict(self.config.get("trusted") or {}).items()}
            super().plugin_init()

        def session_bind(self, jid: JID) -> None:
            # As the base class: prepare keys at once, but say so when it fails.
            self._preparing = asyncio.ensure_future(self._prepare_or_log())

        async def _on_device_list_update(self, msg: Message) -> None:
            # A device list arrives (PEP event) as a subscription made while
            # encrypting is answered: one change of OMEMO state at a time.
            async with self.lock:
                await super()._on_device_list_update(msg)

        async def _prepare_or_log(self) -> None:
            try:
                await self.ready()
            except Exception as exc:
                log.error("OMEMO cannot start for %s (%s: %s): does its server offer PEP? "
                          "Retrying at the next message", self.xmpp.boundjid.bare,
                          type(exc).__name__, exc)

        async def ready(self) -> SessionManager:
            """The session manager; after a failure to make one, the next call tries again
            (the base class would keep answering with the first failure)."""
            try:
                return await self.get_session_manager()
            except Exception:
                self._XEP_0384__session_manager_task = None
                raise

        @property
        def storage(self) -> Storage:
            if self._push_storage is None:
                # Keys per account: one store may serve several client accounts.
                self._push_storage = StoreStorage(self.config["store"], self.xmpp.boundjid.bare)
            return self._push_storage

        @property
        def _btbv_enabled(self) -> bool:
            return bool(self.config.get("btbv", True))

        @staticmethod
        def fingerprint(device: DeviceInformation) -> str:
            return "".join(SessionManager.format_identity_key(device.identity_key))

        async def _devices_blindly_trusted(self, blindly_trusted: frozenset[DeviceInformation],
                                           identifier: str | None) -> None:
            for device in blindly_trusted:
                log.info("OMEMO: blindly trusting device %d of %s (fingerprint %s)",
                         device.device_id, device.bare_jid, self.fingerprint(device))

        async def _prompt_manual_trust(self, manually_trusted: frozenset[DeviceInformation],
                                       identifier: str | None) -> None:
            # Nobody to ask: the configured fingerprints decide.
            session_manager = await self.get_session_manager()
            for device in manually_trusted:
                fingerprint = self.fingerprint(device)
                if fingerprint in self.trusted.get(device.bare_jid, ()):
                    level = TrustLevel.TRUSTED
                    log.info("OMEMO: trusting device %d of %s (verified fingerprint)",
                             device.device_id, device.bare_jid)
                else:
                    level = TrustLevel.DISTRUSTED
                    log.warning("OMEMO: device %d of %s (fingerprint %s) is not verified: not "
                                "encrypting for it (list its fingerprint to trust it)",
                                device.device_id, device.bare_jid, fingerprint)
                await session_manager.set_trust(device.bare_jid, device.identity_key,
                                                level.value)

        async def apply_trusted(self, bare_jid: str) -> None:
            """Mark the listed fingerprints of ``bare_jid`` trusted (they may have been
            distrusted before the operator listed them)."""
            wanted = self.trusted.get(bare_jid)
            if not wanted:
                return
            session_manager = await self.get_session_manager()
            for device in await session_manager.get_device_information(bare_jid):
                if (device.trust_level_name != TrustLevel.TRUSTED.value
                        and self.fingerprint(device) in wanted):
                    await session_manager.set_trust(bare_jid, device.identity_key,
                                                    TrustLevel.TRUSTED.value)

        async def own_fingerprint(self) -> str:
            """This bot's fingerprint, for people to verify."""
            session_manager = await self.get_session_manager()
            own, _ = await session_manager.get_own_device_information()
            return self.fingerprint(own)

    return PushOmemo


def enable_omemo(xmpp: BaseXMPP, store: Store, btbv: bool = True, *,
                 trusted: Mapping[str, Iterable[str]] | None = None,
                 fallback_plaintext: bool = False,
                 fallback_message: str = DEFAULT_FALLBACK_MESSAGE) -> OmemoChat:
    """Register the store-backed ``xep_0384`` plugin on a client account and return
    the :class:`OmemoChat` to give ``push_notifier`` as ``chat_sender``.

    Call it before connecting. ``store`` must have the ``omemo`` table. OMEMO
    opens it when it first needs it, right after login: open it yourself
    before connecting when the notifier shares it, so that the two do not
    open it at the same time.
    """
    if xmpp.is_component:
        raise ConfigError("notifier.omemo", "OMEMO needs the bot to run as a client account: "
                                            "a component has no PEP for its keys")
    try:
        store.table(OMEMO_TABLE)
    except KeyError:
        raise ConfigError("notifier.omemo", f"this store has no {OMEMO_TABLE!r} table") from None
    fingerprints = {jid: [normalize_fingerprint(f) for f in fps]
                    for jid, fps in (trusted or {}).items()}  # a bad one fails here, not later
    from slixmpp.plugins.base import register_plugin

    register_plugin(omemo_plugin_class())
    xmpp.register_plugin("xep_0384", {"store": store, "btbv": btbv, "trusted": fingerprints,
                                      "fallback_message": fallback_message})
    return OmemoChat(xmpp, fallback_plaintext=fallback_plaintext)


class OmemoChat:
    """A chat sender that OMEMO-encrypts each message for its recipient.

    Needs the ``xep_0384`` plugin of :func:`enable_omemo`. Encrypted messages
    people send to the bot are decrypted and fired as the ``omemo_message``
    event (a :class:`~slixmpp.Message` with the plaintext body).
    """

    def __init__(self, xmpp: BaseXMPP, *, fallback_plaintext: bool = False) -> None:
        self.xmpp = xmpp
        self.fallback_plaintext = fallback_plaintext
        self.plain = PlainChat(xmpp)
        xmpp.add_event_handler("message", self._on_message)

    @property
    def plugin(self) -> Any:
        plugins: Any = self.xmpp.plugin
        if "xep_0384" not in plugins:
            raise RuntimeError("OmemoChat needs the xep_0384 plugin: use enable_omemo()")
        return plugins["xep_0384"]

    async def fingerprint(self) -> str:
        """The bot's own fingerprint (64 hex digits), for people to verify."""
        return str(await self.plugin.own_fingerprint())

    async def send(self, to: str, text: str) -> str | None:
        recipient = JID(JID(to).bare)
        plugin = self.plugin
        message = self.xmpp.make_message(mto=recipient, mbody=text, mtype="chat")
        message["id"] = self.xmpp.new_id()
        try:
            async with plugin.lock:
                await plugin.ready()
                await plugin.apply_trusted(recipient.bare)
                encrypted, errors = await plugin.encrypt_message(message, recipient)
        except Exception as exc:  # no device, no bundle, nothing trusted, PEP trouble …
            reason = f"{type(exc).__name__}: {exc}".replace(text, "<text>") if text else \
                type(exc).__name__
            return await self._not_encrypted(to, reason, text)
        if encrypted is None:
            return await self._not_encrypted(to, "nothing to encrypt", text)
        for error in errors:  # one device failed, the others got it
            log.info("OMEMO to %s: a device was skipped: %s", recipient, error)
        encrypted.xml.append(ET.Element(f"{{{EME_NS}}}encryption",
                                        {"namespace": OLDMEMO_NS, "name": "OMEMO"}))
        if "xep_0184" in self.xmpp.plugin:
            encrypted["request_receipt"] = True
        encrypted.send()
        return str(encrypted["id"])

    async def reply(self, to: str, text: str) -> str | None:
        """An answer to someone who wrote to the bot: encrypted like a page."""
        return await self.send(to, text)

    async def _not_encrypted(self, to: str, reason: str, text: str) -> str | None:
        if self.fallback_plaintext:
            log.warning("OMEMO to %s impossible (%s): sending in plain text "
                        "(fallback_plaintext is on)", to, reason)
            return await self.plain.send(to, text)
        log.warning("OMEMO to %s impossible (%s): chat message not sent "
                    "(fallback_plaintext is off)", to, reason)
        return None

    async def _on_message(self, message: Message) -> None:
        plugins: Any = self.xmpp.plugin
        if "xep_0384" not in plugins or message["type"] not in ("chat", "normal"):
            return
        plugin = plugins["xep_0384"]
        if not plugin.is_encrypted(message):
            return
        try:
            async with plugin.lock:
                decrypted, _device = await plugin.decrypt_message(message)
        except Exception as exc:  # the type only: some errors quote the plaintext
            log.info("OMEMO message from %s not decrypted: %s", message["from"],
                     type(exc).__name__)
            return
        if decrypted["body"]:
            self.xmpp.event("omemo_message", decrypted)
