"""Errors and delivery outcomes.

Expected provider outcomes (a dead token, a transient outage) are *values*
(:class:`DeliveryResult`), not exceptions; exceptions are for configuration
mistakes and programming errors::

    PushError
    ├── ConfigError          a config key is missing or wrong (names the key)
    ├── MissingDependency    an optional extra is not installed
    ├── StoreError           the registration store cannot be read or written
    └── LoginRefused         the XMPP server refuses the app server's login at start-up
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class PushError(Exception):
    """Base class of every error raised by slixmpp-push."""


class ConfigError(PushError):
    """A configuration value is missing or invalid.

    ``key`` is the dotted path of the offending key (``apps.ios.key_file``).
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class MissingDependency(PushError):
    """An optional dependency is needed by the configuration but not installed."""

    def __init__(self, package: str, extra: str, needed_for: str) -> None:
        super().__init__(
            f"{needed_for} needs the '{package}' package: "
            f"pip install 'slixmpp-push[{extra}]'"
        )
        self.package = package
        self.extra = extra


class StoreError(PushError):
    """The store file is unreadable, of an unknown schema, or cannot be written."""


class LoginRefused(PushError):
    """The XMPP server refused the app server's first login for a reason that another
    attempt cannot change: a wrong secret or password, the client port given for the
    component port, a name the server does not know. The message is one line: what
    the server said, and the fix."""


class Outcome(str, enum.Enum):
    DELIVERED = "delivered"  # the provider accepted it
    DEAD_TOKEN = "dead_token"  # the token will never work again: drop the registration
    RETRY = "retry"  # transient trouble: try again later (honour retry_after)
    REJECTED = "rejected"  # permanent, but not the token's fault (bad payload, auth)


@dataclass(slots=True, frozen=True)
class DeliveryResult:
    """What a provider made of one request."""

    outcome: Outcome
    status: int | None = None  # HTTP status, when there was one
    reason: str = ""  # the provider's reason ("Unregistered", "UNAVAILABLE", ...)
    retry_after: float | None = None  # seconds, from Retry-After
    message_id: str | None = None  # apns-id or FCM message name
    #: The provider stopped sending for the whole app (its credentials were
    #: refused) for ``retry_after`` seconds: /health is not ready meanwhile.
    suspended: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.DELIVERED
