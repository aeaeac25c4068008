"""``slixmpp-push register | status | unregister`` against a real Prosody, with our
app server as its push.localhost component and the console provider: the way
an operator tests a deployment without a phone. The CLI runs as a separate
process (its real entry point); the app server runs in the test.

The login gives up only when every way in has failed, as slixmpp itself would:
checked against ejabberd 24.12 offering SCRAM over plain TCP (it refuses the first
mechanism, "Invalid channel binding", and accepts the next) and against a Prosody
with STARTTLS on its client port (the first attempt, direct TLS, fails there)."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from e2e import APNS_APP, MONAL_MODULE, TOPIC, running_appserver, send_chat
from servers import Account, Connections, logged, make_account, own_server

from slixmpp_push import AppConfig
from slixmpp_push.cli import main
from slixmpp_push.devserver import DevServer, ProsodyServer
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


@pytest.fixture(scope="module")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    """A CA and its certificate file (what a client is told to trust)."""
    ca = trustme.CA()
    ca_file = tmp_path_factory.mktemp("xmpp-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ca, ca_file


@pytest.fixture(scope="module")
def starttls_prosody(tls_ca: tuple[trustme.CA, Path],
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """Prosody offering STARTTLS on its client port, with a certificate for localhost."""
    folder = tmp_path_factory.mktemp("xmpp-cert")
    certificate = tls_ca[0].issue_cert("localhost")
    certificate.cert_chain_pems[0].write_to_path(str(folder / "localhost.crt"))
    certificate.private_key_pem.write_to_path(str(folder / "localhost.key"))
    (folder / "localhost.key").chmod(0o600)
    yield from own_server(ProsodyServer(extra_modules=("tls",), extra_config=(
        f'ssl = {{ certificate = "{folder / "localhost.crt"}"; '
        f'key = "{folder / "localhost.key"}" }}',)))


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


async def test_unregister_claims_only_what_the_app_server_did(
        prosody_server: ProsodyServer, xmpp: Connections, tmp_path: Path) -> None:
    """The app server had dropped the device already (a dead token, ``devices remove``):
    it answers item-not-found, which the line says, rather than an unregistration.
    A stateless registration has nothing at the app server to unregister."""
    alice = await make_account(prosody_server, "alice")
    bob = await make_account(prosody_server, "bob")
    app = AppConfig(id=APNS_APP, type="console", topic=TOPIC, monal_modules=(MONAL_MODULE,))
    common = [*account_args(prosody_server, alice, tmp_path / "registrar.json"),
              "--password-file", str(password_file(tmp_path, alice))]
    async with running_appserver(xmpp, prosody_server, [app], tmp_path / "s.json",
                                 providers={app.id: ConsoleProvider(app, io.StringIO())},
                                 ) as server:
        code, _, err = await cli("register", *common, "--provider", APNS_APP, "--token", TOKEN)
        assert code == 0, err
        monal_token = "bead0000" * 8
        code, _, err = await cli("register", *common, "--dialect", "stateless",
                                 "--push-module", MONAL_MODULE, "--token", monal_token)
        assert code == 0, err
        (registration,) = server.plugin.store.registrations()  # stateless: none kept
        assert await server.plugin.store.remove(registration.node) is not None

        code, out, err = await cli("unregister", *common)
        assert code == 0, err  # what was asked for holds: push is off, nothing is registered
        assert sorted(out.splitlines()) == [
            f"disabled push at localhost for {alice.jid}; push.localhost (stateless, "
            f"provider {MONAL_MODULE}) keeps no registration in this dialect, nothing to "
            f"unregister: node {monal_token}",
            f"disabled push at localhost; {alice.jid} was no longer registered with "
            f"push.localhost (tigase, provider {APNS_APP}), which answered item-not-found: "
            f"node {registration.node}",
        ]
        # Disabled at Prosody all the same: an offline message is published to neither node.
        await send_chat(xmpp, prosody_server, bob, alice, "after unregister")
        await asyncio.sleep(0.5)
        assert server.published == []
        code, out, err = await cli("status", *common)
        assert code == 0, err
        assert out.splitlines()[1] == (f"no registrations stored for {alice.jid} in "
                                       f"{tmp_path / 'registrar.json'}")


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


# -- every way in is tried before giving up ------------------------------------------------
def tls_args(server: DevServer, account: Account, tmp_path: Path) -> list[str]:
    """Account arguments for a server with TLS: --host/--port, no --plain."""
    host, port = server.c2s_address
    return ["--jid", account.jid, "--host", host, "--port", str(port),
            "--store", str(tmp_path / "registrar.json"),
            "--password-file", str(password_file(tmp_path, account))]


async def test_a_refused_scram_mechanism_is_not_the_end(scram_ejabberd: DevServer,
                                                        tmp_path: Path) -> None:
    alice = await make_account(scram_ejabberd, "alice")
    host, port = scram_ejabberd.c2s_address
    common = ["--jid", alice.jid, "--host", host, "--port", str(port), "--plain",
              "--store", str(tmp_path / "registrar.json")]
    code, out, err = await cli("status", *common, "--password-env", "PW",
                               env={"PW": alice.password})
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "localhost supports push (urn:xmpp:push:0)"
    # It logged in after a refusal, not at the first try: ejabberd refused SCRAM.
    await logged(scram_ejabberd, "Invalid channel binding")

    code, out, err = await cli("status", *common, "--password-env", "PW",
                               env={"PW": "not-the-password"})
    assert (code, out) == (1, "")
    # The final refusal, after every mechanism offered was tried.
    assert err == (f"slixmpp-push: cannot log in as {alice.jid}: authentication failed: "
                   "not-authorized (Invalid username or password) (tried SCRAM-SHA-1, "
                   "PLAIN)\n")


async def test_a_starttls_port_is_reached_after_direct_tls_fails(
        starttls_prosody: DevServer, tls_ca: tuple[trustme.CA, Path], tmp_path: Path) -> None:
    alice = await make_account(starttls_prosody, "alice")
    args = tls_args(starttls_prosody, alice, tmp_path)
    code, out, err = await cli("status", *args, env={"SSL_CERT_FILE": str(tls_ca[1])})
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "localhost supports push (urn:xmpp:push:0)"
    # Without trusting the server's CA: both attempts fail, and the line says how.
    code, out, err = await cli("status", *args, env={"SSL_CERT_FILE": os.devnull})
    host, port = starttls_prosody.c2s_address
    assert (code, out) == (1, "")
    assert err == (f"slixmpp-push: cannot log in as {alice.jid}: STARTTLS at {host}:{port} "
                   "failed: its TLS certificate is not trusted (unable to get local issuer "
                   "certificate) (before: direct TLS: not a TLS port (WRONG_VERSION_NUMBER))\n")


async def test_a_server_without_tls_gets_a_hint_about_plain(prosody_server: ProsodyServer,
                                                            tmp_path: Path) -> None:
    alice = await make_account(prosody_server, "alice")
    host, port = prosody_server.c2s_address
    code, out, err = await cli("register", *tls_args(prosody_server, alice, tmp_path),
                               "--provider", APNS_APP, "--token", TOKEN)
    assert (code, out) == (1, "")
    assert err == (f"slixmpp-push: cannot log in as {alice.jid}: {host}:{port} offers no TLS "
                   "(direct TLS: not a TLS port (WRONG_VERSION_NUMBER); no STARTTLS), and the "
                   "password is only sent encrypted (SASL mechanisms offered: PLAIN, "
                   "SCRAM-SHA-1); a local test server without TLS: add --plain\n")


async def test_nothing_listening_names_each_attempt(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free, and nothing listens on it
        (tmp_path / "pw").write_text("pw")
        code, out, err = await cli("status", "--jid", "alice@localhost", "--host", "127.0.0.1",
                                   "--port", str(port), "--password-file", str(tmp_path / "pw"),
                                   "--store", str(tmp_path / "registrar.json"))
    assert (code, out) == (1, "")
    assert err == (f"slixmpp-push: cannot log in as alice@localhost: cannot connect to "
                   f"127.0.0.1:{port} (direct TLS: connection refused; STARTTLS: connection "
                   "refused)\n")
