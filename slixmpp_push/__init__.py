"""slixmpp-push: XEP-0357 push notifications for slixmpp.

Importing the package registers its plugins with slixmpp, so a bot can do::

    import slixmpp_push
    xmpp.register_plugin("push_appserver", {"apps": [...]})
"""

from slixmpp.plugins.base import register_plugin as _register_plugin

from .appserver import DeliveryPolicy, PushAppServer, Submitted
from .config import AppConfig, RegistrationLimits
from .errors import ConfigError, DeliveryResult, MissingDependency, Outcome, PushError, StoreError
from .models import Dialect, Notification, Priority, Registration
from .notifier import Policy, Step
from .notifier.plugin import PushNotifier
from .registrar import PushRegistrar
from .store import MemoryStore, Store, TinyDBStore
from .xep_0357 import register_stanzas

__version__ = "0.1.0"

register_stanzas()
_register_plugin(PushAppServer)
_register_plugin(PushRegistrar)
_register_plugin(PushNotifier)

__all__ = [
    "AppConfig",
    "ConfigError",
    "DeliveryPolicy",
    "DeliveryResult",
    "Dialect",
    "MemoryStore",
    "MissingDependency",
    "Notification",
    "Outcome",
    "Policy",
    "Priority",
    "PushAppServer",
    "PushError",
    "PushNotifier",
    "PushRegistrar",
    "Registration",
    "RegistrationLimits",
    "Step",
    "Store",
    "StoreError",
    "Submitted",
    "TinyDBStore",
    "__version__",
]
