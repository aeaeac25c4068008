"""plugins/errbot: !page, !ack, !resolve, !oncall through errbot's own test harness.

errbot's ``testbot`` fixture runs a whole bot on errbot's test backend (no XMPP):
the plugin then keeps its pages on a private, never connected slixmpp client.
Two tests give the test backend the shape of an XMPP backend (``bot.conn.client``,
its loop run by another thread): the plugin registers on that client instead, and
``!plugin config`` works while errbot holds that loop, as errbot's own XMPP backend
does during an admin command.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest
from slixmpp import ClientXMPP

if TYPE_CHECKING:
    from errbot.backends.test import TestBot

from errbot import ValidationException  # in the test extra: fail, never skip, without it

# errbot ships the fixture without a pytest entry point.
pytest_plugins = ["errbot.backends.test"]

extra_plugin_dir = str(Path(__file__).resolve().parent.parent / "plugins" / "errbot" / "pager")
loglevel = logging.WARNING  # read by the testbot fixture

ME = "gbin@localhost"  # the test backend's sender (BOT_ADMINS[0])
CONFIG = {
    "policies": {"oncall": {"steps": [{"targets": [ME, "bob@localhost"], "wait": 300},
                                      {"targets": ["group:managers"], "wait": 600}],
                            "repeat": 2, "final": ["group:managers"], "ack_timeout": 1800}},
    "groups": {"managers": ["lead@localhost"]},
    "default_policy": "oncall",
}
PAGE_ID = re.compile(r"page ([A-Z2-9]{4})")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The testbot fixture takes over the root logger; give it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def say(bot: TestBot, text: str) -> str:
    bot.push_message(text)
    reply: str = bot.pop_message()
    return reply


def configure(bot: TestBot, config: dict[str, Any]) -> str:
    return say(bot, f"!plugin config SlixmppPushPager {config!r}")


@pytest.fixture
def pager(testbot: TestBot) -> TestBot:
    assert "Plugin configuration done" in configure(testbot, CONFIG)
    return testbot


def open_page(bot: TestBot, args: str) -> str:
    reply = say(bot, f"!page {args}")
    match = PAGE_ID.search(reply)
    assert match, reply
    return match.group(1)


def test_page_ack_resolve(pager: TestBot) -> None:
    reply = say(pager, "!page Disk full on db1 -- /var at 99%")
    page_id = PAGE_ID.search(reply).group(1)  # type: ignore[union-attr]
    assert reply.startswith(f"Opened page {page_id} [high] Disk full on db1: paging "
                            f"{ME}, bob@localhost (policy oncall).")
    assert "Not delivered: errbot's backend is not XMPP." in reply

    assert say(pager, "!page Disk full on db1") == \
        f"Page {page_id} is already open (open): Disk full on db1"
    assert say(pager, f"!ack {page_id.lower()}") == \
        f"Acknowledged {page_id} for 30 min: escalation stopped."
    assert say(pager, "!page disk full  on DB1") == \
        f"Page {page_id} is already open (acked): disk full on DB1"  # the same key; new title
    assert say(pager, f"!resolve {page_id}") == f"Resolved {page_id}: disk full on DB1"
    assert say(pager, f"!ack {page_id}") == f"No open page {page_id}."

    notifier = pager.bot.plugin_manager.get_plugin_obj_by_name("SlixmppPushPager").notifier
    assert not notifier.engine.pages  # resolved pages leave the engine
    assert say(pager, "!page Disk full on db1").startswith("Opened page ")  # a new incident


def test_options_key_and_latest_page(pager: TestBot) -> None:
    page_id = open_page(pager, "API down --critical --key api -- 502 from every node")
    notifier = pager.bot.plugin_manager.get_plugin_obj_by_name("SlixmppPushPager").notifier
    page = notifier.engine.find(page_id)
    assert (page.title, page.body, page.priority.value, page.key, page.source) == (
        "API down", "502 from every node", "critical", "api", f"errbot:{ME}")
    assert say(pager, "!page API still down --key api") == \
        f"Page {page_id} is already open (open): API still down"  # the key dedups
    assert say(pager, "!ack") == f"Acknowledged {page_id} for 30 min: escalation stopped."
    assert say(pager, "!resolve") == f"Resolved {page_id}: API still down"
    assert say(pager, "!resolve") == "No open page of yours."


def test_answering_the_page_in_its_own_words(pager: TestBot) -> None:
    """The page's chat message says 'Reply "ack ID"': that works without errbot's prefix."""
    page_id = open_page(pager, "Queue stuck")
    assert say(pager, f"ack {page_id.lower()}") == \
        f"Acknowledged {page_id} for 30 min: escalation stopped."
    assert say(pager, "RESOLVE") == f"Resolved {page_id}: Queue stuck"
    assert say(pager, "resolve") == "No open page of yours."


def test_oncall(pager: TestBot) -> None:
    assert say(pager, "!oncall") == f"On call (oncall): {ME}, bob@localhost"
    assert say(pager, "!oncall nights") == "No policy named 'nights'. Policies: oncall."


def test_errors_are_answered(pager: TestBot) -> None:
    assert say(pager, "!ack ZZZZ") == "No open page ZZZZ."
    assert say(pager, "!page --critical").startswith("Usage: !page <title>")
    assert say(pager, "!page Oops --urgent").startswith("Unknown option --urgent.")
    assert say(pager, "!page Oops --key").startswith("--key needs a value.")
    assert say(pager, "!page Oops --policy nights") == \
        "No policy named 'nights'. Policies: oncall."

    page_id = open_page(pager, "Cert expires")
    pager.bot.sender = pager.bot.build_identifier("mallory@localhost")
    assert say(pager, f"!ack {page_id}") == f"You were not paged for {page_id}."
    assert say(pager, f"!resolve {page_id}") == f"You were not paged for {page_id}."


def test_without_a_policy(testbot: TestBot) -> None:
    for command in ("!page Disk full", "!oncall"):
        assert say(testbot, command).startswith(
            "No escalation policy is configured. An admin sets one with "
            "!plugin config SlixmppPushPager")


def test_bad_configuration_is_refused(testbot: TestBot) -> None:
    reply = configure(testbot, {"policies": {"oncall": {"steps": [{"targets": []}]}}})
    assert "notifier.policies.oncall.steps[0].targets: must be a non-empty list" in reply
    reply = configure(testbot, {**CONFIG, "default_policy": "nights"})
    assert "notifier.default_policy: names no policy ('nights')" in reply


@pytest.mark.parametrize(("key", "value", "why"), [
    ("omemo", {"btbv": True}, "its chat messages go over errbot's connection, unencrypted"),
    ("muc", {"room": "oncall@conference.localhost"}, "pages go to people, never to a room"),
])
def test_keys_errbot_has_no_use_for_are_refused(testbot: TestBot,
                                                monkeypatch: pytest.MonkeyPatch, key: str,
                                                value: dict[str, Any], why: str) -> None:
    """slixmpp-push's [notifier] reader takes them; the pager under errbot would ignore
    them, so it refuses them, from chat and from config.py alike."""
    reply = configure(testbot, {**CONFIG, key: value})
    assert reply.startswith(f"Incorrect plugin configuration: notifier.{key}: is not used by "
                            f"the errbot pager: {why}"), reply

    monkeypatch.setattr(testbot.bot.bot_config, "SLIXMPP_PUSH_PAGER", {**CONFIG, key: value},
                        raising=False)
    with pytest.raises(ValidationException) as refused:
        pager_plugin(testbot).configure(None)
    assert str(refused.value).startswith(f"SLIXMPP_PUSH_PAGER in errbot's config.py: "
                                         f"notifier.{key}: is not used by the errbot pager: "
                                         f"{why}")


def test_deactivation_unregisters_push_notifier(pager: TestBot) -> None:
    plugin = pager.bot.plugin_manager.get_plugin_obj_by_name("SlixmppPushPager")
    client = plugin.notifier.xmpp
    thread = plugin._thread
    assert "push_notifier" in client.plugin
    assert "deactivated" in say(pager, "!plugin deactivate SlixmppPushPager")
    assert "push_notifier" not in client.plugin
    assert not thread.is_alive()  # the private loop stopped with it


class XmppShape(NamedTuple):
    loop: asyncio.AbstractEventLoop
    client: ClientXMPP


@pytest.fixture
def xmpp_shape(testbot: TestBot) -> Iterator[XmppShape]:
    """The test backend with the shape of an XMPP backend: ``bot.conn.client``, its
    loop run by another thread (errbot's main thread, in errbot's XMPP backends)."""
    loop = asyncio.new_event_loop()
    errbot_thread = threading.Thread(target=loop.run_forever, daemon=True)
    errbot_thread.start()
    client = asyncio.run_coroutine_threadsafe(_client(loop), loop).result(5)
    testbot.bot.conn = SimpleNamespace(client=client)
    try:
        yield XmppShape(loop, client)
    finally:
        del testbot.bot.conn
        loop.call_soon_threadsafe(loop.stop)
        errbot_thread.join(5)
        loop.close()


def pager_plugin(bot: TestBot) -> Any:
    return bot.bot.plugin_manager.get_plugin_obj_by_name("SlixmppPushPager")


def test_registers_on_the_xmpp_backends_client(testbot: TestBot, xmpp_shape: XmppShape,
                                               ) -> None:
    client = xmpp_shape.client
    configure(testbot, CONFIG)  # re-activates the plugin: it finds the client now
    plugin = pager_plugin(testbot)
    plugin._started.result(5)  # activation runs on the client's loop, not waited for
    assert plugin.notifier is client.plugin["push_notifier"]  # type: ignore[typeddict-item]
    assert plugin._thread is None  # no loop of its own

    reply = say(testbot, "!page Disk full")
    assert reply.startswith("Opened page ") and "Not delivered" not in reply
    page_id = PAGE_ID.search(reply).group(1)  # type: ignore[union-attr]
    store = Path(testbot.bot_config.BOT_DATA_DIR) / "slixmpp-push-pages.json"
    assert store.with_name(store.name + ".journal").exists()  # kept in BOT_DATA_DIR
    assert say(testbot, f"!ack {page_id}").startswith(f"Acknowledged {page_id}")

    say(testbot, "!plugin deactivate SlixmppPushPager")
    plugin._closing.result(5)
    assert "push_notifier" not in client.plugin


def test_configure_while_errbot_holds_the_loop(testbot: TestBot, xmpp_shape: XmppShape,
                                               ) -> None:
    """errbot's own XMPP backend handles messages on slixmpp's loop and, for an admin
    command such as !plugin config, blocks that loop until the command is done. The
    plugin's deactivate() and activate() ran then: they waited for that loop, timed
    out after 30 s and left the pager inactive. Now they hand their work over."""
    configure(testbot, CONFIG)
    pager_plugin(testbot)._started.result(5)
    holding, release = threading.Event(), threading.Event()

    def errbot_waits_for_the_command() -> None:
        holding.set()
        release.wait(60)

    xmpp_shape.loop.call_soon_threadsafe(errbot_waits_for_the_command)
    assert holding.wait(5)
    try:
        reconfigured = {**CONFIG, "groups": {"managers": ["boss@localhost"]}}
        assert "Plugin configuration done" in configure(testbot, reconfigured)
        plugin = pager_plugin(testbot)
        assert plugin._started is not None and not plugin._started.done()  # queued
    finally:
        release.set()
    plugin._started.result(5)
    assert plugin.notifier is xmpp_shape.client.plugin["push_notifier"]  # type: ignore
    assert plugin.notifier.groups == {"managers": ["boss@localhost"]}
    assert say(testbot, "!oncall") == f"On call (oncall): {ME}, bob@localhost"


async def _client(loop: asyncio.AbstractEventLoop) -> ClientXMPP:
    client = ClientXMPP("err@localhost", "secret", loop=loop)
    client.register_plugin("xep_0030")
    return client
