"""XEP-0357: Push Notifications — stanzas and publish parsing."""

from .publish import MalformedPublish, PageFields, Publish, form_values, parse_publish
from .stanza import (
    NS,
    PAGE_FORM_TYPE,
    PUBLISH_OPTIONS_FORM_TYPE,
    PUBLISH_OPTIONS_FORM_TYPES,
    SUMMARY_FORM_TYPE,
    Disable,
    Enable,
    Encrypted,
    EncryptRequest,
    Notification,
    PushJingle,
    PushPriority,
    register_stanzas,
)

__all__ = [
    "NS",
    "PAGE_FORM_TYPE",
    "PUBLISH_OPTIONS_FORM_TYPE",
    "PUBLISH_OPTIONS_FORM_TYPES",
    "SUMMARY_FORM_TYPE",
    "Disable",
    "Enable",
    "EncryptRequest",
    "Encrypted",
    "MalformedPublish",
    "Notification",
    "PageFields",
    "Publish",
    "PushJingle",
    "PushPriority",
    "form_values",
    "parse_publish",
    "register_stanzas",
]
