"""plugins/errbot end to end: a real errbot 6.2.1 process on the ``SlixmppXMPP`` backend.

errbot (``.venv/bin/errbot -c config.py`` in a temporary folder) logs in to a
real Prosody over plain TCP; people talk to it from their own XMPP clients. The
pager pages phones registered with our app server (a component of that Prosody,
delivering to the fake APNs) as an XEP-0357 publisher: ``remote:`` targets.
The pager's configuration comes from ``SLIXMPP_PUSH_PAGER`` in config.py. The
app server trusts the bot as a publisher, so a page's push is the page (its title,
priority and collapse id), once per page even when the phone's own server pushes too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import pprint
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from e2e import apns_app, enable, execute, running_appserver
from fakes.fake_apns import FakeApns
from fakes.tls import TestCA
from notifier_support import pushes_for
from servers import Account, Connections, disconnect, make_account
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout

from slixmpp_push import Submitted
from slixmpp_push.devserver import ProsodyServer

ERRBOT = Path(sys.executable).with_name("errbot")  # the venv's, next to its python
PLUGINS = Path(__file__).resolve().parent.parent / "plugins" / "errbot"
RESOURCE = "errbot"
WAIT = 3.0  # seconds each escalation step waits for an ack
START_TIMEOUT = 60.0  # errbot's start-up: ~1.5 s here, slower on a busy machine


class Errbot:
    """errbot in a child process, and the account it is logged in as."""

    def __init__(self, account: Account, folder: Path, process: subprocess.Popen[bytes]) -> None:
        self.account = account
        self.folder = folder
        self.process = process

    @property
    def jid(self) -> str:
        return f"{self.account.jid}/{RESOURCE}"

    def log(self) -> str:
        """What errbot wrote: its log (to stderr) and anything else."""
        return (self.folder / "output.txt").read_text(errors="replace")

    async def online(self, watcher: ClientXMPP) -> float:
        """Wait until the bot answers an XMPP ping (its session started); the seconds since
        its process started. Plugins activate next, before errbot handles any message."""
        began = time.monotonic()
        deadline = began + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"errbot exited with {self.process.returncode}")
            try:
                await watcher.plugin["xep_0199"].ping(self.jid, timeout=2)
                return time.monotonic() - began
            except (IqError, IqTimeout):  # service-unavailable while it is not there
                if time.monotonic() > deadline:
                    raise AssertionError(f"errbot not online after {START_TIMEOUT} s") from None
                await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running_errbot(folder: Path, server: ProsodyServer, account: Account,
                         admins: list[str], pager: dict[str, Any]) -> AsyncIterator[Errbot]:
    """errbot with this config.py, stopped by its PID at the end (its log is printed:
    pytest shows it when the test failed)."""
    host, port = server.c2s_address
    (folder / "data").mkdir(parents=True)
    settings = {
        "BACKEND": "SlixmppXMPP",
        "BOT_EXTRA_BACKEND_DIR": str(PLUGINS / "backends"),
        "BOT_EXTRA_PLUGIN_DIR": str(PLUGINS / "pager"),
        "BOT_DATA_DIR": str(folder / "data"),
        "BOT_LOG_LEVEL": "INFO",
        "BOT_ADMINS": tuple(admins),
        "BOT_IDENTITY": {"username": f"{account.jid}/{RESOURCE}", "password": account.password,
                         "server": (host, port), "tls": "none"},  # the test server has no TLS
        "SLIXMPP_PUSH_PAGER": pager,
    }
    config = folder / "config.py"
    config.write_text("".join(f"{key} = {pprint.pformat(value)}\n"
                              for key, value in settings.items()))
    config.chmod(0o600)  # it holds a password
    with (folder / "output.txt").open("wb") as output:
        process = subprocess.Popen([str(ERRBOT), "-c", str(config)], cwd=folder,
                                   stdout=output, stderr=subprocess.STDOUT)
    bot = Errbot(account, folder, process)
    try:
        yield bot
    finally:
        process.send_signal(signal.SIGTERM)  # the backend stops gracefully on it
        try:
            await asyncio.to_thread(process.wait, 15)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 5)
        print(f"--- errbot's log (exit status {process.returncode}) ---\n{bot.log()}")


class Person:
    """Someone at an XMPP client, talking to the bot."""

    def __init__(self, client: ClientXMPP) -> None:
        self.client = client
        self.messages: asyncio.Queue[str] = asyncio.Queue()
        client.add_event_handler("message", lambda m: m["body"] and self.messages.put_nowait(
            str(m["body"])))

    async def next_message(self, timeout: float = 15.0) -> str:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def say(self, bot: Errbot, text: str) -> str:
        self.client.send_message(mto=bot.jid, mbody=text, mtype="chat")
        return await self.next_message()


async def person(xmpp: Connections, server: ProsodyServer, account: Account) -> Person:
    client = await xmpp.client(server, account, resource="chat", plugins=("xep_0030", "xep_0199"))
    client.send_presence()
    return Person(client)


async def phone_registration(xmpp: Connections, server: ProsodyServer, appserver_jid: str,
                             account: Account, token: str, folder: Path,
                             push_enabled: bool = False) -> dict[str, str]:
    """A phone registered with the app server (mod_push_appserver's v1 command): the pager's
    ``remotes`` entry for it, its secret in a file only the owner reads. With
    ``push_enabled``, the phone also enables push at its own server, then goes offline."""
    phone = await xmpp.client(server, account, resource="phone")
    answer = await execute(phone, appserver_jid, "v1-register-push",
                           {"type": "apns", "node": "phone", "token": token})
    secret = folder / f"{token[:8]}.secret"
    secret.write_text(answer["secret"][0])
    secret.chmod(0o600)
    if push_enabled:
        await enable(phone, appserver_jid, answer["node"][0], {"secret": answer["secret"][0]})
        await disconnect(phone)
    return {"jid": appserver_jid, "node": answer["node"][0], "secret_file": str(secret)}


def titles(pushes: list[Any]) -> list[str]:
    """What each push shows: the page's "[PAGE-ID] title"."""
    return [push.body["aps"]["alert"]["title"] for push in pushes]


def page_collapse_id(page_id: str) -> str:
    """The ``apns-collapse-id`` of every push of one page (payloads.py: its key, hashed)."""
    return hashlib.sha256(f"key\0page:{page_id}".encode()).hexdigest()[:32]


async def test_page_pushes_and_ack_stops_the_escalation(
        prosody_server: ProsodyServer, xmpp: Connections, fake_apns: FakeApns,
        test_ca: TestCA, apns_key: Path, tmp_path: Path) -> None:
    bot_account = await make_account(prosody_server, "errbot")
    ops_account = await make_account(prosody_server, "ops")
    alice_account = await make_account(prosody_server, "alice")
    bob_account = await make_account(prosody_server, "bob")
    alice_token, bob_token = "a1" * 32, "b2" * 32
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)
    app.include_body = True  # the pushes show the page's title: which page reached whom
    async with running_appserver(xmpp, prosody_server, [app], tmp_path / "appserver.json",
                                 trusted=[bot_account.jid]) as appserver:
        pager = {
            "policies": {"oncall": {
                "steps": [{"targets": [alice_account.jid, "remote:alice-phone"], "wait": WAIT},
                          {"targets": ["remote:bob-phone"], "wait": WAIT}],
                "repeat": 1, "ack_timeout": 1800}},
            "remotes": {
                "alice-phone": await phone_registration(xmpp, prosody_server, appserver.jid,
                                                        alice_account, alice_token, tmp_path),
                "bob-phone": await phone_registration(xmpp, prosody_server, appserver.jid,
                                                      bob_account, bob_token, tmp_path),
            },
        }
        ops = await person(xmpp, prosody_server, ops_account)
        alice = await person(xmpp, prosody_server, alice_account)
        async with running_errbot(tmp_path / "errbot", prosody_server, bot_account,
                                  [ops_account.jid], pager) as bot:
            print(f"errbot online {await bot.online(ops.client):.2f} s after its start")
            reply = await ops.say(bot, "!page Disk full on db1 --critical -- /var at 99%")
            page_id = reply.split()[2]
            assert reply == (f"Opened page {page_id} [critical] Disk full on db1: paging "
                             f"{alice_account.jid}, remote:alice-phone (policy oncall).")
            (push,) = await pushes_for(fake_apns, alice_token, 1)
            # The page as the pager inside the app server would push it; the body too,
            # as this app's operator opted in (include_body).
            assert push.body["aps"]["alert"] == {"title": f"[{page_id}] Disk full on db1",
                                                 "body": "/var at 99%"}
            assert push.body["aps"]["interruption-level"] == "critical"
            assert (push.body["title"], push.body["body"]) == (
                f"[{page_id}] Disk full on db1", "/var at 99%")
            assert push.body["sender"] == bot_account.jid
            assert push.headers["apns-priority"] == "10"  # urgent: shown at once
            assert push.headers["apns-collapse-id"] == page_collapse_id(page_id)
            assert (await alice.next_message()).startswith(
                f"PAGE {page_id} [CRITICAL] Disk full on db1\n/var at 99%")

            assert await alice.say(bot, "!ack") == \
                f"Acknowledged {page_id} for 30 min: escalation stopped."
            assert await ops.say(bot, "!page Disk full on db1") == \
                f"Page {page_id} is already open (acked): Disk full on db1"
            # The witness: a page opened after the ack, that nobody acks, escalates to
            # bob's phone after the wait. Had the first escalated, bob would have had
            # its push first (it is older, with the same wait).
            reply = await ops.say(bot, "!page API down")
            witness_id = reply.split()[2]
            assert (await alice.next_message()).startswith(f"PAGE {witness_id} ")
            await pushes_for(fake_apns, bob_token, 1, timeout=WAIT + 10)
            await asyncio.sleep(0.3)  # a late second push would show up here
            bob_pushes = [r for r in fake_apns.requests if r.token == bob_token]
            assert titles(bob_pushes) == [f"[{witness_id}] API down"]
            assert bob_pushes[0].body["aps"]["interruption-level"] == "time-sensitive"
            assert len([r for r in fake_apns.requests if r.token == alice_token]) == 2

            assert await alice.say(bot, f"!resolve {page_id}") == \
                f"Resolved {page_id}: Disk full on db1"
            assert await ops.say(bot, f"!resolve {witness_id}") == \
                f"You were not paged for {witness_id}."  # ops was not paged


async def test_each_page_is_one_notification_on_a_phone_its_server_pushes_to_as_well(
        prosody_server: ProsodyServer, xmpp: Connections, fake_apns: FakeApns,
        test_ca: TestCA, apns_key: Path, tmp_path: Path) -> None:
    """alice's phone is paged by the bot (``remote:``) and has push enabled at her own
    server, and she is offline: the page's chat message makes her server publish too.
    The phone shows the page once: its own push, critical, with the page's title and
    collapse id; the server's publish for the chat message is answered, not pushed."""
    bot_account = await make_account(prosody_server, "errbot")
    ops_account = await make_account(prosody_server, "ops")
    alice_account = await make_account(prosody_server, "alice")
    token = "c3" * 32
    app = apns_app(fake_apns.endpoint, test_ca, apns_key)  # include_body off: no body
    async with running_appserver(xmpp, prosody_server, [app], tmp_path / "appserver.json",
                                 trusted=[bot_account.jid]) as appserver:
        phone = await phone_registration(xmpp, prosody_server, appserver.jid, alice_account,
                                         token, tmp_path, push_enabled=True)
        pager = {"policies": {"oncall": {"steps": [
                     {"targets": [alice_account.jid, "remote:alice-phone"], "wait": 600}]}},
                 "remotes": {"alice-phone": phone}}
        ops = await person(xmpp, prosody_server, ops_account)
        async with running_errbot(tmp_path / "errbot", prosody_server, bot_account,
                                  [ops_account.jid], pager) as bot:
            await bot.online(ops.client)
            pages = []
            for command in ("!page Disk full on db1 --critical -- /var at 99%",
                            "!page API down"):
                seen = len(appserver.published)
                pages.append((await ops.say(bot, command)).split()[2])
                # Two publishes per page: the bot's, then alice's server's for the chat
                # message (stored offline), answered result but not pushed.
                page_publish, servers = (await appserver.wait_published(seen + 2))[seen:]
                assert (page_publish.publisher, page_publish.answer, page_publish.submitted) \
                    == (bot.jid, "result", Submitted.DELIVERED)
                assert (servers.publisher, servers.answer, servers.submitted) == \
                    (prosody_server.domain, "result", None)
            pushes = await pushes_for(fake_apns, token, 2)
            assert len(pushes) == 2  # one per page
            assert titles(pushes) == [f"[{pages[0]}] Disk full on db1", f"[{pages[1]}] API down"]
            assert [push.body["aps"]["interruption-level"] for push in pushes] == \
                ["critical", "time-sensitive"]
            assert [push.headers["apns-collapse-id"] for push in pushes] == \
                [page_collapse_id(page_id) for page_id in pages]
            assert "/var at 99%" not in json.dumps(pushes[0].body)
            exposition = appserver.plugin.metrics.exposition().decode()
            assert f'slixmpp_push_echoes_suppressed_total{{app="{app.id}"}} 2.0' in exposition


async def test_reconnects_after_the_server_drops_it(
        prosody_server: ProsodyServer, xmpp: Connections, tmp_path: Path) -> None:
    bot_account = await make_account(prosody_server, "errbot")
    ops_account = await make_account(prosody_server, "ops")
    alice_account = await make_account(prosody_server, "alice")
    pager = {"policies": {"oncall": {"steps": [{"targets": [alice_account.jid], "wait": 600}]}}}
    ops = await person(xmpp, prosody_server, ops_account)
    alice = await person(xmpp, prosody_server, alice_account)
    async with running_errbot(tmp_path / "errbot", prosody_server, bot_account,
                              [ops_account.jid], pager) as bot:
        await bot.online(ops.client)
        reply = await ops.say(bot, "!page Backups failing")
        page_id = reply.split()[2]
        assert reply.startswith(f"Opened page {page_id} ")
        assert (await alice.next_message()).startswith(f"PAGE {page_id} ")

        # Someone logs in as the bot, with its resource: Prosody closes the bot's
        # stream (conflict). The bot comes back a second later and, in turn, pushes
        # the intruder out.
        intruder = await xmpp.client(prosody_server, bot_account, resource=RESOURCE)
        await intruder.wait_until("disconnected", 30)
        assert "XMPP connection lost" in bot.log()

        assert await ops.say(bot, "!oncall") == f"On call (oncall): {alice_account.jid}"
        # The pager was re-activated with the page it had: alice answers the page's
        # chat message in its own words.
        assert await alice.say(bot, f"ack {page_id}") == \
            f"Acknowledged {page_id}: escalation stopped."


async def test_configuration_errors_name_the_key(
        prosody_server: ProsodyServer, xmpp: Connections, tmp_path: Path) -> None:
    bot_account = await make_account(prosody_server, "errbot")
    ops_account = await make_account(prosody_server, "ops")
    broken = {"policies": {"oncall": {"steps": [{"targets": [], "wait": 60}]}}}
    ops = await person(xmpp, prosody_server, ops_account)
    async with running_errbot(tmp_path / "errbot", prosody_server, bot_account,
                              [ops_account.jid], broken) as bot:
        await bot.online(ops.client)
        warning = await ops.next_message()  # errbot warns its admins at start
        assert ("SLIXMPP_PUSH_PAGER in errbot's config.py: notifier.policies.oncall.steps[0]"
                ".targets: must be a non-empty list of targets") in warning
        assert await ops.say(bot, "!oncall") == 'Command "oncall" not found.'  # not active

        assert await ops.say(bot, "!plugin config SlixmppPushPager {'policies': "
                                  "{'oncall': {'steps': [{'targets': ['x@localhost']}], "
                                  "'repaet': 2}}}") == \
            "Incorrect plugin configuration: notifier.policies.oncall.repaet: " \
            "is not a known key."
        assert await ops.say(bot, "!plugin config SlixmppPushPager {'policies': "
                                  "{'oncall': {'steps': [{'targets': ['x@localhost']}]}}}") \
            == "Plugin configuration done."
        assert await ops.say(bot, "!oncall") == "On call (oncall): x@localhost"


async def test_a_refused_login_names_the_settings(
        prosody_server: ProsodyServer, tmp_path: Path) -> None:
    bot_account = await make_account(prosody_server, "errbot")
    wrong = Account(bot_account.jid, "not-" + bot_account.password)
    async with running_errbot(tmp_path / "errbot", prosody_server, wrong, [], {}) as bot:
        line = (f"The server refused the login of {bot.jid}: check BOT_IDENTITY['username'] "
                f"and BOT_IDENTITY['password']")
        deadline = time.monotonic() + START_TIMEOUT
        while line not in bot.log():
            assert bot.process.poll() is None and time.monotonic() < deadline, bot.log()
            await asyncio.sleep(0.1)
        assert wrong.password not in bot.log()
