"""Remote disable: the app server dropped one of our nodes.

An app server that will no longer push to a node (its token is dead, the
device was removed) tells the account with a pubsub ``<affiliation
affiliation='none'>`` for that node. The registrar forgets the registration
and disables the node at the account's own server, so that the server stops
publishing to it.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from slixmpp import JID
from slixmpp.xmlstream import StanzaBase
from slixmpp.xmlstream.handler import CoroutineCallback
from slixmpp.xmlstream.matcher import MatchXPath

from ..errors import StoreError
from ..logs import loggable_node
from .errors import RegistrarError

if TYPE_CHECKING:
    from slixmpp.basexmpp import BaseXMPP

    from .plugin import PushRegistrar

log = logging.getLogger(__name__)

HANDLER = "push_registrar remote disable"
_PUBSUB = "{http://jabber.org/protocol/pubsub}"
_REMOTE_DISABLE_XPATH = "{%s}message/" + f"{_PUBSUB}pubsub/{_PUBSUB}affiliation"


def watch(registrar: PushRegistrar) -> None:
    """Handle remote disables addressed to ``registrar``'s account."""
    xmpp = registrar.xmpp
    xmpp.register_handler(CoroutineCallback(
        HANDLER, MatchXPath(_REMOTE_DISABLE_XPATH % xmpp.default_ns),
        functools.partial(on_remote_disable, registrar)))


def unwatch(xmpp: BaseXMPP) -> None:
    xmpp.remove_handler(HANDLER)


async def on_remote_disable(registrar: PushRegistrar, message: StanzaBase) -> None:
    """The app server dropped our node: forget it, and tell our server to stop."""
    pubsub = message.xml.find(f"{_PUBSUB}pubsub")
    affiliation = pubsub.find(f"{_PUBSUB}affiliation") if pubsub is not None else None
    if pubsub is None or affiliation is None or affiliation.get("affiliation") != "none":
        return
    about = affiliation.get("jid")
    if about and JID(about).bare != registrar.account:
        return
    sender = JID(message.xml.get("from", ""))
    node = pubsub.get("node")
    await registrar.start()
    for registration in registrar.registrations():
        from_app_server = sender.bare in (JID(registration.app_server).bare,
                                          JID(registration.target).bare)
        if registration.node != node or not from_app_server:
            continue
        try:
            await registrar.records.forget(registration)
        except StoreError:
            # A full disk: still tell our server to stop (below). The record stays
            # and is re-enabled next session, which the app server then refuses.
            # Logged once by the store, not per stanza.
            pass
        log.info("%s disabled push for node %s", sender, loggable_node(node or ""))
        try:
            await registrar.disable(registration.target, registration.node)
        except RegistrarError as error:
            log.warning("disabling the remotely disabled node failed: %s", error)
        registrar.xmpp.event("push_remote_disabled", registration)
