"""Administrator notices: one notification to chosen accounts, domains or everyone.

Transport-independent core: :func:`select_registrations` picks the targets
from a store, :func:`send_notice` fans a notification out to them through
anything with ``notify(registration, notification)`` (the ``push_appserver``
plugin, or the command line's local delivery) and counts what became of it.
Presence does not matter: a notice goes to every registered device.

The ad-hoc command ``send-notification`` is advertised by ``push_appserver``
only when its ``admins`` config key names someone, and only to them: disco#items
of the commands node lists it, and disco#info of its node answers, only when
the asker's bare JID is an admin's (others see every other command, and
``item-not-found`` for this node). Only those bare JIDs may run it (anyone else
gets ``forbidden``). Form fields: ``accounts``
(jid-multi), ``domain`` (text-single), ``everyone`` (boolean), ``title``
(required), ``body`` (text-multi) and ``priority`` (low, normal, high,
critical; default high). The result form reports ``total``, ``delivered``,
``queued``, ``failed`` and ``dead-tokens-removed``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from slixmpp import JID, Iq
from slixmpp.exceptions import XMPPError
from slixmpp.plugins.xep_0004 import Form
from slixmpp.plugins.xep_0030 import DiscoInfo, DiscoItems

from ..logs import LogSampler, loggable_node
from ..models import Notification, Priority, Registration
from ..store import Store
from .adhoc import COMMANDS_NS, withdraw_command
from .delivery import Submitted

if TYPE_CHECKING:
    from .plugin import PushAppServer

log = logging.getLogger(__name__)
_failures = LogSampler(log)

NODE = "send-notification"
NAME = "Send a notification"
DATA_NS = "jabber:x:data"
PRIORITIES = tuple(p.value for p in Priority)
#: An administrator's notice is meant to be seen: high makes it a visible alert.
DEFAULT_PRIORITY = Priority.NORMAL  # a titled notice is shown either way
#: Requests in flight at once, so 10,000 devices are not 10,000 simultaneous requests.
CONCURRENCY = 200
_TRUE = ("1", "true")

Progress = Callable[[int, int], None]  # (done, total)


class Notifier(Protocol):
    """What :func:`send_notice` sends through (``PushAppServer`` is one)."""

    async def notify(self, registration: Registration, notification: Notification,
                     ) -> Submitted: ...


@dataclass(slots=True)
class NoticeSummary:
    """What became of one notice; ``queued`` ones are kept and retried durably."""

    total: int = 0
    delivered: int = 0
    queued: int = 0  # pending: retried, throttled or slow; delivered later
    failed: int = 0  # refused by the provider for good, or not even queued
    dead_tokens_removed: int = 0

    @property
    def done(self) -> int:
        return self.delivered + self.queued + self.failed + self.dead_tokens_removed

    def count(self, submitted: Submitted) -> None:
        if submitted is Submitted.DELIVERED:
            self.delivered += 1
        elif submitted in (Submitted.QUEUED, Submitted.THROTTLED):
            self.queued += 1
        elif submitted is Submitted.DEAD_TOKEN:
            self.dead_tokens_removed += 1
        else:
            self.failed += 1

    def line(self) -> str:
        return (f"delivered {self.delivered}, queued {self.queued}, failed {self.failed}, "
                f"dead tokens removed {self.dead_tokens_removed}")


# -- the core ------------------------------------------------------------------------
def bare_jid(text: str) -> str:
    """``text`` as a normalised bare JID; ValueError when it is not a JID."""
    jid = JID(text.strip())  # InvalidJID is a ValueError
    if not jid.domain:
        raise ValueError(f"not a JID: {text!r}")
    return jid.bare


def select_registrations(store: Store, accounts: Iterable[str] = (),
                         domains: Iterable[str] = (), everyone: bool = False,
                         ) -> list[Registration]:
    """The registrations a notice to these accounts, domains (or everyone) reaches.

    One per device token: a phone registered for two accounts, or for
    Conversations' group chats, shows the notice once. Raises ValueError for
    an account that is not a JID.
    """
    wanted_accounts = [bare_jid(account) for account in accounts]
    wanted_domains = {domain.strip().lower() for domain in domains if domain.strip()}
    chosen: list[Registration] = []
    if everyone or wanted_domains:
        chosen += [r for r in store.registrations() if everyone or r.domain in wanted_domains]
    for account in wanted_accounts:
        chosen += store.by_account(account)
    # Channel-less registrations first, so a device keeps its account's own one.
    chosen.sort(key=lambda r: (r.account, r.channel is not None, r.created, r.node))
    seen: set[tuple[str, str]] = set()
    selected = []
    for registration in chosen:
        device = (registration.app, registration.token)
        if device not in seen:
            seen.add(device)
            selected.append(registration)
    return selected


async def send_notice(notifier: Notifier, registrations: list[Registration], title: str,
                      body: str | None = None, priority: Priority = DEFAULT_PRIORITY,
                      progress: Progress | None = None, concurrency: int = CONCURRENCY,
                      ) -> NoticeSummary:
    """Send one notice to ``registrations``, at most ``concurrency`` at a time."""
    notification = Notification(title=title, body=body or None, priority=priority,
                                received_at=time.time())
    summary = NoticeSummary(total=len(registrations))
    queue = iter(registrations)  # shared by the workers: each item is taken once

    async def worker() -> None:
        for registration in queue:
            try:
                summary.count(await notifier.notify(registration, notification))
            except Exception as exc:  # QueueFull, StoreError: this device got nothing
                # A full queue or disk fails every device alike: one line a minute, with
                # the count; the summary reports each failure.
                _failures.log(logging.WARNING, type(exc).__name__, "notice to node %s failed: %s",
                              loggable_node(registration.node), exc)
                summary.failed += 1
            if progress is not None:
                progress(summary.done, summary.total)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(registrations)))))
    return summary


# -- the ad-hoc command --------------------------------------------------------------
def admins(server: PushAppServer) -> frozenset[str]:
    """The bare JIDs of the ``admins`` config key (invalid entries are logged, skipped)."""
    found = set()
    for entry in server.config.get("admins") or ():
        try:
            found.add(bare_jid(str(entry)))
        except ValueError:
            log.error("admins: %r is not a JID; ignored", entry)
    return frozenset(found)


def register_notice_command(server: PushAppServer) -> None:
    """Advertise ``send-notification`` to the admins (only when some are configured)."""
    allowed = admins(server)
    if not allowed:
        return
    server.xmpp["xep_0050"].add_command(node=NODE, name=NAME, handler=_handler(server))
    # Listed only to those who may run it: node handlers for this JID's commands
    # list and the command's own node filter the static disco data per asker.
    disco = server.xmpp["xep_0030"]
    jid = JID(server.xmpp.boundjid.full)
    disco.set_node_handler("get_items", jid=jid, node=COMMANDS_NS,
                           handler=_commands_items(server, allowed))
    disco.set_node_handler("get_info", jid=jid, node=NODE,
                           handler=_command_info(server, allowed))


def withdraw_notice_command(server: PushAppServer) -> None:
    """Undo :func:`register_notice_command` (harmless when it registered nothing)."""
    withdraw_command(server, NODE, NAME)
    # Back to xep_0030's static handlers for both nodes.
    jid = server.xmpp.boundjid
    disco = server.xmpp["xep_0030"]
    disco.del_node_handler("get_items", JID(jid.full), COMMANDS_NS)
    disco.del_node_handler("get_info", JID(jid.full), NODE)


def _is_admin(allowed: frozenset[str], asker: Any) -> bool:
    try:
        return asker is not None and JID(asker).bare in allowed
    except ValueError:
        return False


def _commands_items(server: PushAppServer, allowed: frozenset[str]) -> Any:
    def get_items(jid: JID, node: str, ifrom: JID | None, data: Any) -> DiscoItems | None:
        found: DiscoItems | None = server.xmpp["xep_0030"].static.get_items(jid, node, ifrom, data)
        if found is None or _is_admin(allowed, ifrom):
            return found
        shown = DiscoItems()
        shown["node"] = node
        for item in found["substanzas"]:  # in order, without send-notification
            if item["node"] != NODE:
                shown.add_item(item["jid"], item["node"] or None, item["name"] or None)
        return shown

    return get_items


def _command_info(server: PushAppServer, allowed: frozenset[str]) -> Any:
    def get_info(jid: JID, node: str, ifrom: JID | None, data: Any) -> DiscoInfo:
        if not _is_admin(allowed, ifrom):
            raise XMPPError("item-not-found", etype="cancel")
        info: DiscoInfo = server.xmpp["xep_0030"].static.get_info(jid, node, ifrom, data)
        return info

    return get_info


def _handler(server: PushAppServer) -> Any:
    async def start(iq: Iq, session: dict[str, Any]) -> dict[str, Any]:
        _check_admin(server, session["from"])
        form = iq["command"].xml.find(f"{{{DATA_NS}}}x")
        if form is None or form.get("type", "submit") != "submit":
            session["payload"] = _empty_form(server)
            session["next"] = complete
            session["has_next"] = False
            return session
        return await complete(form, session)

    async def complete(payload: Any, session: dict[str, Any]) -> dict[str, Any]:
        _expire(server, session)
        sender: JID = session["from"]
        _check_admin(server, sender)
        values = _values(payload)
        title = _first(values, "title")
        if not title:
            raise _bad_request("missing required field 'title'")
        priority = _priority(_first(values, "priority"))
        accounts = [a for v in values.get("accounts", []) for a in v.replace(",", " ").split()]
        domain = _domain(_first(values, "domain"))
        everyone = _first(values, "everyone").lower() in _TRUE
        if not (accounts or domain or everyone):
            raise _bad_request("choose 'accounts', 'domain' or 'everyone'")
        try:
            selected = select_registrations(server.store, accounts, [domain], everyone)
        except ValueError as exc:
            raise _bad_request(f"field 'accounts': {exc}") from None
        body = "\n".join(values.get("body", [])).strip() or None
        await server.start()
        summary = await send_notice(server, selected, title, body, priority)
        log.info("notice %r from %s to %d device(s): %s", title, sender.bare,
                 summary.total, summary.line())
        session["payload"] = _result_form(server, summary)
        session["notes"] = [("info", f"{summary.total} device(s): {summary.line()}"
                             if summary.total else "no registered device matches")]
        session["next"] = None
        session["has_next"] = False
        return session

    return start


def _check_admin(server: PushAppServer, sender: JID) -> None:
    if sender.bare not in admins(server):
        raise XMPPError("forbidden", etype="auth",
                        text="only the app server's administrators may send notifications")


def _bad_request(text: str) -> XMPPError:
    return XMPPError("bad-request", etype="modify", text=text)


def _values(payload: Any) -> dict[str, list[str]]:
    """Every value of every field of a submitted form (a jid-multi has several), by var."""
    items = payload if isinstance(payload, list) else [payload]
    values: dict[str, list[str]] = {}
    for item in items:
        xml: Any = getattr(item, "xml", item)  # a Form stanza, or the bare <x/> element
        if getattr(xml, "tag", None) != f"{{{DATA_NS}}}x":
            continue
        for field in xml.iter(f"{{{DATA_NS}}}field"):
            values[field.get("var", "")] = [v.text or "" for v in
                                            field.iter(f"{{{DATA_NS}}}value")]
    return values


def _first(values: dict[str, list[str]], var: str) -> str:
    found = values.get(var) or [""]
    return found[0].strip()


def _priority(text: str) -> Priority:
    if not text:
        return DEFAULT_PRIORITY
    try:
        return Priority(text.lower())
    except ValueError:
        raise _bad_request(f"field 'priority' must be one of {', '.join(PRIORITIES)}") from None


def _domain(text: str) -> str:
    if text and ("@" in text or "/" in text or " " in text):
        raise _bad_request(f"field 'domain' is not a domain name: {text!r}")
    return text


def _expire(server: PushAppServer, session: dict[str, Any]) -> None:
    # xep_0050 keeps a completed session forever; drop it once answered.
    sessions = server.xmpp["xep_0050"].sessions
    asyncio.get_running_loop().call_later(1.0, sessions.pop, session["id"], None)


def _empty_form(server: PushAppServer) -> Form:
    form: Form = server.xmpp["xep_0004"].make_form(
        ftype="form", title=NAME,
        instructions="Send a notification to the registered devices of these accounts, "
                     "of every account of a domain, or of everyone.")
    form.add_field(var="accounts", ftype="jid-multi", label="Accounts")
    form.add_field(var="domain", ftype="text-single", label="Every account of this domain")
    form.add_field(var="everyone", ftype="boolean", label="Every registered device",
                   value=False)
    form.add_field(var="title", ftype="text-single", label="Title", required=True)
    form.add_field(var="body", ftype="text-multi", label="Text")
    form.add_field(var="priority", ftype="list-single", label="Priority",
                   value=DEFAULT_PRIORITY.value,
                   options=[{"label": p.capitalize(), "value": p} for p in PRIORITIES])
    return form


def _result_form(server: PushAppServer, summary: NoticeSummary) -> Form:
    form: Form = server.xmpp["xep_0004"].make_form(ftype="result", title="Notification sent")
    for var, value in (("total", summary.total), ("delivered", summary.delivered),
                       ("queued", summary.queued), ("failed", summary.failed),
                       ("dead-tokens-removed", summary.dead_tokens_removed)):
        form.add_field(var=var, ftype="text-single", value=str(value))
    return form
