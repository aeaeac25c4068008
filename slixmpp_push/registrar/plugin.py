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
    in the same process: start the app server first), a file path or
    ``postgresql://`` URL for a store of its own, or ``None`` for a
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

This module holds the plugin class: configuration, life cycle and the public
API. The jobs behind that API live beside it: :mod:`.own_server` (``<enable>``
and ``<disable>`` at the account's server), :mod:`.app_server` (discovery and
ad-hoc commands), :mod:`.records` (the store), :mod:`.sessions` (re-enabling
on each new session) and :mod:`.remote_disable`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from slixmpp import JID
from slixmpp.plugins.base import BasePlugin

from ..logs import loggable_node, short_token
from ..store import MemoryStore, Store, create_store
from ..xep_0357.stanza import NS, register_stanzas
from . import own_server, remote_disable
from .app_server import Unregistration, find_app_server, run_command
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
from .errors import PushNotSupported, RegistrarError
from .records import Records, closing, open_once
from .sessions import Reenabler

log = logging.getLogger(__name__)


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
            store = create_store(store)
        self.store: Store = store
        self.records = Records(store)
        self.enables = 0  # <enable> IQs the server accepted, in all sessions
        self.session_enables = 0  # ... in the current session
        self._started: asyncio.Future[None] | None = None
        self._support: bool | None = None
        self._reenabler = Reenabler(self)
        remote_disable.watch(self)
        self.xmpp.add_event_handler("session_start", self._on_session_start)

    def plugin_end(self) -> None:
        remote_disable.unwatch(self.xmpp)
        self.xmpp.del_event_handler("session_start", self._on_session_start)
        self._reenabler.cancel()

    async def start(self) -> None:
        """Open the store (once per store object in the process); called by every API."""
        failed = self._started is not None and self._started.done() and (
            self._started.cancelled() or self._started.exception() is not None)
        if self._started is None or failed:
            self._started = asyncio.ensure_future(open_once(self.store))
        await asyncio.shield(self._started)

    async def stop(self) -> None:
        """Close the store if this plugin created it (from a path or ``None``)."""
        if self._started is None:
            return
        self._started = None
        if self._owns_store:
            closing(self.store)
            await self.store.close()

    @property
    def timeout(self) -> float:
        return float(self.config.get("timeout") or 10.0)

    @property
    def account(self) -> str:
        return str(self.xmpp.boundjid.bare)

    # -- sessions -------------------------------------------------------------------
    def _on_session_start(self, _event: Any) -> None:
        # Synchronous, so that resumed() sees this session's future at once.
        self._support = None
        self.session_enables = 0
        self._reenabler.session_started(bool(self.config.get("reenable", True)))

    async def resumed(self) -> list[ClientRegistration]:
        """Wait until this session's re-enabling is done; what it enabled."""
        return await self._reenabler.resumed()

    # -- the account's own server: XEP-0357 -----------------------------------------
    async def supported(self, refresh: bool = False) -> bool:
        """Whether the account's server advertises ``urn:xmpp:push:0`` (cached per session)."""
        if self._support is None or refresh:
            self._support = await own_server.supports_push(self.xmpp, self.account,
                                                           self.timeout)
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
        iq = own_server.enable_iq(self.xmpp, jid, node, publish_options, extensions)
        await own_server.send(iq, f"enabling push to {jid}", self.timeout)
        self.enables += 1
        self.session_enables += 1

    async def disable(self, jid: JID | str, node: str | None = None) -> None:
        """Send ``<disable>``: one node of ``jid``, or without ``node`` all of them."""
        iq = own_server.disable_iq(self.xmpp, jid, node)
        await own_server.send(iq, f"disabling push to {jid}", self.timeout)

    # -- app servers: discovery and ad-hoc commands -----------------------------------
    async def discover(self, provider: str | None = None) -> JID:
        """The first item of the account's domain that is a push app server
        (with ``provider`` among its features, when given)."""
        return await find_app_server(self.xmpp, provider, self.timeout)

    async def execute(self, app_server: JID | str, command: str, fields: Fields,
                      doing: str | None = None) -> Values:
        """Execute ``command`` with a submitted form; the result form as ``var → values``."""
        return await run_command(self.xmpp, app_server, command, fields,
                                 doing or f"{command} at {app_server}", self.timeout)

    # -- registrations -----------------------------------------------------------------
    def registrations(self) -> list[ClientRegistration]:
        """This account's stored registrations (the store must be started)."""
        return self.records.of_account(self.account)

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
        old = self.records.get(record_key(self.account, str(target), dialect, provider))
        device = spec.prepare(Device(
            token=token, provider=provider, voip_token=voip_token, push_module=push_module,
            device_id=device_id or (old.device_id if old else None)))
        registration = await self._register_at(target, spec, device, extensions)
        await self.records.save(registration)
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
        if self.records.holds(registration):  # never resurrect one dropped meanwhile
            await self.records.save(registration)
        self.xmpp.event("push_enabled", registration)
        return registration

    async def unregister(self, registration: ClientRegistration) -> Unregistration:
        """Disable at the account's server and unregister at the app server.

        Both sides are tried; the record is dropped only when both succeeded
        (an app server that no longer knows the device counts as success), so
        a failed unregistration can be retried. Returns what the app server did:
        removed the registration, had none any more (``item-not-found``), or holds
        none in this dialect (stateless).
        """
        await self.start()
        spec = get_dialect(registration.dialect)
        problems: list[RegistrarError] = []
        outcome = Unregistration.NOTHING_REGISTERED
        try:
            await self.disable(registration.target, registration.node)
        except RegistrarError as error:
            problems.append(error)
        if spec.unregister_command is not None:
            try:
                await self.execute(registration.app_server, spec.unregister_command,
                                   spec.unregister_fields(registration),
                                   f"{spec.name} unregistration at {registration.app_server}")
                outcome = Unregistration.REMOVED
            except RegistrarError as error:
                if error.condition != "item-not-found":
                    problems.append(error)
                outcome = Unregistration.NOT_REGISTERED
        if problems:
            raise problems[0]
        await self.records.forget(registration)
        log.info("unregistered %s from %s (%s): %s", self.account, registration.app_server,
                 registration.dialect, outcome.value)
        self.xmpp.event("push_registrar_unregistered", registration)
        return outcome

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

