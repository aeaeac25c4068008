"""Errors of the device side, translated from XMPP errors at one seam.

A caller wants to know *what to do*, not which stanza came back: give up
(the server has no push), fix the account or the app server's policy (not
authorised), try later (timeout), or read the condition (anything else)::

    PushError
    └── RegistrarError              condition, text and error type of the answer
        ├── PushNotSupported        the server or app server lacks what was asked
        │   └── AppServerNotFound   discovery found no matching app server
        ├── NotAuthorized           forbidden / not-authorized
        ├── PushTimeout             no answer in time
        └── RegistrationFailed      any other error, condition and text kept
"""

from __future__ import annotations

from slixmpp.exceptions import IqTimeout, XMPPError

from ..errors import PushError

#: Conditions that mean "this entity does not do that at all".
UNSUPPORTED = frozenset({"feature-not-implemented", "service-unavailable"})
#: Conditions that mean "you may not".
UNAUTHORIZED = frozenset({"forbidden", "not-authorized", "registration-required"})


class RegistrarError(PushError):
    """A push request was refused or not answered.

    ``condition`` is the XMPP error condition (``item-not-found``…), ``text``
    the server's explanation (may be empty), ``etype`` the error type
    (``cancel``, ``auth``, ``wait``…).
    """

    def __init__(self, doing: str, condition: str = "undefined-condition", text: str = "",
                 etype: str = "cancel") -> None:
        detail = condition + (f": {text}" if text else "")
        super().__init__(f"{doing} failed: {detail}")
        self.doing = doing
        self.condition = condition
        self.text = text
        self.etype = etype


class PushNotSupported(RegistrarError):
    """The account's server has no XEP-0357, or the app server lacks the command."""


class AppServerNotFound(PushNotSupported):
    """No item of the account's domain is a push app server (with that provider)."""


class NotAuthorized(RegistrarError):
    """The server or the app server refuses this account."""


class PushTimeout(RegistrarError):
    """No answer within the configured timeout."""


class RegistrationFailed(RegistrarError):
    """Any other error answer, or an answer we cannot use (a missing field)."""


def from_xmpp_error(error: XMPPError, doing: str) -> RegistrarError:
    """The exception for an IqError / IqTimeout met while ``doing`` something."""
    if isinstance(error, IqTimeout):
        return PushTimeout(doing, "remote-server-timeout", "no answer in time", "wait")
    condition = error.condition or "undefined-condition"
    cls: type[RegistrarError] = RegistrationFailed
    if condition in UNSUPPORTED:
        cls = PushNotSupported
    elif condition in UNAUTHORIZED:
        cls = NotAuthorized
    return cls(doing, condition, error.text or "", error.etype or "cancel")
