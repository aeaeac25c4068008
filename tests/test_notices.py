"""Administrator notices: selection, the bounded fan-out, the ``send-notification``
ad-hoc command over a mock component stream, and ``slixmpp-push notify``."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from fakes.scripted import ScriptedProvider
from slixmpp import JID
from slixmpp.test import SlixTest
from stream_support import AppServerStreamTest

import slixmpp_push  # noqa: F401  (registers the plugin)
from slixmpp_push import (
    AppConfig,
    DeliveryResult,
    Dialect,
    MemoryStore,
    Notification,
    Outcome,
    Priority,
    Registration,
    Submitted,
    TinyDBStore,
)
from slixmpp_push.appserver.notices import (
    NoticeSummary,
    select_registrations,
    send_notice,
)
from slixmpp_push.cli import main
from slixmpp_push.notice_cli import ProgressBar

APP = AppConfig(id="tigase:messenger:apns:1", type="console", topic="org.example.chat",
                include_body=True)
ADMIN = "admin@localhost"


def registration(account: str, token: str, node: str | None = None,
                 channel: str | None = None, app: str = APP.id) -> Registration:
    return Registration(node=node or f"n-{token}", account=account,
                        domain=account.split("@")[1], app=app, token=token,
                        dialect=Dialect.TIGASE, channel=channel, created=time.time())


async def filled_store(*registrations: Registration) -> MemoryStore:
    store = MemoryStore()
    for r in registrations:
        await store.put(r)
    return store


# -- selection ------------------------------------------------------------------------
async def test_select_by_accounts_domain_and_everyone() -> None:
    store = await filled_store(
        registration("alice@a.example", "t1"), registration("alice@a.example", "t2"),
        registration("bob@a.example", "t3"), registration("carol@b.example", "t4"))
    tokens = lambda rs: sorted(r.token for r in rs)  # noqa: E731
    assert tokens(select_registrations(store, ["Alice@A.example/phone"])) == ["t1", "t2"]
    assert tokens(select_registrations(store, domains=["b.example"])) == ["t4"]
    assert tokens(select_registrations(store, ["alice@a.example"], ["b.example"])) == [
        "t1", "t2", "t4"]
    assert tokens(select_registrations(store, everyone=True)) == ["t1", "t2", "t3", "t4"]
    assert select_registrations(store, ["nobody@a.example"]) == []
    assert select_registrations(store) == []


async def test_select_reaches_each_device_once() -> None:
    """Two accounts on one phone, or Conversations' per-channel nodes: one push."""
    store = await filled_store(
        registration("alice@a.example", "same", node="chan", channel="room@muc.a.example"),
        registration("alice@a.example", "same", node="own"),
        registration("bob@a.example", "same", node="bobs"))
    (chosen,) = select_registrations(store, ["alice@a.example", "bob@a.example"])
    assert chosen.node == "own"


async def test_select_refuses_a_bad_jid() -> None:
    with pytest.raises(ValueError):
        select_registrations(MemoryStore(), ["@@nope"])


# -- the fan-out ----------------------------------------------------------------------
class CountingNotifier:
    def __init__(self, answers: dict[str, Submitted | Exception] | None = None) -> None:
        self.answers = answers or {}
        self.active = 0
        self.most = 0
        self.seen: list[tuple[str, Notification]] = []

    async def notify(self, registration: Registration, notification: Notification,
                     ) -> Submitted:
        self.active += 1
        self.most = max(self.most, self.active)
        self.seen.append((registration.token, notification))
        await asyncio.sleep(0.001)
        self.active -= 1
        answer = self.answers.get(registration.token, Submitted.DELIVERED)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_send_notice_is_bounded_and_counts_every_outcome() -> None:
    targets = [registration(f"u{i}@a.example", f"t{i}") for i in range(1000)]
    notifier = CountingNotifier({"t1": Submitted.QUEUED, "t2": Submitted.THROTTLED,
                                 "t3": Submitted.DEAD_TOKEN, "t4": Submitted.REJECTED,
                                 "t5": RuntimeError("queue full")})
    progress: list[tuple[int, int]] = []
    summary = await send_notice(notifier, targets, "Maintenance", "at 22:00",
                                Priority.NORMAL, lambda d, t: progress.append((d, t)),
                                concurrency=200)
    assert summary == NoticeSummary(total=1000, delivered=995, queued=2, failed=2,
                                    dead_tokens_removed=1)
    assert summary.line() == "delivered 995, queued 2, failed 2, dead tokens removed 1"
    assert notifier.most == 200
    assert sorted(t for t, _ in notifier.seen) == sorted(r.token for r in targets)
    notification = notifier.seen[0][1]
    assert (notification.title, notification.body, notification.priority) == (
        "Maintenance", "at 22:00", Priority.NORMAL)
    assert len(progress) == 1000 and progress[-1] == (1000, 1000)


async def test_send_notice_to_nobody() -> None:
    assert await send_notice(CountingNotifier(), [], "x") == NoticeSummary()


# -- the ad-hoc command ---------------------------------------------------------------
def command(fields: Mapping[str, str | list[str]], frm: str = f"{ADMIN}/desk",
            iq_id: str = "n1") -> str:
    body = "".join(
        f"<field var='{k}'>"
        + "".join(f"<value>{v}</value>" for v in ([vs] if isinstance(vs, str) else vs))
        + "</field>" for k, vs in fields.items())
    return (f"<iq type='set' from='{frm}' to='push.localhost' id='{iq_id}'>"
            "<command xmlns='http://jabber.org/protocol/commands' node='send-notification' "
            f"action='execute'><x xmlns='jabber:x:data' type='submit'>{body}</x>"
            "</command></iq>")


class TestSendNotificationCommand(AppServerStreamTest):
    unescape = True

    def setUp(self) -> None:
        self.scripted = ScriptedProvider(APP)
        self.start_appserver([APP], self.scripted, admins=["Admin@localhost"])
        for r in (registration("alice@localhost", "a1"), registration("alice@localhost", "a2"),
                  registration("bob@localhost", "b1"), registration("carol@other.example", "c1")):
            self.run_coro(self.store.put(r))

    def result(self, raw: str) -> dict[str, str]:
        self.assertIn('status="completed"', raw)
        return dict(re.findall(r"var=\"([^\"]+)\"[^>]*><value>([^<]*)</value>", raw))

    def sent_tokens(self) -> list[str]:
        return sorted(request.token for request in self.scripted.sent)

    def test_a_non_admin_is_refused_with_forbidden(self) -> None:
        self.recv(command({"accounts": "alice@localhost", "title": "Hi"},
                          frm="alice@localhost/phone"))
        raw = self.sent_raw()
        self.assertIn('type="error"', raw)
        self.assertIn("<forbidden", raw)
        self.assertIn('type="auth"', raw)
        self.assertIn("administrators", raw)
        # In the component stream's namespace (none spelled out), so Prosody reads it.
        self.assertNotIn("jabber:client", raw)
        self.assertEqual(self.scripted.sent, [])

    def test_a_non_admin_does_not_even_get_the_form(self) -> None:
        self.recv("<iq type='set' from='bob@localhost/x' to='push.localhost' id='f1'>"
                  "<command xmlns='http://jabber.org/protocol/commands' "
                  "node='send-notification' action='execute'/></iq>")
        self.assertIn("<forbidden", self.sent_raw())

    def test_an_admins_notice_reaches_every_device_of_the_accounts(self) -> None:
        self.recv(command({"accounts": ["alice@localhost", "bob@localhost"],
                           "title": "Maintenance", "body": ["Tonight", "22:00"],
                           "priority": "high"}))
        values = self.result(self.sent_raw())
        self.assertEqual(values, {"total": "3", "delivered": "3", "queued": "0",
                                  "failed": "0", "dead-tokens-removed": "0"})
        self.assertEqual(self.sent_tokens(), ["a1", "a2", "b1"])
        payload = self.scripted.sent[0].payload  # type: ignore[union-attr]
        self.assertEqual(payload["aps"]["alert"], {"title": "Maintenance",
                                                   "body": "Tonight\n22:00"})

    def test_domain_and_everyone(self) -> None:
        self.recv(command({"domain": "other.example", "title": "Hi"}))
        self.assertEqual(self.result(self.sent_raw())["total"], "1")
        self.assertEqual(self.sent_tokens(), ["c1"])
        self.recv(command({"everyone": "1", "title": "All"}, iq_id="n2"))
        self.assertEqual(self.result(self.sent_raw())["delivered"], "4")

    def test_a_dead_token_is_removed_and_counted(self) -> None:
        self.scripted.script = [DeliveryResult(Outcome.DEAD_TOKEN, 410, "Unregistered")]
        self.recv(command({"accounts": "bob@localhost", "title": "Hi"}))
        # Bob's server is told to stop publishing to the node, as after a publish.
        self.assertIn('affiliation="none"', self.sent_raw())
        raw = self.sent_raw()
        self.assertEqual(self.result(raw)["dead-tokens-removed"], "1")
        self.assertIsNone(self.store.get("n-b1"))
        self.assertIn("dead tokens removed 1", raw)  # the note a human client shows

    def test_missing_title_is_a_bad_request_naming_it(self) -> None:
        self.recv(command({"accounts": "alice@localhost", "body": "x"}))
        raw = self.sent_raw()
        self.assertIn("bad-request", raw)
        self.assertIn("'title'", raw)
        self.assertEqual(self.scripted.sent, [])

    def test_field_errors(self) -> None:
        cases = [({"title": "Hi"}, "'everyone'"),
                 ({"accounts": "alice@localhost", "title": "Hi", "priority": "urgent"},
                  "'priority'"),
                 ({"accounts": "@@bad", "title": "Hi"}, "'accounts'"),
                 ({"domain": "x@y", "title": "Hi"}, "'domain'")]
        for i, (fields, named) in enumerate(cases):
            self.recv(command(fields, iq_id=f"e{i}"))
            raw = self.sent_raw()
            self.assertIn("bad-request", raw)
            self.assertIn(named, raw)
        self.assertEqual(self.scripted.sent, [])

    def disco(self, query: str, frm: str, node: str, iq_id: str) -> str:
        self.recv(f"<iq type='get' from='{frm}' to='push.localhost' id='{iq_id}'>"
                  f"<query xmlns='http://jabber.org/protocol/disco#{query}' node='{node}'/>"
                  "</iq>")
        return self.sent_raw()

    def test_listed_only_to_admins(self) -> None:
        commands = "http://jabber.org/protocol/commands"
        listed = {}
        for who in (f"{ADMIN}/desk", "Admin@localhost/laptop", "alice@localhost/phone",
                    "localhost"):
            raw = self.disco("items", who, commands, f"i-{who}")
            self.assertIn('type="result"', raw)
            listed[who] = re.findall(r'<item [^>]*node="([^"]+)"', raw)
        others = ["register-device", "unregister-device", "register-push-fcm",
                  "register-push-apns", "unregister-push-fcm", "unregister-push-apns",
                  "v1-register-push", "v1-unregister-push", "test-push"]
        for who in (f"{ADMIN}/desk", "Admin@localhost/laptop"):  # bare JIDs compared
            self.assertEqual(sorted(listed[who]), sorted([*others, "send-notification"]))
        for who in ("alice@localhost/phone", "localhost"):
            self.assertEqual(sorted(listed[who]), sorted(others))
        # The names come along unchanged.
        raw = self.disco("items", "alice@localhost/phone", commands, "i-names")
        self.assertIn('name="Send me a test notification"', raw)
        # disco#info of the command's own node: only for admins.
        raw = self.disco("info", f"{ADMIN}/desk", "send-notification", "n-admin")
        self.assertIn('type="command-node"', raw)
        raw = self.disco("info", "alice@localhost/phone", "send-notification", "n-alice")
        self.assertIn('type="error"', raw)
        self.assertIn("<item-not-found", raw)
        self.assertNotIn("jabber:client", raw)
        # Another command's node is answered to everyone.
        raw = self.disco("info", "alice@localhost/phone", "test-push", "n-test")
        self.assertIn('type="command-node"', raw)
        # The static data were not changed by filtering them.
        items = self.xmpp["xep_0030"].static.get_node(self.xmpp.boundjid.full, commands)
        self.assertIn("send-notification", str(items["items"]))

    def test_the_form_then_its_submission(self) -> None:
        self.recv(f"<iq type='set' from='{ADMIN}/desk' to='push.localhost' id='f1'>"
                  "<command xmlns='http://jabber.org/protocol/commands' "
                  "node='send-notification' action='execute'/></iq>")
        raw = self.sent_raw()
        self.assertIn('status="executing"', raw)
        for var, kind in (("accounts", "jid-multi"), ("domain", "text-single"),
                          ("everyone", "boolean"), ("priority", "list-single")):
            self.assertRegex(raw, f'var="{var}"[^>]*type="{kind}"|type="{kind}"[^>]*var="{var}"')
        session = re.search(r'sessionid="([^"]+)"', raw)
        assert session is not None
        self.recv(f"<iq type='set' from='{ADMIN}/desk' to='push.localhost' id='f2'>"
                  "<command xmlns='http://jabber.org/protocol/commands' "
                  f"node='send-notification' sessionid='{session.group(1)}' "
                  "action='complete'><x xmlns='jabber:x:data' type='submit'>"
                  "<field var='accounts'><value>bob@localhost</value></field>"
                  "<field var='title'><value>Hi</value></field></x></command></iq>")
        self.assertEqual(self.result(self.sent_raw())["delivered"], "1")
        self.assertEqual(self.sent_tokens(), ["b1"])


class TestNoticeCommandLifeCycle(SlixTest):
    def start(self, admins: list[str]) -> None:
        self.stream_start(mode="component", jid="push.localhost", server="localhost",
                          plugins=["xep_0030", "xep_0004", "xep_0050"])
        self.xmpp.register_plugin("push_appserver", {"apps": [APP], "store": MemoryStore(),
                                                      "admins": admins})
        self.wait_()  # xep_0050 adds commands from a task

    def nodes(self) -> set[str]:
        return {node for _, node in self.xmpp["xep_0050"].commands}

    def test_not_offered_without_admins(self) -> None:
        self.start([])
        self.assertNotIn("send-notification", self.nodes())

    def test_offered_with_admins_and_withdrawn_by_plugin_end(self) -> None:
        self.start([ADMIN])
        self.assertIn("send-notification", self.nodes())
        handlers = self.xmpp["xep_0030"].api.api._handlers["xep_0030"]
        jid = JID(self.xmpp.boundjid.full)
        self.assertIsNotNone(handlers["get_items"]["node"].get(
            (jid, "http://jabber.org/protocol/commands")))
        plugins: Any = self.xmpp.plugin
        plugins.disable("push_appserver")
        self.assertEqual(self.xmpp["xep_0050"].commands, {})
        items = self.xmpp["xep_0030"].static.get_node(
            self.xmpp.boundjid.full, "http://jabber.org/protocol/commands")
        self.assertNotIn("send-notification", str(items))
        self.assertNotIn("test-push", str(items))
        # The per-asker disco handlers are gone: xep_0030's static ones answer again.
        for op, node in (("get_items", "http://jabber.org/protocol/commands"),
                         ("get_info", "send-notification")):
            self.assertIsNone(handlers[op]["node"].get((jid, node)))


# -- slixmpp-push notify --------------------------------------------------------------
@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    (tmp_path / "component.secret").write_text("s3cret\n")
    path = tmp_path / "push.toml"
    path.write_text(f"""
[xmpp]
jid = "push.localhost"
secret_file = "component.secret"

[appserver]
store = "store.json"

[apps."{APP.id}"]
type = "console"
topic = "org.example.chat"
include_body = true
""")

    async def fill() -> None:
        store = TinyDBStore(tmp_path / "store.json")
        await store.open()
        for r in (registration("alice@localhost", "a1"), registration("alice@localhost", "a2"),
                  registration("bob@localhost", "b1"),
                  registration("carol@other.example", "c1")):
            await store.put(r)
        await store.close()

    asyncio.run(fill())
    return path


def stored_nodes(config: Path) -> list[str]:
    async def read() -> list[str]:
        store = TinyDBStore(config.parent / "store.json", read_only=True)
        await store.open()
        return sorted(r.node for r in store.registrations())

    return asyncio.run(read())


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> ScriptedProvider:
    provider = ScriptedProvider(APP)
    monkeypatch.setattr("slixmpp_push.notice_cli.create_provider", lambda app: provider)
    return provider


def test_cli_notify_accounts_with_the_console_provider(
        config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["notify", "-c", str(config_file), "--account", "alice@localhost",
                 "--account", "bob@localhost", "--title", "Maintenance", "--body", "22:00"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.count("[push tigase:messenger:apns:1 as APNs]") == 3
    assert '"alert": {"body": "22:00", "title": "Maintenance"}' in out
    assert out.splitlines()[-1] == "delivered 3, queued 0, failed 0, dead tokens removed 0"
    assert "sending 'Maintenance' to 3 device(s)" in err
    assert "100% (3/3)" in err  # not a terminal: a line per 10%


def test_cli_dead_tokens_are_removed_and_failures_exit_1(
        config_file: Path, scripted: ScriptedProvider,
        capsys: pytest.CaptureFixture[str]) -> None:
    scripted.script = [DeliveryResult(Outcome.DEAD_TOKEN, 410, "Unregistered"),
                       DeliveryResult(Outcome.REJECTED, 400, "BadTopic")]
    code = main(["notify", "-c", str(config_file), "--domain", "localhost", "--title", "Hi"])
    out, _ = capsys.readouterr()
    assert code == 1
    assert out.splitlines()[-1] == "delivered 1, queued 0, failed 1, dead tokens removed 1"
    assert len(scripted.sent) == 3
    assert len(stored_nodes(config_file)) == 3


def test_cli_names_devices_of_an_app_no_longer_configured(
        config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def add_orphan() -> None:
        store = TinyDBStore(config_file.parent / "store.json")
        await store.open()
        await store.put(registration("alice@localhost", "a9", app="gone:app"))
        await store.close()

    asyncio.run(add_orphan())
    code = main(["notify", "-c", str(config_file), "--account", "alice@localhost",
                 "--title", "Maintenance"])
    out, err = capsys.readouterr()
    assert code == 1
    assert ("1 device(s) of app(s) no longer in the config (gone:app): not sent, counted as "
            "failed") in err
    assert out.splitlines()[-1] == "delivered 2, queued 0, failed 1, dead tokens removed 0"


def test_cli_transient_trouble_stays_pending_for_the_server(
        config_file: Path, scripted: ScriptedProvider,
        capsys: pytest.CaptureFixture[str]) -> None:
    scripted.always = DeliveryResult(Outcome.RETRY, 503, "ServiceUnavailable")
    code = main(["notify", "-c", str(config_file), "--account", "carol@other.example",
                 "--title", "Hi"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.strip() == "delivered 0, queued 1, failed 0, dead tokens removed 0"
    assert "pending" in err

    async def pending() -> list[str]:
        store = TinyDBStore(config_file.parent / "store.json", read_only=True)
        await store.open()
        return list(store.table("pending"))

    assert asyncio.run(pending()) == ["n-c1"]


def test_cli_everyone_needs_yes_without_a_terminal(
        config_file: Path, scripted: ScriptedProvider,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["notify", "-c", str(config_file), "--everyone", "--title", "Hi"]) == 2
    assert "confirm with --yes" in capsys.readouterr().err
    assert scripted.sent == []
    assert main(["notify", "-c", str(config_file), "--everyone", "--title", "Hi",
                 "--yes"]) == 0
    assert len(scripted.sent) == 4


@pytest.mark.parametrize("argv, message", [
    (["--title", "Hi"], "choose --account, --domain or --everyone"),
    (["--account", "@@bad", "--title", "Hi"], "--account"),
    (["--account", "a@b", "--title", " "], "--title"),
])
def test_cli_usage_errors_exit_2(config_file: Path, argv: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["notify", "-c", str(config_file), *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_config_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["notify", "-c", str(tmp_path / "none.toml"), "--everyone", "--title",
                 "x"]) == 2
    assert "configuration error" in capsys.readouterr().err


def test_cli_no_match_is_not_a_failure(config_file: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["notify", "-c", str(config_file), "--account", "zed@localhost",
                 "--title", "Hi"]) == 0
    out, err = capsys.readouterr()
    assert "no registered device matches" in err
    assert out.strip() == "delivered 0, queued 0, failed 0, dead tokens removed 0"


def test_cli_points_to_the_command_while_the_server_runs(
        config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def run() -> int:
        server_store = TinyDBStore(config_file.parent / "store.json")
        await server_store.open()  # the running server holds the lock
        try:
            return await asyncio.to_thread(main, [
                "notify", "-c", str(config_file), "--account", "bob@localhost",
                "--title", "Hi"])
        finally:
            await server_store.close()

    assert asyncio.run(run()) == 1
    err = capsys.readouterr().err
    assert "in use" in err and "send-notification" in err


def test_progress_bar_on_a_terminal_redraws_in_place() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, tty=True)
    for done in range(1, 401):
        bar(done, 400)
    text = stream.getvalue()
    assert text.count("\r") == 101  # once per percent (0 to 100), not per device
    assert text.endswith("\r[" + "#" * 30 + "] 100% 400/400\n")


def test_progress_bar_without_a_terminal_prints_every_tenth() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, tty=False)
    for done in range(1, 1001):
        bar(done, 1000)
    lines = stream.getvalue().splitlines()
    assert lines == [f"{p}% ({p * 10}/1000)" for p in range(10, 101, 10)]
