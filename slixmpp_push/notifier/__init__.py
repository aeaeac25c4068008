"""The ``push_notifier`` plugin: notify, page, escalate, acknowledge."""

from .chat import ChatSender, PlainChat
from .models import Page, PageState, Policy, Step
from .paging import PageEngine
from .plugin import NotifyReport, PushNotifier
from .publisher import RemoteTarget, publish

__all__ = ["ChatSender", "NotifyReport", "Page", "PageEngine", "PageState", "PlainChat",
           "Policy", "PushNotifier", "RemoteTarget", "Step", "publish"]
