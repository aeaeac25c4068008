"""Device registrations: creating, re-registering and removing them.

Independent of any wire dialect: the ad-hoc commands in :mod:`.dialects` and
the Python API both come through here.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from ..config import RegistrationLimits
from ..models import Dialect, Registration
from ..store import Store
from ..store.base import DeviceIdentity

NODE_BYTES = 9  # 72 bits → 12 URL-safe characters
SECRET_BYTES = 18  # 144 bits → 24 URL-safe characters


def new_node() -> str:
    return secrets.token_urlsafe(NODE_BYTES)


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def device_hash(owner: str, device_id: str) -> str:
    """p2's key for a device: sha1hex(owner \\0 device id); Conversations matches it."""
    return hashlib.sha1(f"{owner}\0{device_id}".encode()).hexdigest()


class RegistrationLimit(Exception):
    """A new registration would pass one of the account's limits (the text says which)."""


def _device(registration: Registration) -> tuple[str, str]:
    return registration.app, registration.device_id or registration.token


class Registrations:
    """Registration logic over a :class:`~slixmpp_push.store.Store`."""

    def __init__(self, store: Store, limits: RegistrationLimits | None = None) -> None:
        self.store = store
        self.limits = limits or RegistrationLimits()

    async def register(self, *, account: str, domain: str, app: str, token: str,
                       dialect: Dialect, with_secret: bool, device_id: str | None = None,
                       voip_token: str | None = None, channel: str | None = None,
                       ) -> Registration:
        """Register (or re-register) a device; the same device keeps node and secret.

        A new registration beyond the account's limits raises :class:`RegistrationLimit`;
        re-registering a device never does.
        """
        now = time.time()
        identity: DeviceIdentity = (account, app, device_id or token, channel or "")
        existing = self.store.find_device(identity)
        if existing is not None:
            if (existing.token, existing.voip_token, existing.dialect) == (
                    token, voip_token, dialect):
                return existing
            updated = Registration(**{
                **existing.to_doc(), "dialect": dialect, "token": token,
                "voip_token": voip_token, "updated": now})
            await self.store.put(updated)
            return updated
        self._check_limits(account, (app, device_id or token), channel)
        node = new_node()
        while self.store.get(node) is not None:  # 72 bits: practically never
            node = new_node()
        registration = Registration(
            node=node, account=account, domain=domain, app=app, token=token,
            dialect=dialect, secret=new_secret() if with_secret else None,
            voip_token=voip_token, device_id=device_id, channel=channel,
            device_key=device_hash(account, device_id) if dialect is Dialect.P2 and device_id
            else None,
            channel_key=device_hash(channel, device_id) if channel and device_id else None,
            created=now, updated=now,
        )
        await self.store.put(registration)
        return registration

    def _check_limits(self, account: str, device: tuple[str, str], channel: str | None,
                      ) -> None:
        rows = self.store.by_account(account)
        devices = {_device(row) for row in rows}
        limit = self.limits.max_registrations_per_account
        if device not in devices and len(devices) >= limit:
            raise RegistrationLimit(
                f"{account} has {len(devices)} devices registered, the most allowed "
                f"(max_registrations_per_account = {limit}): unregister one first")
        if channel:
            limit = self.limits.max_group_chats_per_device
            chats = sum(1 for row in rows if row.channel and _device(row) == device)
            if chats >= limit:
                raise RegistrationLimit(
                    f"this device of {account} is registered for {chats} group chats, the "
                    f"most allowed (max_group_chats_per_device = {limit})")

    async def unregister(self, account: str, app: str, device: str,
                         channel: str | None = None) -> Registration | None:
        """Remove the account's registration of ``device`` (device id or token)."""
        existing = self.store.find_device((account, app, device, channel or ""))
        if existing is None:
            return None
        return await self.store.remove(existing.node)

    async def remove(self, node: str) -> Registration | None:
        return await self.store.remove(node)
