"""XEP-0357 at the account's own server: does it support push, ``<enable>``, ``<disable>``.

Functions of one stream; the plugin keeps what they learn (the support
answer, cached per session) and counts the enables.
"""

from __future__ import annotations

from typing import Any

from slixmpp import JID, Iq
from slixmpp.basexmpp import BaseXMPP
from slixmpp.exceptions import IqError, IqTimeout

from ..xep_0357.stanza import NS, PUBLISH_OPTIONS_FORM_TYPE, MutedItem
from .dialects import EnableExtensions
from .errors import from_xmpp_error


async def supports_push(xmpp: BaseXMPP, account: str, timeout: float) -> bool:
    """Whether ``account``'s server advertises ``urn:xmpp:push:0`` in disco#info."""
    try:
        iq = await xmpp["xep_0030"].get_info(jid=account, timeout=timeout)
    except (IqError, IqTimeout) as error:
        raise from_xmpp_error(error, "asking the server for its features") from None
    return NS in iq["disco_info"]["features"]


def enable_iq(xmpp: BaseXMPP, jid: JID | str, node: str,
              publish_options: dict[str, str] | None,
              extensions: EnableExtensions | None) -> Iq:
    """``<enable>`` with the publish-options form and the Tigase extensions."""
    iq = xmpp.make_iq_set()
    enable = iq["push_enable"]
    enable["jid"] = str(jid)
    enable["node"] = node
    if publish_options:
        form = enable["form"]
        form["type"] = "submit"
        form.add_field(var="FORM_TYPE", ftype="hidden", value=PUBLISH_OPTIONS_FORM_TYPE)
        for var, value in publish_options.items():
            form.add_field(var=var, value=value)
    if extensions is not None:
        _apply_extensions(enable, extensions)
    return iq


def disable_iq(xmpp: BaseXMPP, jid: JID | str, node: str | None) -> Iq:
    """``<disable>``: one node of ``jid``, or without ``node`` all of them."""
    iq = xmpp.make_iq_set()
    iq["push_disable"]["jid"] = str(jid)
    if node:
        iq["push_disable"]["node"] = node
    return iq


async def send(iq: Iq, doing: str, timeout: float) -> Iq:
    """Send ``iq``; an error answer or a timeout becomes a :class:`RegistrarError`."""
    try:
        return await iq.send(timeout=timeout)
    except (IqError, IqTimeout) as error:
        raise from_xmpp_error(error, doing) from None


def _apply_extensions(enable: Any, extensions: EnableExtensions) -> None:
    """Add the Tigase children of ``<enable>`` that ``extensions`` asks for."""
    if extensions.encrypt_key:
        encrypt = enable["encrypt"]
        encrypt["alg"] = extensions.encrypt_alg
        encrypt["max_size"] = extensions.max_size
        encrypt["key"] = extensions.encrypt_key
    if extensions.priority:
        enable.enable("push_priority")
    if extensions.jingle:
        enable.enable("push_jingle")
    if extensions.groupchat:
        enable["groupchat_filter"]["policy"] = extensions.groupchat
    if extensions.muted:
        muted = enable["muted_filter"]
        for jid in extensions.muted:
            item = MutedItem()
            item["jid"] = jid
            muted.append(item)
    if extensions.ignore_unknown:
        enable.enable("ignore_unknown_filter")
    if extensions.away:
        enable["away"] = "true"
