"""``push_registrar``: XEP-0357 for slixmpp clients (the device side).

A device agent, bot or desktop client registers its push token with an app
server, in the dialect the app server speaks, and turns push on at its own
server. Registrations are kept in a :class:`~slixmpp_push.store.Store` and
re-enabled on every new session, as Conversations does, because a server may
have forgotten them (ejabberd drops them on some errors, an operator may
have wiped them)::

    xmpp.register_plugin("push_registrar", {"store": "registrar.json"})
    registration = await xmpp["push_registrar"].register(
        token, dialect="tigase", provider="tigase:messenger:apns:1")

Config keys (``register_plugin('push_registrar', {...})``):

``store``
    A :class:`~slixmpp_push.store.Store` (may be shared with ``push_appserver``
    in the same process: start the app server first), a file path for a
    :class:`~slixmpp_push.store.TinyDBStore` of its own, or ``None`` for a
    :class:`~slixmpp_push.store.MemoryStore`. Records live in its
    ``client_registrations`` table, keyed by (account, app server, dialect,
    provider).
``token`` / ``voip_token``
    The device's current tokens. A stored registration with another token is
    re-registered (same device id) before it is enabled on the next session.
    :meth:`PushRegistrar.update_token` changes them at run time.
``reenable``
    Enable every stored registration of the account on each new session
    (default True; the CLI turns it off to do only what it is asked).
``timeout``
    Seconds to wait for each answer (default 10).

Events:

``push_registrar_registered`` / ``push_registrar_unregistered``
    A :class:`ClientRegistration`, after :meth:`~PushRegistrar.register` /
    :meth:`~PushRegistrar.unregister`.
``push_enabled``
    A :class:`ClientRegistration`, after each ``<enable>`` the server accepted.
``push_enable_failed``
    ``(ClientRegistration, RegistrarError)`` when re-enabling on a new session failed.
``push_reenabled``
    The list of registrations enabled, once per session, when re-enabling is done.
``push_remote_disabled``
    A :class:`ClientRegistration` the app server disabled (``affiliation='none'``);
    it is dropped from the store and disabled at the account's server.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any
from xml.etree.ElementTree import Element

from slixmpp import JID, Iq
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.base import BasePlugin
from slixmpp.xmlstream import StanzaBase
from slixmpp.xmlstream.handler import CoroutineCallback
from slixmpp.xmlstream.matcher import MatchXPath

from ..errors import StoreError
from ..logs import loggable_node, short_token
from ..store import CLIENT_REGISTRATIONS, MemoryStore, Store, TinyDBStore
from ..xep_0357.stanza import NS, PUBLISH_OPTIONS_FORM_TYPE, MutedItem, register_stanzas
from .dialects import (
    ClientDialect,
    ClientRegistration,
    Device,
    EnableExtensions,
    Fields,
    Values,
    get_dialect,
    record_key,
)
from .errors import (
    AppServerNotFound,
    PushNotSupported,
    RegistrarError,
    RegistrationFailed,
    from_xmpp_error,
)

log = logging.getLogger(__name__)

_PUBSUB = "{http://jabber.org/protocol/pubsub}"
_COMMAND = "{http://jabber.org/protocol/commands}command"
_DATA = "{jabber:x:data}"
_DISCO_ITEM = "{http://jabber.org/protocol/disco#items}item"
_REMOTE_DISABLE_XPATH = "{%s}message/" + f"{_PUBSUB}pubsub/{_PUBSUB}affiliation"

# Stores opened by a registrar in this process, so that several clients (or a
# reconnecting one) sharing a store object open it once.
_opening: weakref.WeakKeyDictionary[Store, asyncio.Future[None]] = weakref.WeakKeyDictionary()


def _opened_elsewhere(store: Store) -> bool:
    """Whether another owner (push_appserver, the application) has opened ``store``."""
    flag = getattr(store, "is_open", None)
    if isinstance(flag, bool):
        return flag
    return getattr(store, "_writer", None) is not None  # TinyDBStore after open()


async def _open_once(store: Store) -> None:
    opening = _opening.get(store)
    if opening is None:
        if _opened_elsewhere(store):
            return
        opening = _opening[store] = asyncio.ensure_future(store.open())
    try:
        await asyncio.shield(opening)
    except BaseException:
        if opening.done() and _opening.get(store) is opening:
            del _opening[store]  # let a later start() try again
        raise


class PushRegistrar(BasePlugin):
    """The client half of XEP-0357: register with an app server, enable at the own server."""

    name = "push_registrar"
    description = "XEP-0357: Push Notifications, client side"
    dependencies = {"xep_0004", "xep_0030", "xep_0050"}
    default_config = {
        "store": None,
        "token": None,
        "voip_token": None,
        "reenable": True,
        "timeout": 10.0,
    }

    # -- life cycle ---------------------------------------------------------------
    def plugin_init(self) -> None:
        register_stanzas()
        store = self.config.get("store")
        self._owns_store = not isinstance(store, Store)
        if store is None:
            store = MemoryStore()
        elif not isinstance(store, Store):
            store = TinyDBStore(store)
        self.store: Store = store
        self.enables = 0  # <enable> IQs the server accepted, in all sessions
        self.session_enables = 0  # ... in the current session
        self._started: asyncio.Future[None] | None = None
        self._support: bool | None = None
        self._session_began = 0.0
        self._resumed: asyncio.Future[list[ClientRegistration]] | None = None
        self._resume_task: asyncio.Future[None] | None = None
        self.xmpp.register_handler(CoroutineCallback(
            "push_registrar remote disable",
            MatchXPath(_REMOTE_DISABLE_XPATH % self.xmpp.default_ns),
            self._on_remote_disable))
        self.xmpp.add_event_handler("session_start", self._on_session_start)

    def plugin_end(self) -> None:
        self.xmpp.remove_handler("push_registrar remote disable")
        self.xmpp.del_event_handler("session_start", self._on_session_start)
        if self._resume_task is not None:
            self._resume_task.cancel()

    async def start(self) -> None:
        """Open the store (once per store object in the process); called by every API."""
        failed = self._started is not None and self._started.done() and (
            self._started.cancelled() or self._started.exception() is not None)
        if self._started is None or failed:
            self._started = asyncio.ensure_future(_open_once(self.store))
        await asyncio.shield(self._started)

    async def stop(self) -> None:
        """Close the store if this plugin created it (from a path or ``None``)."""
        if self._started is None:
            return
        self._started = None
        if self._owns_store:
            _opening.pop(self.store, None)
            await self.store.close()

    @property
    def timeout(self) -> float:
        return float(self.config.get("timeout") or 10.0)

    @property
    def account(self) -> str:
        return str(self.xmpp.boundjid.bare)

    # -- the account's own server: XEP-0357 -----------------------------------------
    async def supported(self, refresh: bool = False) -> bool:
        """Whether the account's server advertises ``urn:xmpp:push:0`` (cached per session)."""
        if self._support is None or refresh:
            try:
                iq = await self.xmpp["xep_0030"].get_info(jid=self.account, timeout=self.timeout)
            except (IqError, IqTimeout) as error:
                raise from_xmpp_error(error, "asking the server for its features") from None
            self._support = NS in iq["disco_info"]["features"]
        return self._support

    async def require_support(self) -> None:
        """Raise :class:`PushNotSupported` unless the account's server has XEP-0357."""
        if not await self.supported():
            raise PushNotSupported("enabling push", "feature-not-implemented",
                                   f"{self.xmpp.boundjid.domain} does not advertise {NS}")

    async def enable(self, jid: JID | str, node: str,
                     publish_options: dict[str, str] | None = None,
                     extensions: EnableExtensions | None = None) -> None:
        """Send ``<enable>`` to the account's server (publish-options form, Tigase extensions)."""
        iq = self.xmpp.make_iq_set()
        enable = iq["push_enable"]
        enable["jid"] = str(jid)
        enable["node"] = node
        if publish_options:
            form = enable["form"]
            form["type"] = "submit"
            form.add_field(var="FORM_TYPE", ftype="hidden", value=PUBLISH_OPTIONS_FORM_TYPE)
            for var, value in publish_options.items():
                form.add_field(var=var, value=value)
        if extensions is not None:
            _apply_extensions(enable, extensions)
        await self._send(iq, f"enabling push to {jid}")
        self.enables += 1
        self.session_enables += 1

    async def disable(self, jid: JID | str, node: str | None = None) -> None:
        """Send ``<disable>``: one node of ``jid``, or without ``node`` all of them."""
        iq = self.xmpp.make_iq_set()
        iq["push_disable"]["jid"] = str(jid)
        if node:
            iq["push_disable"]["node"] = node
        await self._send(iq, f"disabling push to {jid}")

    async def _send(self, iq: Iq, doing: str) -> Iq:
        try:
            return await iq.send(timeout=self.timeout)
        except (IqError, IqTimeout) as error:
            raise from_xmpp_error(error, doing) from None

    # -- app servers: discovery and ad-hoc commands -----------------------------------
    async def discover(self, provider: str | None = None) -> JID:
        """The first item of the account's domain that is a push app server.

        disco#items of the domain, then disco#info of each item: identity
        ``pubsub/push`` and, when ``provider`` is given, that feature too.
        """
        domain = self.xmpp.boundjid.domain
        disco = self.xmpp["xep_0030"]
        try:
            items = await disco.get_items(jid=domain, timeout=self.timeout)
        except (IqError, IqTimeout) as error:
            raise from_xmpp_error(error, f"listing the services of {domain}") from None
        # In the server's order (the stanza interface returns a set): the first match wins.
        jids = list(dict.fromkeys(item.get("jid", "") for item in items.xml.iter(_DISCO_ITEM)))
        jids = [jid for jid in jids if jid]
        infos = await asyncio.gather(*(disco.get_info(jid=j, timeout=self.timeout)
                                       for j in jids), return_exceptions=True)
        for jid, info in zip(jids, infos, strict=True):
            if isinstance(info, BaseException):
                continue
            identities = {(i[0], i[1]) for i in info["disco_info"]["identities"]}
            if ("pubsub", "push") not in identities:
                continue
            if provider and provider not in info["disco_info"]["features"]:
                continue
            return JID(jid)
        wanted = " with provider " + provider if provider else ""
        raise AppServerNotFound("discovering an app server", "item-not-found",
                                f"no push app server{wanted} among the services of {domain}")

    async def execute(self, app_server: JID | str, command: str, fields: Fields,
                      doing: str | None = None) -> Values:
        """Execute ``command`` with a submitted form; the result form as ``var → values``."""
        doing = doing or f"{command} at {app_server}"
        form = self.xmpp["xep_0004"].make_form(ftype="submit")
        for var, value in fields:
            form.add_field(var=var, value=value)
        try:
            iq = await self.xmpp["xep_0050"].send_command(
                str(app_server), command, payload=form, timeout=self.timeout)
        except (IqError, IqTimeout) as error:
            raise from_xmpp_error(error, doing) from None
        element = iq.xml.find(_COMMAND)
        status = element.get("status", "") if element is not None else ""
        if status not in ("completed", ""):
            raise RegistrationFailed(doing, "bad-answer",
                                     f"the command is {status!r}, not completed")
        return _result_values(element)

    # -- registrations -----------------------------------------------------------------
    def registrations(self) -> list[ClientRegistration]:
        """This account's stored registrations (the store must be started)."""
        account = self.account
        return [ClientRegistration.from_doc(doc) for _, doc in
                sorted(self.store.table(CLIENT_REGISTRATIONS).items())
                if doc.get("account") == account]

    def find(self, app_server: str | None = None, dialect: str | None = None,
             provider: str | None = None) -> list[ClientRegistration]:
        """Stored registrations of this account matching every criterion given."""
        return [r for r in self.registrations()
                if (app_server is None or JID(r.app_server) == JID(app_server))
                and (dialect is None or r.dialect == dialect)
                and (provider is None or r.provider == provider)]

    async def register(self, token: str, *, dialect: str = "tigase",
                       app_server: JID | str | None = None, provider: str = "",
                       voip_token: str | None = None, device_id: str | None = None,
                       push_module: str | None = None,
                       extensions: EnableExtensions | None = None,
                       enable: bool = True) -> ClientRegistration:
        """Register ``token`` with an app server and (by default) enable push for it.

        ``app_server`` defaults to discovery. Registering again under the same
        (app server, dialect, provider) replaces the stored registration: the
        same device id is reused, and a node the new one does not keep (a new
        Tigase token, a new stateless token) is disabled and unregistered.
        """
        spec = get_dialect(dialect)
        if spec.needs_provider and not provider:
            raise ValueError(f"the {dialect} dialect needs a provider id")
        if dialect == "stateless" and not push_module:
            raise ValueError("the stateless dialect needs a push module (pushModule)")
        if dialect == "stateless" and not provider:
            provider = push_module or ""
        await self.start()
        await self.require_support()
        target = JID(app_server) if app_server else await self.discover(provider or None)
        old = self._get(record_key(self.account, str(target), dialect, provider))
        device = spec.prepare(Device(
            token=token, provider=provider, voip_token=voip_token, push_module=push_module,
            device_id=device_id or (old.device_id if old else None)))
        registration = await self._register_at(target, spec, device, extensions)
        await self._save(registration)
        try:
            if enable:
                registration = await self.enable_registration(registration)
        finally:
            if old is not None and old.node != registration.node:
                await self._retire(old, spec)
        log.info("registered %s with %s (%s): node %s", self.account, target, dialect,
                 loggable_node(registration.node))
        self.xmpp.event("push_registrar_registered", registration)
        return registration

    async def _register_at(self, app_server: JID, spec: ClientDialect, device: Device,
                           extensions: EnableExtensions | None) -> ClientRegistration:
        values: Values = {}
        if spec.register_command is not None:
            values = await self.execute(app_server, spec.register_command,
                                        spec.register_fields(device),
                                        f"{spec.name} registration at {app_server}")
        answer = spec.read_answer(values, device)
        return ClientRegistration(
            account=self.account, app_server=str(app_server), dialect=spec.name,
            node=answer.node, token=device.token, provider=device.provider,
            push_jid=answer.push_jid, secret=answer.secret, voip_token=device.voip_token,
            device_id=device.device_id, push_module=device.push_module,
            features=answer.features, max_payload_size=answer.max_payload_size,
            extensions=extensions, registered_at=time.time())

    async def enable_registration(self, registration: ClientRegistration,
                                  ) -> ClientRegistration:
        """Enable push at the account's server for a registration (idempotent there)."""
        await self.enable(registration.target, registration.node,
                          registration.publish_options(), registration.extensions)
        registration = registration.with_changes(enabled_at=time.time())
        if self._stored(registration):  # never resurrect one dropped meanwhile
            await self._save(registration)
        self.xmpp.event("push_enabled", registration)
        return registration

    async def unregister(self, registration: ClientRegistration) -> None:
        """Disable at the account's server and unregister at the app server.

        Both sides are tried; the record is dropped only when both succeeded
        (an app server that no longer knows the device counts as success), so
        a failed unregistration can be retried.
        """
        await self.start()
        spec = get_dialect(registration.dialect)
        problems: list[RegistrarError] = []
        try:
            await self.disable(registration.target, registration.node)
        except RegistrarError as error:
            problems.append(error)
        if spec.unregister_command is not None:
            try:
                await self.execute(registration.app_server, spec.unregister_command,
                                   spec.unregister_fields(registration),
                                   f"{spec.name} unregistration at {registration.app_server}")
            except RegistrarError as error:
                if error.condition != "item-not-found":
                    problems.append(error)
        if problems:
            raise problems[0]
        await self._forget(registration)
        log.info("unregistered %s from %s (%s)", self.account, registration.app_server,
                 registration.dialect)
        self.xmpp.event("push_registrar_unregistered", registration)

    async def update_token(self, token: str, voip_token: str | None = None, *,
                           app_server: str | None = None, dialect: str | None = None,
                           provider: str | None = None) -> list[ClientRegistration]:
        """The device has a new token: re-register and re-enable what used the old one.

        Without selectors every registration of the account gets the token and it
        becomes the configured ``token`` for later sessions; a device holding
        several tokens (APNs and FCM) selects the registrations it concerns.
        """
        selected = app_server is not None or dialect is not None or provider is not None
        if not selected:
            self.config["token"] = token
            if voip_token is not None:
                self.config["voip_token"] = voip_token
        await self.start()
        updated = []
        for registration in self.find(app_server, dialect, provider):
            current = (token, voip_token or registration.voip_token)
            if current != (registration.token, registration.voip_token):
                updated.append(await self._reregister(registration, *current))
        return updated

    def _current(self, registration: ClientRegistration) -> tuple[str, str | None]:
        """The tokens a registration should carry now (the configured ones, if any)."""
        token = self.config.get("token") or registration.token
        voip = self.config.get("voip_token") or registration.voip_token
        return token, voip

    async def _reregister(self, registration: ClientRegistration, token: str,
                          voip: str | None) -> ClientRegistration:
        log.info("token of %s changed (%s → %s): registering again", registration.app_server,
                 short_token(registration.token), short_token(token))
        return await self.register(
            token, dialect=registration.dialect, app_server=registration.app_server,
            provider=registration.provider, voip_token=voip,
            device_id=registration.device_id, push_module=registration.push_module,
            extensions=registration.extensions)

    async def _retire(self, old: ClientRegistration, spec: ClientDialect) -> None:
        """Turn off a node that a new registration replaced (best effort: logged)."""
        try:
            await self.disable(old.target, old.node)
        except RegistrarError as error:
            log.warning("could not disable the replaced node %s: %s", loggable_node(old.node),
                        error)
        if spec.unregister_command is not None and not spec.keeps_node:
            try:
                await self.execute(old.app_server, spec.unregister_command,
                                   spec.unregister_fields(old))
            except RegistrarError as error:
                log.warning("could not unregister the replaced token %s: %s",
                            short_token(old.token), error)

    # -- store ------------------------------------------------------------------------
    def _get(self, key: str) -> ClientRegistration | None:
        doc = self.store.table(CLIENT_REGISTRATIONS).get(key)
        return ClientRegistration.from_doc(doc) if doc is not None else None

    def _stored(self, registration: ClientRegistration) -> bool:
        stored = self._get(registration.key)
        return stored is not None and stored.node == registration.node

    async def _save(self, registration: ClientRegistration) -> None:
        await self.store.set_doc(CLIENT_REGISTRATIONS, registration.key, registration.to_doc())

    async def _forget(self, registration: ClientRegistration) -> None:
        await self.store.set_doc(CLIENT_REGISTRATIONS, registration.key, None)

    # -- sessions: re-enable, remote disable ------------------------------------------------
    async def resumed(self) -> list[ClientRegistration]:
        """Wait until this session's re-enabling is done; what it enabled."""
        if self._resumed is None:
            return []
        return await asyncio.shield(self._resumed)

    def _on_session_start(self, _event: Any) -> None:
        # Synchronous, so that resumed() sees this session's future at once.
        self._support = None
        self.session_enables = 0
        self._session_began = time.time()
        if not self.config.get("reenable", True):
            self._resumed = None
            return
        loop = self.xmpp.loop
        done = self._resumed = loop.create_future()
        self._resume_task = asyncio.ensure_future(self._resume(done), loop=loop)

    async def _resume(self, done: asyncio.Future[list[ClientRegistration]]) -> None:
        enabled: list[ClientRegistration] = []
        try:
            enabled = await self._reenable_all()
        except Exception:  # the store cannot be opened: nothing to re-enable
            log.exception("re-enabling push failed")
        finally:
            done.set_result(enabled)
        self.xmpp.event("push_reenabled", enabled)

    async def _reenable_all(self) -> list[ClientRegistration]:
        await self.start()
        enabled = []
        for registration in self.registrations():
            if registration.enabled_at and registration.enabled_at >= self._session_began:
                continue  # registered during this very session: already enabled
            if not self._stored(registration):
                continue  # remotely disabled or unregistered while we were busy
            try:
                current = self._current(registration)
                if current != (registration.token, registration.voip_token):
                    registration = await self._reregister(registration, *current)
                else:
                    registration = await self.enable_registration(registration)
            except RegistrarError as error:
                log.warning("re-enabling push to %s failed: %s", registration.app_server, error)
                self.xmpp.event("push_enable_failed", (registration, error))
            else:
                enabled.append(registration)
        return enabled

    async def _on_remote_disable(self, message: StanzaBase) -> None:
        """The app server dropped our node: forget it, and tell our server to stop."""
        pubsub = message.xml.find(f"{_PUBSUB}pubsub")
        affiliation = pubsub.find(f"{_PUBSUB}affiliation") if pubsub is not None else None
        if pubsub is None or affiliation is None or affiliation.get("affiliation") != "none":
            return
        about = affiliation.get("jid")
        if about and JID(about).bare != self.account:
            return
        sender = JID(message.xml.get("from", ""))
        node = pubsub.get("node")
        await self.start()
        for registration in self.registrations():
            from_app_server = sender.bare in (JID(registration.app_server).bare,
                                              JID(registration.target).bare)
            if registration.node != node or not from_app_server:
                continue
            try:
                await self._forget(registration)
            except StoreError:
                # A full disk: still tell our server to stop (below). The record stays
                # and is re-enabled next session, which the app server then refuses.
                # Logged once by the store, not per stanza.
                pass
            log.info("%s disabled push for node %s", sender, loggable_node(node or ""))
            try:
                await self.disable(registration.target, registration.node)
            except RegistrarError as error:
                log.warning("disabling the remotely disabled node failed: %s", error)
            self.xmpp.event("push_remote_disabled", registration)


def _result_values(command: Element | None) -> Values:
    values: Values = {}
    form = command.find(f"{_DATA}x") if command is not None else None
    if form is None:
        return values
    for item in form.iter(f"{_DATA}field"):
        var = item.get("var")
        if var:
            values[var] = [v.text or "" for v in item.iter(f"{_DATA}value")]
    return values


def _apply_extensions(enable: Any, extensions: EnableExtensions) -> None:
    """Add the Tigase children of ``<enable>`` that ``extensions`` asks for."""
    if extensions.encrypt_key:
        encrypt = enable["encrypt"]
        encrypt["alg"] = extensions.encrypt_alg
        encrypt["max_size"] = extensions.max_size
        encrypt["key"] = extensions.encrypt_key
    if extensions.priority:
        enable.enable("push_priority")
    if extensions.jingle:
        enable.enable("push_jingle")
    if extensions.groupchat:
        enable["groupchat_filter"]["policy"] = extensions.groupchat
    if extensions.muted:
        muted = enable["muted_filter"]
        for jid in extensions.muted:
            item = MutedItem()
            item["jid"] = jid
            muted.append(item)
    if extensions.ignore_unknown:
        enable.enable("ignore_unknown_filter")
    if extensions.away:
        enable["away"] = "true"

