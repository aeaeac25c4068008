"""The ``push_appserver`` plugin."""

from .delivery import Delivery, DeliveryPolicy, QueueFull, Submitted
from .plugin import PublishOutcome, PushAppServer
from .registrations import Registrations

__all__ = ["Delivery", "DeliveryPolicy", "PublishOutcome", "PushAppServer", "QueueFull",
           "Registrations", "Submitted"]
