"""Withdrawing one of our ad-hoc commands (xep_0050 has ``add_command``, no ``del_command``).

``send-notification`` (:mod:`.notices`) and ``test-push`` (:mod:`.selftest`) are
withdrawn when the plugin ends: :func:`withdraw_command` removes exactly what
``add_command`` added for one of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plugin import PushAppServer

COMMANDS_NS = "http://jabber.org/protocol/commands"


def withdraw_command(server: PushAppServer, node: str, name: str) -> None:
    """Undo ``add_command(node=node, name=name)``: the handler, disco item and identity."""
    jid = server.xmpp.boundjid
    disco = server.xmpp["xep_0030"]
    server.xmpp["xep_0050"].commands.pop((jid.full, node), None)
    disco.del_item(jid=jid.full, node=COMMANDS_NS, ijid=jid.full, inode=node)
    disco.del_identity(jid=jid, node=node, category="automation", itype="command-node",
                       name=name)
