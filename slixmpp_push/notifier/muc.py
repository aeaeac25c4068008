"""Pages posted to a group chat (XEP-0045 MUC) as well as sent to each person.

::

    chat = MucChat(xmpp, "oncall@conference.example.org", nick="pager")
    xmpp.register_plugin("push_notifier", {"chat_sender": chat, ...})

``send(to, text)`` sends the direct message through the wrapped sender
(plain by default, or :class:`~.omemo.OmemoChat`) and posts ``text`` to the
room, once: the same text again within ``window`` seconds (several people
paged in one escalation step, a resolve notice to each of them) is not
posted again. The room sees the page text in clear: it is for teams whose
room is private, whatever the direct messages use.

The bot joins the room at each session start (a client account, or a
component: it joins as ``push.example.org`` then). When it creates the
room, it accepts the server's default configuration (an instant room).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from slixmpp import JID
from slixmpp.basexmpp import BaseXMPP
from slixmpp.exceptions import IqError, IqTimeout, PresenceError

from .chat import ChatSender, PlainChat

log = logging.getLogger(__name__)

ROOM_CREATED = 201  # XEP-0045 status code: the join created the room


class MucChat:
    """A chat sender that also posts each distinct text to a MUC room."""

    def __init__(self, xmpp: BaseXMPP, room: str, inner: ChatSender | None = None, *,
                 nick: str = "pager", password: str | None = None, window: float = 30.0,
                 join_timeout: float = 10.0) -> None:
        room_jid = JID(room)
        if not room_jid.user or room_jid.resource:
            raise ValueError(f"not a room JID (room@service): {room!r}")
        self.xmpp = xmpp
        self.room = JID(room_jid.bare)
        self.inner: ChatSender = inner or PlainChat(xmpp)
        self.nick = nick
        self.password = password
        self.window = window
        self.join_timeout = join_timeout
        self.joined = asyncio.Event()
        self._recent: dict[str, float] = {}  # text → when it was posted (monotonic)
        self._joining: asyncio.Future[bool] | None = None
        if "xep_0045" not in xmpp.plugin:
            xmpp.register_plugin("xep_0045")
        xmpp.add_event_handler("session_start", self._on_session_start)
        xmpp.add_event_handler("disconnected", self._on_disconnected)

    @property
    def _from(self) -> JID | None:
        """A component must say who it is; a client's server knows."""
        return JID(self.xmpp.boundjid.bare) if self.xmpp.is_component else None

    # -- joining ----------------------------------------------------------------------
    def _on_session_start(self, _event: Any) -> None:
        self.joined.clear()
        if self._joining is None or self._joining.done():
            self._joining = asyncio.ensure_future(self.join())

    def _on_disconnected(self, _event: Any) -> None:
        self.joined.clear()

    async def join(self) -> bool:
        """Join the room (done at each session start); True once joined."""
        muc: Any = self.xmpp.plugin["xep_0045"]
        options: dict[str, Any] = {"pfrom": self._from} if self._from is not None else {}
        try:
            presence, *_ = await muc.join_muc_wait(
                self.room, self.nick, password=self.password, maxstanzas=0,
                presence_options=options, timeout=self.join_timeout)
            if ROOM_CREATED in presence["muc"]["status_codes"]:
                # A new room stays locked until its owner configures it: take the defaults.
                form = self.xmpp.plugin["xep_0004"].make_form(ftype="submit")
                await muc.set_room_config(self.room, form, ifrom=self._from)
                log.info("created the group chat %s", self.room)
        except PresenceError as exc:
            log.error("cannot join the group chat %s as %r: %s", self.room, self.nick,
                      exc.presence["error"]["condition"])
            return False
        except (IqError, IqTimeout, TimeoutError) as exc:
            log.error("cannot join the group chat %s: %s", self.room, type(exc).__name__)
            return False
        self.joined.set()
        return True

    # -- sending ----------------------------------------------------------------------
    async def send(self, to: str, text: str) -> str | None:
        # Decide before any await: concurrent sends of one page text post it once.
        post = self._claim(text)
        message_id = await self.inner.send(to, text)
        if post:
            await self._post(text)
        return message_id

    async def reply(self, to: str, text: str) -> str | None:
        """An answer to one person (``ack`` confirmations …): direct only, not to the room."""
        reply = getattr(self.inner, "reply", None)
        result: str | None = await (reply(to, text) if reply is not None
                                    else self.inner.send(to, text))
        return result

    def _claim(self, text: str) -> bool:
        now = time.monotonic()
        for old, at in list(self._recent.items()):
            if now - at >= self.window:
                del self._recent[old]
        if text in self._recent:
            return False
        self._recent[text] = now
        return True

    async def _post(self, text: str) -> None:
        if not self.joined.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.joined.wait(), self.join_timeout)
        if not self.joined.is_set():
            self._recent.pop(text, None)  # not posted: a later send may try again
            log.warning("not in the group chat %s: page not posted there", self.room)
            return
        self.xmpp.make_message(mto=self.room, mbody=text, mtype="groupchat",
                               mfrom=self._from).send()
