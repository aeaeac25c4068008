"""errbot plugin: page people from chat with slixmpp-push's ``push_notifier``.

Commands (the acting person is the sender's bare JID)::

    !page <title> [--critical|--high|--normal|--low] [--key K] [--policy P] [-- body]
    !ack [ID]          take a page (default: your latest): escalation stops
    !resolve [ID]      close a page
    !oncall [POLICY]   who a policy pages first

On an XMPP backend (errbot's, or ``SlixmppXMPP`` from ``plugins/errbot/backends``),
``push_notifier`` is registered on the backend's own slixmpp client
(``bot.conn.client``): pages go out over the bot's connection and are kept in
``BOT_DATA_DIR``. On any other backend (errbot's test backend included) it runs on
a private client that never connects: pages are kept in memory and reach nobody.

Configuration: slixmpp-push's ``[notifier]`` section as a dict (``policies``,
``default_policy``, ``groups``, ``remotes``, ``responders``, ``chat``), checked by
the same reader; ``omemo`` and ``muc`` are refused (errbot's connection carries the
chat). From ``!plugin config SlixmppPushPager {...}`` (errbot stores it), or else from
``SLIXMPP_PUSH_PAGER = {...}`` in errbot's ``config.py``.

Threads: the notifier lives on the client's event loop; commands run in errbot's
threads and hand their work over to it. ``activate()`` and ``deactivate()`` never
wait for that loop: errbot's own XMPP backend holds the loop while an admin command
such as ``!plugin config`` (which deactivates and activates the plugin) runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import threading
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from errbot import BotPlugin, CommandError, ValidationException, botcmd, re_botcmd
from errbot.backends.base import Message, RoomOccupant
from slixmpp import JID, ClientXMPP

# Importing slixmpp_push registers push_notifier with slixmpp.
from slixmpp_push import ConfigError, MemoryStore, Priority, PushNotifier, TinyDBStore
from slixmpp_push.notifier.config import NotifierSettings, read_notifier

log = logging.getLogger(__name__)
T = TypeVar("T")

CALL_TIMEOUT = 30.0  # seconds a command waits for the notifier
STORE_FILE = "slixmpp-push-pages.json"  # in BOT_DATA_DIR
CONFIG_SETTING = "SLIXMPP_PUSH_PAGER"  # in errbot's config.py
# What the page's chat message asks for (push_notifier's wording), without errbot's prefix.
PAGE_ANSWER = r"^(?P<verb>ack|resolve)(?:\s+(?P<id>\w+))?\s*$"
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
# [notifier] keys of a pager that owns its connection: here errbot's connection and
# commands carry the chat, so each is refused rather than silently ignored.
REFUSED_KEYS = {
    "omemo": "is not used by the errbot pager: its chat messages go over errbot's "
             "connection, unencrypted (OMEMO-encrypted pages need slixmpp-push serve with "
             "[notifier.omemo]); remove it",
    "muc": "is not used by the errbot pager: pages go to people, never to a room (errbot "
           "joins rooms itself, CHATROOM_PRESENCE, and its commands work there); remove it",
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


def read_settings(configuration: Mapping[str, Any], base: Path) -> NotifierSettings:
    """The pager's configuration, checked by slixmpp-push's ``[notifier]`` reader, less
    the keys that have no use under errbot (:data:`REFUSED_KEYS`)."""
    for key, why in REFUSED_KEYS.items():
        if key in configuration:
            raise ConfigError(f"notifier.{key}", why)
    return read_notifier(dict(configuration), base)


class Activation(NamedTuple):
    """A started notifier, and whether this plugin registered it (so unregisters it)."""

    notifier: PushNotifier
    owned: bool


def errbot_client(bot: Any) -> ClientXMPP | None:
    """The slixmpp client of an XMPP backend (``bot.conn.client``), if any."""
    client = getattr(getattr(bot, "conn", None), "client", None)
    return client if isinstance(client, ClientXMPP) else None


def _log_failure(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("push_notifier: %s", future.exception())


def actor(frm: Any) -> str:
    """Who sent a command: a bare JID (a room occupant's real JID when the room shows it)."""
    if isinstance(frm, RoomOccupant):
        real = getattr(frm, "real_jid", None)
        return str(real) if real else str(frm)  # an anonymous nick matches no paged account
    return JID(frm.person).bare


class SlixmppPushPager(BotPlugin):
    """Paging commands on top of slixmpp-push's ``push_notifier``."""

    notifier: PushNotifier | None = None  # the started notifier, while active
    _loop: asyncio.AbstractEventLoop | None = None  # the loop the notifier runs on
    _thread: threading.Thread | None = None  # our own loop's thread, off XMPP
    _started: concurrent.futures.Future[Activation] | None = None  # activate()'s work
    _closing: concurrent.futures.Future[None] | None = None  # deactivate()'s work

    # -- configuration --------------------------------------------------------------------
    def get_configuration_template(self) -> Mapping[str, Any]:
        return CONFIG_EXAMPLE

    def check_configuration(self, configuration: Mapping[str, Any]) -> None:
        try:
            read_settings(configuration, self._base())
        except ConfigError as exc:
            raise ValidationException(str(exc)) from exc

    def configure(self, configuration: Mapping[str, Any] | None) -> None:
        """errbot's stored configuration; without one, ``SLIXMPP_PUSH_PAGER`` from config.py."""
        if configuration is None:
            configuration = self._config_py()
        super().configure(configuration)

    def _config_py(self) -> dict[str, Any] | None:
        value = getattr(self.bot_config, CONFIG_SETTING, None)
        if value is None:
            return None
        where = f"{CONFIG_SETTING} in errbot's config.py"
        if not isinstance(value, Mapping):
            raise ValidationException(f"{where}: must be a dict like the example "
                                      f"{self._bot.prefix}plugin config {self.name} shows")
        try:
            read_settings(value, self._base())
        except ConfigError as exc:
            raise ValidationException(f"{where}: {exc}") from exc
        return dict(value)

    def _base(self) -> Path:
        """Where relative paths (``secret_file``) start: config.py's folder."""
        config_file = getattr(self.bot_config, "__file__", None)
        return Path(config_file).resolve().parent if config_file else Path.cwd()

    # -- life cycle -----------------------------------------------------------------------
    def activate(self) -> None:
        config = read_settings(self.config or {}, self._base()).plugin_config()
        config["chat_commands"] = False  # errbot answers chat: see answer_page for 'ack ID'
        client = errbot_client(self._bot)
        if client is not None:
            config["store"] = TinyDBStore(Path(self.bot_config.BOT_DATA_DIR) / STORE_FILE)
            self._loop = client.loop
        else:
            log.warning("errbot's %r backend is not XMPP: pages are kept in memory and "
                        "reach nobody", self._bot.mode)
            config.update(store=MemoryStore(), chat=False)
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever,
                                            name="slixmpp-push", daemon=True)
            self._thread.start()
        previous, self._closing = self._closing, None
        self._started = asyncio.run_coroutine_threadsafe(
            self._start(client, config, previous), self._loop)
        self._started.add_done_callback(_log_failure)
        if self._thread is not None:  # our own loop: nothing can hold it, so wait
            try:
                self._started.result(timeout=CALL_TIMEOUT)
            except BaseException:
                self._started = None
                self._stop_own_loop()
                raise
        super().activate()

    async def _start(self, client: ClientXMPP | None, config: dict[str, Any],
                     previous: concurrent.futures.Future[None] | None) -> Activation:
        """On the loop: register push_notifier (on ``client`` or a private one), start it."""
        if previous is not None:  # the last deactivation must have unregistered it
            with contextlib.suppress(Exception):  # its failure is logged already
                await asyncio.wrap_future(previous)
        if client is None:
            client = ClientXMPP("pager@localhost", "", loop=self._loop)  # never connected
        plugins: Any = client.plugin
        owned = "push_notifier" not in plugins
        if owned:
            client.register_plugin("push_notifier", config)
        else:
            log.info("push_notifier is already registered: using it, and its configuration")
        notifier: PushNotifier = plugins["push_notifier"]
        try:
            await notifier.start()  # opens the store, resumes the pages a restart left open
        except BaseException:
            if owned:
                plugins.disable("push_notifier")
            raise
        self.notifier = notifier
        return Activation(notifier, owned)

    def deactivate(self) -> None:
        started, self._started = self._started, None
        self.notifier = None
        if started is not None and self._loop is not None:
            self._closing = self._hand_over(self._stop(started), self._loop)
        if self._thread is not None:
            self._stop_own_loop()
        super().deactivate()

    async def _stop(self, started: concurrent.futures.Future[Activation]) -> None:
        """On the loop: stop the notifier ``started`` made, and unregister it."""
        try:
            activation = await asyncio.wrap_future(started)
        except Exception:
            return  # it never started, and undid itself
        if self.notifier is activation.notifier:  # activate() finished after deactivate()
            self.notifier = None
        if activation.owned:
            await activation.notifier.stop()  # cancels escalation timers, closes the store
            plugins: Any = activation.notifier.xmpp.plugin
            plugins.disable("push_notifier")  # plugin_end drops its handlers

    @staticmethod
    def _hand_over(coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop,
                   ) -> concurrent.futures.Future[None] | None:
        """Run ``coro`` on ``loop`` without waiting for it, unless the loop has stopped."""
        if loop.is_running():
            future = asyncio.run_coroutine_threadsafe(coro, loop)
            future.add_done_callback(_log_failure)
            return future
        if loop.is_closed():
            coro.close()
        else:  # the backend stopped its loop before deactivating the plugins: run it here
            loop.run_until_complete(asyncio.wait_for(coro, CALL_TIMEOUT))
        return None

    def _stop_own_loop(self) -> None:
        loop, thread, closing = self._loop, self._thread, self._closing
        assert loop is not None and thread is not None
        if closing is not None:
            closing.result(timeout=CALL_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()
        self._loop = self._thread = self._closing = None

    # -- commands -------------------------------------------------------------------------
    @botcmd
    def page(self, msg: Message, args: str) -> str:
        """Page the on-call people until someone acks:
        !page <title> [--critical|--high|--normal|--low] [--key K] [--policy P] [-- body]
        """
        return self._wait(self._page(PageRequest.parse(args), actor(msg.frm)))

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
        return self._wait(self._oncall(args.strip() or None))

    @re_botcmd(pattern=PAGE_ANSWER, flags=re.IGNORECASE, prefixed=False, hidden=True)
    def answer_page(self, msg: Message, match: re.Match[str]) -> str | None:
        """A paged person's answer in the words the page asks for: 'ack ID', 'resolve ID'.

        errbot tries this only when no command matched, so with
        BOT_PREFIX_OPTIONAL_ON_CHAT the !ack command takes it instead.
        """
        if not msg.is_direct:  # 'ack' is a word people use in rooms
            return None
        return self._wait(self._act(match["verb"].lower(), match["id"] or "", actor(msg.frm)))

    # -- the commands' work, on the loop -------------------------------------------------
    async def _page(self, request: PageRequest, by: str) -> str:
        notifier = await self._pager()
        self._check_policy(notifier, request.policy)
        page, created = await notifier.page(
            request.key, request.title, request.body, request.priority, request.policy,
            source=f"errbot:{by}")
        if not created:
            return f"Page {page.id} is already open ({page.state.value}): {page.title}"
        paging = ", ".join(notifier.oncall(page.policy)) or "nobody"
        note = "" if self._thread is None else " Not delivered: errbot's backend is not XMPP."
        return (f"Opened page {page.id} [{page.priority.value}] {page.title}: paging {paging} "
                f"(policy {page.policy}).{note}")

    async def _act(self, verb: str, args: str, by: str) -> str:
        """Find the page, check that ``by`` may act on it, ack or resolve it."""
        notifier = await self._pager()
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

    async def _oncall(self, name: str | None) -> str:
        notifier = await self._pager()
        self._check_policy(notifier, name)
        name = name or notifier.config.get("default_policy") or next(iter(notifier.policies))
        return f"On call ({name}): {', '.join(notifier.oncall(name)) or 'nobody'}"

    # -- helpers --------------------------------------------------------------------------
    async def _pager(self) -> PushNotifier:
        """The notifier, once activate()'s work on the loop is done."""
        started = self._started
        if started is None:
            raise CommandError("The pager is not active.")
        try:
            activation = await asyncio.wrap_future(started)
        except Exception as exc:
            raise CommandError(f"The pager did not start: {exc}") from None
        return activation.notifier

    def _check_policy(self, notifier: PushNotifier, name: str | None) -> None:
        if not notifier.policies:
            prefix = self._bot.prefix
            raise CommandError(f"No escalation policy is configured. An admin sets one with "
                               f"{prefix}plugin config {self.name} {{...}} "
                               f"({prefix}plugin config {self.name} shows an example), "
                               f"or with {CONFIG_SETTING} in errbot's config.py.")
        if name is not None and name not in notifier.policies:
            raise CommandError(f"No policy named {name!r}. Policies: "
                               f"{', '.join(notifier.policies)}.")

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the notifier's loop from one of errbot's threads and wait for it."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise CommandError("The pager is not active.")
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is loop:  # blocking here would stop that loop
                coro.close()
                raise CommandError("The pager needs errbot's BOT_ASYNC = True (the default), "
                                   "or the SlixmppXMPP backend.")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout=CALL_TIMEOUT)
        except TimeoutError:
            raise CommandError(f"The pager did not answer within {CALL_TIMEOUT:.0f} s; "
                               "it carries on in the background.") from None
