"""Where registrations and queued notifications live: a TinyDB file (the default) or a
PostgreSQL database (:mod:`.postgresql`, needs the ``postgresql`` extra); :func:`create_store`
picks one by its location."""

from .base import (
    CLIENT_REGISTRATIONS,
    DEAD_TOKENS,
    OMEMO,
    PAGES,
    PENDING,
    REGISTRATIONS,
    MemoryStore,
    Store,
    device_identity,
)
from .location import create_store
from .status import StoreStatus
from .tinydb_store import AtomicJSONStorage, TinyDBStore
from .urls import is_database_url

__all__ = [
    "CLIENT_REGISTRATIONS", "DEAD_TOKENS", "OMEMO", "PAGES", "PENDING", "REGISTRATIONS",
    "AtomicJSONStorage", "MemoryStore", "Store", "StoreStatus", "TinyDBStore",
    "create_store", "device_identity", "is_database_url",
]
