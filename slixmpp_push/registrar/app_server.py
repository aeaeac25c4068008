"""App servers: finding one among the account's services, running its ad-hoc commands,
and what one did with an unregistration."""

from __future__ import annotations

import asyncio
import enum
from xml.etree.ElementTree import Element

from slixmpp import JID
from slixmpp.basexmpp import BaseXMPP
from slixmpp.exceptions import IqError, IqTimeout

from .dialects import Fields, Values
from .errors import AppServerNotFound, RegistrationFailed, from_xmpp_error

_COMMAND = "{http://jabber.org/protocol/commands}command"
_DATA = "{jabber:x:data}"
_DISCO_ITEM = "{http://jabber.org/protocol/disco#items}item"


class Unregistration(enum.Enum):
    """What the app server did with a registration :meth:`PushRegistrar.unregister` ended
    (push is disabled at the account's server in every case)."""

    REMOVED = "removed"  # it held the registration, and removed it
    NOT_REGISTERED = "not-registered"  # it answered item-not-found: it had none any more
    NOTHING_REGISTERED = "nothing-registered"  # the dialect (stateless) registers nothing


async def find_app_server(xmpp: BaseXMPP, provider: str | None, timeout: float) -> JID:
    """The first item of the account's domain that is a push app server.

    disco#items of the domain, then disco#info of each item: identity
    ``pubsub/push`` and, when ``provider`` is given, that feature too.
    """
    domain = xmpp.boundjid.domain
    disco = xmpp["xep_0030"]
    try:
        items = await disco.get_items(jid=domain, timeout=timeout)
    except (IqError, IqTimeout) as error:
        raise from_xmpp_error(error, f"listing the services of {domain}") from None
    # In the server's order (the stanza interface returns a set): the first match wins.
    jids = list(dict.fromkeys(item.get("jid", "") for item in items.xml.iter(_DISCO_ITEM)))
    jids = [jid for jid in jids if jid]
    infos = await asyncio.gather(*(disco.get_info(jid=j, timeout=timeout)
                                   for j in jids), return_exceptions=True)
    for jid, info in zip(jids, infos, strict=True):
        if isinstance(info, BaseException):
            continue
        identities = {(i[0], i[1]) for i in info["disco_info"]["identities"]}
        if ("pubsub", "push") not in identities:
            continue
        if provider and provider not in info["disco_info"]["features"]:
            continue
        return JID(jid)
    wanted = " with provider " + provider if provider else ""
    raise AppServerNotFound("discovering an app server", "item-not-found",
                            f"no push app server{wanted} among the services of {domain}")


async def run_command(xmpp: BaseXMPP, app_server: JID | str, command: str, fields: Fields,
                  doing: str, timeout: float) -> Values:
    """Execute ``command`` with a submitted form; the result form as ``var → values``."""
    form = xmpp["xep_0004"].make_form(ftype="submit")
    for var, value in fields:
        form.add_field(var=var, value=value)
    try:
        iq = await xmpp["xep_0050"].send_command(
            str(app_server), command, payload=form, timeout=timeout)
    except (IqError, IqTimeout) as error:
        raise from_xmpp_error(error, doing) from None
    element = iq.xml.find(_COMMAND)
    status = element.get("status", "") if element is not None else ""
    if status not in ("completed", ""):
        raise RegistrationFailed(doing, "bad-answer",
                                 f"the command is {status!r}, not completed")
    return _result_values(element)


def _result_values(command: Element | None) -> Values:
    values: Values = {}
    form = command.find(f"{_DATA}x") if command is not None else None
    if form is None:
        return values
    for item in form.iter(f"{_DATA}field"):
        var = item.get("var")
        if var:
            values[var] = [v.text or "" for v in item.iter(f"{_DATA}value")]
    return values
