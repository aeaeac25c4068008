"""How the notifier's chat messages travel: plain, to a group chat, or (see
:mod:`.omemo`) end-to-end encrypted. One small class per way, one method."""

from __future__ import annotations

from typing import Protocol

from slixmpp import JID
from slixmpp.basexmpp import BaseXMPP


class ChatSender(Protocol):
    async def send(self, to: str, text: str) -> str | None:
        """Send ``text`` to the account ``to``; return the message id (for receipts)."""


class PlainChat:
    """A ``type='chat'`` message, with an XEP-0184 receipt request when xep_0184 is loaded."""

    def __init__(self, xmpp: BaseXMPP) -> None:
        self.xmpp = xmpp

    async def send(self, to: str, text: str) -> str | None:
        # An explicit from: ejabberd and Prosody 13 drop a component's stanza
        # without one (Prosody 0.12 filled it in).
        message = self.xmpp.make_message(mto=JID(to), mbody=text, mtype="chat",
                                         mfrom=self.xmpp.boundjid)
        message["id"] = self.xmpp.new_id()
        if "xep_0184" in self.xmpp.plugin:
            message["request_receipt"] = True
        message.send()
        return str(message["id"])
