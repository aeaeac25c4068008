"""Where a registrar keeps its registrations: the store's ``client_registrations`` table.

One record per (account, app server, dialect, provider), keyed by
:func:`~slixmpp_push.registrar.dialects.record_key`. One store object may serve
several clients in a process (or a reconnecting one, or ``push_appserver``
beside them): it is opened once, by whoever comes first.
"""

from __future__ import annotations

import asyncio
import weakref

from ..store import CLIENT_REGISTRATIONS, Store
from .dialects import ClientRegistration

# Stores opened by a registrar in this process, so that several clients (or a
# reconnecting one) sharing a store object open it once.
_opening: weakref.WeakKeyDictionary[Store, asyncio.Future[None]] = weakref.WeakKeyDictionary()


def _opened_elsewhere(store: Store) -> bool:
    """Whether another owner (push_appserver, the application) has opened ``store``."""
    flag = getattr(store, "is_open", None)
    if isinstance(flag, bool):
        return flag
    return getattr(store, "_writer", None) is not None  # TinyDBStore after open()


async def open_once(store: Store) -> None:
    """Open ``store`` unless this process has opened it already (or is opening it)."""
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


def closing(store: Store) -> None:
    """``store`` is being closed by its owner: the next :func:`open_once` opens it again."""
    _opening.pop(store, None)


class Records:
    """The registrations in a store, read and written as :class:`ClientRegistration`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def of_account(self, account: str) -> list[ClientRegistration]:
        """``account``'s registrations, in key order."""
        return [ClientRegistration.from_doc(doc) for _, doc in
                sorted(self.store.table(CLIENT_REGISTRATIONS).items())
                if doc.get("account") == account]

    def get(self, key: str) -> ClientRegistration | None:
        doc = self.store.table(CLIENT_REGISTRATIONS).get(key)
        return ClientRegistration.from_doc(doc) if doc is not None else None

    def holds(self, registration: ClientRegistration) -> bool:
        """Whether ``registration`` is still the stored one (not dropped or replaced)."""
        stored = self.get(registration.key)
        return stored is not None and stored.node == registration.node

    async def save(self, registration: ClientRegistration) -> None:
        await self.store.set_doc(CLIENT_REGISTRATIONS, registration.key, registration.to_doc())

    async def forget(self, registration: ClientRegistration) -> None:
        await self.store.set_doc(CLIENT_REGISTRATIONS, registration.key, None)
