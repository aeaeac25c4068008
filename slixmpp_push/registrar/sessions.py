"""Each new session: enable every stored registration again.

A server may have forgotten an enabled registration (ejabberd drops them on
some errors, an operator may have wiped them), so the registrar enables them
all again on every new session, as Conversations does. A registration whose
token is not the device's current one is registered again first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .dialects import ClientRegistration
from .errors import RegistrarError

if TYPE_CHECKING:
    from .plugin import PushRegistrar

log = logging.getLogger(__name__)


class Reenabler:
    """Re-enables one registrar's registrations, once per session."""

    def __init__(self, registrar: PushRegistrar) -> None:
        self.registrar = registrar
        self.began = 0.0  # when the current session started
        self.done: asyncio.Future[list[ClientRegistration]] | None = None
        self.task: asyncio.Future[None] | None = None

    def session_started(self, reenable: bool) -> None:
        """Start re-enabling (unless ``reenable`` is off); synchronous, so that
        :meth:`resumed` sees this session's future at once."""
        self.began = time.time()
        if not reenable:
            self.done = None
            return
        loop = self.registrar.xmpp.loop
        done = self.done = loop.create_future()
        self.task = asyncio.ensure_future(self._resume(done), loop=loop)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def resumed(self) -> list[ClientRegistration]:
        """Wait until this session's re-enabling is done; what it enabled."""
        if self.done is None:
            return []
        return await asyncio.shield(self.done)

    async def _resume(self, done: asyncio.Future[list[ClientRegistration]]) -> None:
        enabled: list[ClientRegistration] = []
        try:
            enabled = await self._reenable_all()
        except Exception:  # the store cannot be opened: nothing to re-enable
            log.exception("re-enabling push failed")
        finally:
            done.set_result(enabled)
        self.registrar.xmpp.event("push_reenabled", enabled)

    async def _reenable_all(self) -> list[ClientRegistration]:
        registrar = self.registrar
        await registrar.start()
        enabled = []
        for registration in registrar.registrations():
            if registration.enabled_at and registration.enabled_at >= self.began:
                continue  # registered during this very session: already enabled
            if not registrar.records.holds(registration):
                continue  # remotely disabled or unregistered while we were busy
            try:
                current = self._current(registration)
                if current != (registration.token, registration.voip_token):
                    # the plugin's re-registration, as update_token() does it
                    registration = await registrar._reregister(registration, *current)
                else:
                    registration = await registrar.enable_registration(registration)
            except RegistrarError as error:
                log.warning("re-enabling push to %s failed: %s", registration.app_server, error)
                registrar.xmpp.event("push_enable_failed", (registration, error))
            else:
                enabled.append(registration)
        return enabled

    def _current(self, registration: ClientRegistration) -> tuple[str, str | None]:
        """The tokens a registration should carry now (the configured ones, if any)."""
        config = self.registrar.config
        token = config.get("token") or registration.token
        voip = config.get("voip_token") or registration.voip_token
        return token, voip
