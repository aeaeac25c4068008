"""The ``push_registrar`` plugin: XEP-0357 for slixmpp clients (the device side)."""

from .app_server import Unregistration
from .dialects import (
    DIALECT_NAMES,
    DIALECTS,
    ClientDialect,
    ClientRegistration,
    Device,
    EnableExtensions,
)
from .errors import (
    AppServerNotFound,
    NotAuthorized,
    PushNotSupported,
    PushTimeout,
    RegistrarError,
    RegistrationFailed,
)
from .plugin import PushRegistrar

__all__ = [
    "DIALECTS", "DIALECT_NAMES", "AppServerNotFound", "ClientDialect", "ClientRegistration",
    "Device", "EnableExtensions", "NotAuthorized", "PushNotSupported", "PushRegistrar",
    "PushTimeout", "RegistrarError", "RegistrationFailed", "Unregistration",
]
