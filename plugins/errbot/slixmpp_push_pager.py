"""errbot plugin: page people from chat with slixmpp-push's ``push_notifier``.

Commands (the acting person is the sender's bare JID)::

    !page <title> [--critical|--high|--normal|--low] [--key K] [--policy P] [-- body]
    !ack [ID]          take a page (default: your latest): escalation stops
    !resolve [ID]      close a page
    !oncall [POLICY]   who a policy pages first

On errbot's XMPP backend, ``push_notifier`` is registered on errbot's own
slixmpp client (``XMPPBackend.conn.client``): pages go out over the bot's
connection and are kept in ``BOT_DATA_DIR``. On any other backend (errbot's
test backend included) it runs on a private client that never connects:
pages are kept in memory and reach nobody.

Configuration (``!plugin config SlixmppPushPager {...}``) is slixmpp-push's
``[notifier]`` section as a dict: ``policies``, ``default_policy``, ``groups``,
``remotes``, ``responders``, ``chat``; it is checked by the same reader.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from errbot import BotPlugin, CommandError, ValidationException, botcmd
from errbot.backends.base import Message, RoomOccupant
from slixmpp import JID, ClientXMPP

# Importing slixmpp_push registers push_notifier with slixmpp.
from slixmpp_push import ConfigError, MemoryStore, Priority, TinyDBStore
from slixmpp_push.notifier import PushNotifier
from slixmpp_push.notifier.config import read_notifier

log = logging.getLogger(__name__)
T = TypeVar("T")

CALL_TIMEOUT = 30.0  # seconds a command waits for the notifier
STORE_FILE = "slixmpp-push-pages.json"  # in BOT_DATA_DIR
BODY_SEPARATOR = re.compile(r"(?:^|\s)--(?:\s|$)")
PRIORITIES = {f"--{p.value}": p for p in Priority}
USAGE = "Usage: !page <title> [--critical|--high|--normal|--low] [--key K] [--policy P] [-- body]"
CONFIG_EXAMPLE: dict[str, Any] = {
    "policies": {"oncall": {"steps": [{"targets": ["alice@example.org"], "wait": 300},
                                      {"targets": ["group:sre"], "wait": 600}],
                            "repeat": 2, "final": ["group:managers"], "ack_timeout": 1800}},
    "groups": {"sre": ["alice@example.org", "bob@example.org"],
               "managers": ["lead@example.org"]},
    "default_policy": "oncall",
    "responders": [],
}


class PageRequest(NamedTuple):  # not a dataclass: errbot loads plugins outside sys.modules
    """What ``!page`` asked for."""

    title: str
    body: str
    priority: Priority
    key: str
    policy: str | None

    @classmethod
    def parse(cls, args: str) -> PageRequest:
        head, _, body = BODY_SEPARATOR.sub("\0", args, count=1).partition("\0")
        words: list[str] = []
        priority, key, policy = Priority.HIGH, None, None
        tokens = iter(head.split())
        for token in tokens:
            if token in PRIORITIES:
                priority = PRIORITIES[token]
            elif token in ("--key", "--policy"):
                value = next(tokens, None)
                if value is None:
                    raise CommandError(f"{token} needs a value. {USAGE}")
                key, policy = (value, policy) if token == "--key" else (key, value)
            elif token.startswith("--"):
                raise CommandError(f"Unknown option {token}. {USAGE}")
            else:
                words.append(token)
        if not words:
            raise CommandError(USAGE)
        title = " ".join(words)
        # The same title pages once: a second !page finds the open page.
        return cls(title, body.strip(), priority, key or f"errbot:{title.lower()}", policy)


def errbot_client(bot: Any) -> ClientXMPP | None:
    """The slixmpp client of errbot's XMPP backend (``XMPPBackend.conn.client``), if any."""
    client = getattr(getattr(bot, "conn", None), "client", None)
    return client if isinstance(client, ClientXMPP) else None


def _log_failure(started: concurrent.futures.Future[None]) -> None:
    if not started.cancelled() and started.exception() is not None:
        log.error("push_notifier did not start: %s", started.exception())


def actor(frm: Any) -> str:
    """Who sent a command: a bare JID (a room occupant's real JID when the room shows it)."""
    if isinstance(frm, RoomOccupant):
        real = getattr(frm, "real_jid", None)
        return str(real) if real else str(frm)  # an anonymous nick matches no paged account
    return JID(frm.person).bare


class SlixmppPushPager(BotPlugin):
    """Paging commands on top of slixmpp-push's ``push_notifier``."""

    notifier: PushNotifier | None = None  # tests may inject anything with its API
    _loop: asyncio.AbstractEventLoop | None = None  # the loop the notifier runs on
    _thread: threading.Thread | None = None  # our own loop's thread, off XMPP
    _owned = False  # we registered push_notifier, so we unregister it
    _closing: asyncio.Task[None] | None = None

    # -- configuration --------------------------------------------------------------------
    def get_configuration_template(self) -> Mapping[str, Any]:
        return CONFIG_EXAMPLE

    def check_configuration(self, configuration: Mapping[str, Any]) -> None:
        try:
            read_notifier(dict(configuration), Path.cwd())
        except ConfigError as exc:
            raise ValidationException(str(exc)) from exc

    # -- life cycle -----------------------------------------------------------------------
    def activate(self) -> None:
        config = read_notifier(dict(self.config or {}), Path.cwd()).plugin_config()
        config["chat_commands"] = False  # errbot owns the commands: !ack, not a bare "ack"
        client = errbot_client(self._bot)
        if client is not None:
            config["store"] = TinyDBStore(Path(self.bot_config.BOT_DATA_DIR) / STORE_FILE)
            self._loop = client.loop  # run by errbot's main thread (serve_forever)
        else:
            log.warning("errbot's %r backend is not XMPP: pages are kept in memory and "
                        "reach nobody", self._bot.mode)
            config.update(store=MemoryStore(), chat=False)
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever,
                                            name="slixmpp-push", daemon=True)
            self._thread.start()
        notifier = self._on_loop(lambda: self._register(client, config))
        self.notifier = notifier
        # Open the store and resume pages left open by a restart, without blocking
        # errbot (which activates plugins from slixmpp's session_start handler).
        started = asyncio.run_coroutine_threadsafe(notifier.start(), self._loop)
        started.add_done_callback(_log_failure)
        super().activate()

    def _register(self, client: ClientXMPP | None, config: dict[str, Any]) -> PushNotifier:
        """On the slixmpp loop: register push_notifier on ``client`` or on a private one."""
        if client is None:
            client = ClientXMPP("pager@localhost", "", loop=self._loop)  # never connected
        plugins: Any = client.plugin
        self._owned = "push_notifier" not in plugins
        if self._owned:
            client.register_plugin("push_notifier", config)
        else:
            log.info("push_notifier is already registered: using it, and its configuration")
        notifier: PushNotifier = plugins["push_notifier"]
        return notifier

    def deactivate(self) -> None:
        notifier, self.notifier = self.notifier, None
        loop = self._loop
        if notifier is not None and self._owned and loop is not None:
            plugins: Any = notifier.xmpp.plugin

            async def close() -> None:
                await notifier.stop()  # cancels escalation timers, closes the store
                plugins.disable("push_notifier")  # plugin_end drops its handlers

            if self._in_loop():
                self._closing = loop.create_task(close())
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=CALL_TIMEOUT)
            else:  # errbot is shutting down, slixmpp's loop has stopped: every page is stored
                plugins.disable("push_notifier")
        if self._thread is not None and loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=5)
            loop.close()
            self._thread = None
        super().deactivate()

    # -- commands -------------------------------------------------------------------------
    @botcmd
    def page(self, msg: Message, args: str) -> str:
        """Page the on-call people until someone acks:
        !page <title> [--critical|--high|--normal|--low] [--key K] [--policy P] [-- body]
        """
        request = PageRequest.parse(args)
        notifier = self._notifier()
        self._check_policy(notifier, request.policy)
        page, created = self._wait(notifier.page(
            request.key, request.title, request.body, request.priority, request.policy,
            source=f"errbot:{actor(msg.frm)}"))
        if not created:
            return f"Page {page.id} is already open ({page.state.value}): {page.title}"
        paging = ", ".join(notifier.oncall(page.policy)) or "nobody"
        note = "" if self._thread is None else " Not delivered: errbot's backend is not XMPP."
        return (f"Opened page {page.id} [{page.priority.value}] {page.title}: paging {paging} "
                f"(policy {page.policy}).{note}")

    @botcmd
    def ack(self, msg: Message, args: str) -> str:
        """Take a page, stopping its escalation: !ack [ID] (default: your latest page)"""
        return self._wait(self._act("ack", args, actor(msg.frm)))

    @botcmd
    def resolve(self, msg: Message, args: str) -> str:
        """Close a page: !resolve [ID] (default: your latest page)"""
        return self._wait(self._act("resolve", args, actor(msg.frm)))

    @botcmd
    def oncall(self, msg: Message, args: str) -> str:
        """Who a policy pages first: !oncall [POLICY]"""
        notifier = self._notifier()
        name = args.strip() or None
        self._check_policy(notifier, name)
        name = name or notifier.config.get("default_policy") or next(iter(notifier.policies))
        return f"On call ({name}): {', '.join(notifier.oncall(name)) or 'nobody'}"

    async def _act(self, verb: str, args: str, by: str) -> str:
        """On the loop: find the page, check that ``by`` may act on it, ack or resolve it."""
        notifier = self._notifier()
        await notifier.start()
        assert notifier.engine is not None
        page_id = args.split()[0].upper() if args.split() else None
        page = notifier.engine.find(page_id) if page_id else notifier.engine.latest_for(by)
        if page is None:
            return f"No open page {page_id}." if page_id else "No open page of yours."
        if not notifier.may_act(page, by):  # the rule of push_notifier's own chat commands
            return f"You were not paged for {page.id}."
        if verb == "resolve":
            await notifier.resolve(page.id, by)
            return f"Resolved {page.id}: {page.title}"
        await notifier.ack(page.id, by)
        policy = notifier.policies.get(page.policy)
        until = ""
        if policy is not None and policy.ack_timeout:
            until = f" for {int(policy.ack_timeout // 60) or 1} min"
        return f"Acknowledged {page.id}{until}: escalation stopped."

    # -- helpers --------------------------------------------------------------------------
    def _notifier(self) -> PushNotifier:
        if self.notifier is None:
            raise CommandError("The pager is not active.")
        return self.notifier

    def _check_policy(self, notifier: PushNotifier, name: str | None) -> None:
        if not notifier.policies:
            raise CommandError(f"No escalation policy is configured. An admin sets one with "
                               f"{self._bot.prefix}plugin config {self.name} {{...}} "
                               f"({self._bot.prefix}plugin config {self.name} shows an example).")
        if name is not None and name not in notifier.policies:
            raise CommandError(f"No policy named {name!r}. Policies: "
                               f"{', '.join(notifier.policies)}.")

    def _in_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _on_loop(self, function: Callable[[], T]) -> T:
        """Call ``function`` on the slixmpp loop's thread and return what it returns."""
        if self._in_loop():
            return function()

        async def call() -> T:
            return function()

        return self._wait(call())

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the slixmpp loop from one of errbot's threads and wait for it.

        errbot's XMPP backend runs slixmpp's loop in its main thread and commands in a
        thread pool (``BOT_ASYNC``), so a command hands its coroutine over to that loop.
        """
        assert self._loop is not None
        if self._in_loop():  # BOT_ASYNC = False: blocking here would stop the loop we wait on
            coro.close()
            raise CommandError("The pager needs errbot's BOT_ASYNC = True (the default).")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout=CALL_TIMEOUT)
        except TimeoutError:
            raise CommandError(f"The pager did not answer within {CALL_TIMEOUT:.0f} s; "
                               "it carries on in the background.") from None
