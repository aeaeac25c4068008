"""``slixmpp-push register | status | unregister`` against a real Prosody, with our
app server as its push.localhost component and the console provider: the way
an operator tests a deployment without a phone. The CLI runs as a separate
process (its real entry point); the app server runs in the test."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import pytest
from e2e import APNS_APP, TOPIC, running_appserver, send_chat
from servers import Account, Connections, make_account

from slixmpp_push import AppConfig
from slixmpp_push.cli import main
from slixmpp_push.devserver import ProsodyServer
from slixmpp_push.providers.console import ConsoleProvider

TOKEN = "c0ffee00" * 8


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "slixmpp_push.cli", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def account_args(server: ProsodyServer, account: Account, store: Path) -> list[str]:
    host, port = server.c2s_address
    return ["--jid", account.jid, "--host", host, "--port", str(port), "--plain",
            "--store", str(store)]


def password_file(tmp_path: Path, account: Account) -> Path:
    path = tmp_path / "password"
    path.write_text(account.password + "\n")
    path.chmod(0o600)
    return path


async def test_register_status_unregister(prosody_server: ProsodyServer, xmpp: Connections,
                                          tmp_path: Path) -> None:
    alice = await make_account(prosody_server, "alice")
    bob = await make_account(prosody_server, "bob")
    app = AppConfig(id=APNS_APP, type="console", topic=TOPIC)
    console = ConsoleProvider(app, stream=io.StringIO())
    common = account_args(prosody_server, alice, tmp_path / "registrar.json")
    secret = ["--password-file", str(password_file(tmp_path, alice))]
    async with running_appserver(xmpp, prosody_server, [app], tmp_path / "s.json",
                                 providers={app.id: console}) as server:
        # No --app-server: found by discovery, with the provider id as a feature.
        code, out, err = await cli("register", *common, *secret, "--dialect", "tigase",
                                   "--provider", APNS_APP, "--token", TOKEN)
        assert code == 0, err
        registered, enabled = out.splitlines()
        assert registered.startswith(f"registered {alice.jid} with push.localhost (tigase, "
                                     f"provider {APNS_APP}), found by discovery: node ")
        (registration,) = server.plugin.store.registrations()
        assert registration.account == alice.jid and registration.token == TOKEN
        assert enabled == (f"enabled push at localhost: it now notifies push.localhost on "
                           f"node {registration.node}")
        assert alice.password not in out + err

        code, out, err = await cli("status", *common, "--password-env", "ALICE_PW",
                                   env={"ALICE_PW": alice.password})
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == "localhost supports push (urn:xmpp:push:0)"
        assert lines[1].startswith(f"push.localhost (tigase, provider {APNS_APP}): node "
                                   f"{registration.node}, token c0ffee00…, last enabled 20")

        # The whole deployment works: an offline message becomes a (console) push.
        await send_chat(xmpp, prosody_server, bob, alice)
        (outcome,) = await server.wait_published(1)
        assert outcome.answer == "result"
        await asyncio.sleep(0.2)
        assert [request.token for request in console.sent] == [TOKEN]

        code, out, err = await cli("unregister", *common, *secret)
        assert code == 0, err
        assert out == (f"disabled push at localhost and unregistered {alice.jid} from "
                       f"push.localhost (tigase, provider {APNS_APP}): node "
                       f"{registration.node}\n")
        assert len(server.plugin.store) == 0
        await send_chat(xmpp, prosody_server, bob, alice, "after unregister")
        await asyncio.sleep(0.5)
        assert len(server.published) == 1 and len(console.sent) == 1

        code, out, err = await cli("status", *common, *secret)
        assert code == 0, err
        assert out.splitlines()[1] == (f"no registrations stored for {alice.jid} in "
                                       f"{tmp_path / 'registrar.json'}")
        code, _, err = await cli("unregister", *common, *secret)
        assert code == 1 and "no stored registration" in err


async def test_xmpp_errors_exit_1_with_condition(prosody_server: ProsodyServer,
                                                 xmpp: Connections, tmp_path: Path) -> None:
    alice = await make_account(prosody_server, "alice")
    app = AppConfig(id=APNS_APP, type="console", topic=TOPIC)
    common = account_args(prosody_server, alice, tmp_path / "registrar.json")
    async with running_appserver(xmpp, prosody_server, [app], tmp_path / "s.json",
                                 providers={app.id: ConsoleProvider(app, io.StringIO())}):
        unknown, wrong = await asyncio.gather(
            cli("register", *common, "--password-file", str(password_file(tmp_path, alice)),
                "--app-server", "push.localhost", "--provider", "no-such-app",
                "--token", TOKEN),
            cli("status", *common, "--password-env", "PW", env={"PW": "not-the-password"}))
    code, out, err = unknown
    assert (code, out) == (1, "")
    assert err.startswith("slixmpp-push: tigase registration at push.localhost failed: "
                          "item-not-found: ")
    assert "no-such-app" in err
    code, out, err = wrong
    assert (code, out) == (1, "")
    assert err.startswith(f"slixmpp-push: cannot log in as {alice.jid}: authentication failed")
    assert "not-the-password" not in err


def test_password_is_never_taken_from_argv(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--jid", "alice@localhost", "--token", TOKEN, "--provider", "p"]
    password_file = str(tmp_path / "pw")
    for argv in (["register", *base, "--password", "hunter2"],
                 ["register", *base, "--password-file", password_file, "--password=hunter2"],
                 ["status", "--jid", "alice@localhost", "--password", "hunter2"],
                 ["unregister", "--jid", "alice@localhost", "--password", "hunter2",
                  "--password-env", "PW"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert "a password on the command line is refused" in err, err
        assert "hunter2" not in err
    with pytest.raises(SystemExit):  # no password source at all: a usage error too
        main(["status", "--jid", "alice@localhost"])
    assert "one of the arguments --password-file --password-env is required" in (
        capsys.readouterr().err)


def test_configuration_mistakes_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    monkeypatch.delenv("NO_SUCH_PASSWORD_VARIABLE", raising=False)
    cases = {
        "--password-file": ["register", "--jid", "alice@localhost", "--token", "t",
                            "--provider", "p", "--password-file", str(tmp_path / "missing")],
        "is empty": ["status", "--jid", "alice@localhost", "--password-file", str(empty)],
        "$NO_SUCH_PASSWORD_VARIABLE": ["status", "--jid", "alice@localhost",
                                       "--password-env", "NO_SUCH_PASSWORD_VARIABLE"],
        "--jid": ["status", "--jid", "localhost", "--password-file", str(empty)],
        "--provider": ["register", "--jid", "alice@localhost", "--token", "t",
                       "--password-file", str(empty)],
        "--push-module": ["register", "--jid", "alice@localhost", "--token", "t",
                          "--dialect", "stateless", "--password-file", str(empty)],
    }
    for expected, argv in cases.items():
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("slixmpp-push: configuration error: ") and expected in err, err
    with pytest.raises(SystemExit) as exited:
        main(["register", "--jid", "alice@localhost", "--password-file", str(empty),
              "--token", "t", "--dialect", "klingon"])
    assert exited.value.code == 2
