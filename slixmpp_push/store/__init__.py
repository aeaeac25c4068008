"""Where registrations and queued notifications live."""

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
from .status import StoreStatus
from .tinydb_store import AtomicJSONStorage, TinyDBStore

__all__ = [
    "CLIENT_REGISTRATIONS", "DEAD_TOKENS", "OMEMO", "PAGES", "PENDING", "REGISTRATIONS",
    "AtomicJSONStorage", "MemoryStore", "Store", "StoreStatus", "TinyDBStore",
    "device_identity",
]
