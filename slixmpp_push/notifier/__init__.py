"""The ``push_notifier`` plugin: notify, page, escalate, acknowledge.

The package exports the pager's values and engine: policies and steps, pages,
chat senders, the remote publisher. The plugin class itself is
:class:`slixmpp_push.notifier.plugin.PushNotifier` (also
``slixmpp_push.PushNotifier``). It is not imported here: the config layer reads
``[notifier]`` into these values, and the plugin needs the app server, so
importing it here would make reading a config file load every plugin (see
``docs/architecture.md``).
"""

from .chat import ChatSender, PlainChat
from .models import Page, PageState, Policy, Step
from .paging import PageEngine
from .publisher import RemoteTarget, publish

__all__ = ["ChatSender", "Page", "PageEngine", "PageState", "PlainChat", "Policy",
           "RemoteTarget", "Step", "publish"]
