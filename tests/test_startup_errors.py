"""Start-up failures are one line naming the key, and ``check-config`` finds them first.

Each misconfiguration goes through the real command: ``check-config`` in-process
(``cli.main``), ``serve`` as a subprocess (its own event loop, logging and exit
status). What must hold: exit status 2 for the configuration (1 for an
unreadable store), exactly one line on stderr naming the key, never a
traceback. Then the misconfigurations ``serve`` can only find by connecting, a
wrong component secret, the client port instead of the component port, a
wrong component name, against real Prosody and ejabberd: the first login
refused so is one line with the likely fix (the doctor's diagnosis) and exit
status 2; once a session has been up, the same refusal is logged and retried
with a growing delay, and ``/health`` names the cause, as is a port where no
server answers.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fakes.xmpp_server import FakeComponentServer
from servers import Connections, disconnect, make_account
from test_fault_stream import free_port, health, serving, until

from slixmpp_push.cli import main
from slixmpp_push.config import load_config
from slixmpp_push.devserver import DevServer, ProsodyServer
from slixmpp_push.errors import ConfigError, LoginRefused
from slixmpp_push.metrics import Metrics
from slixmpp_push.server import serve
from slixmpp_push.status_http import StatusServer
from slixmpp_push.store import TinyDBStore

CONFIG = """\
[xmpp]
jid = "{jid}"
port = {port}
secret_file = "secret"

[appserver]
store = "{store}"

[apps.console]
type = "console"
{extra}
"""
NOTIFIER = """
[notifier.policies.oncall]
steps = [{ targets = ["alice@localhost"], wait = 60 }]
"""


def write_config(folder: Path, extra: str = "", *, jid: str = "push.localhost",
                 port: int = 1, store: str = "store.json", secret: str = "s3cret") -> Path:
    (folder / "secret").write_text(secret)
    path = folder / "push.toml"
    path.write_text(CONFIG.format(jid=jid, port=port, store=store, extra=extra))
    return path


def check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["check-config", str(path)])
    out, err = capsys.readouterr()
    return status, out, err


def run_cli(*args: str, code: str = "", timeout: float = 60,
            prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """``slixmpp-push ARGS`` in a fresh interpreter (``code`` runs first), started
    through ``prefix`` (a command such as ``setpriv …``) if given."""
    script = f"import sys\n{code}\nfrom slixmpp_push.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([*prefix, sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=timeout)


def one_line(stderr: str) -> str:
    """The only line on stderr that is not a log record of the start-up."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines()
             if line.strip() and not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO ", line)]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def p8_key(folder: Path) -> Path:
    path = folder / "AuthKey_ABC123DEFG.p8"
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return path


# -- caught by both check-config and serve --------------------------------------------------
@pytest.mark.parametrize(("jid", "problem"), [
    ("push@@example.org", "xmpp.jid: is not a valid JID (second @ found"),
    ("push example.org", "xmpp.jid: is not a valid JID (domain"),
    ("bot@example.org", "xmpp.jid: a component's JID is a domain name"),
])
def test_a_malformed_jid_is_refused_by_check_config_and_serve(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], jid: str, problem: str) -> None:
    config = write_config(tmp_path, jid=jid)
    status, out, err = check_config(config, capsys)
    assert (status, out) == (2, "")
    assert one_line(err).startswith(f"slixmpp-push: configuration error: {problem}"), err
    served = run_cli("serve", "--config", str(config))
    assert served.returncode == 2
    assert problem in one_line(served.stderr)


def test_a_client_mode_jid_must_name_an_account(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "password").write_text("pw")
    config = tmp_path / "push.toml"
    config.write_text('[xmpp]\nmode = "client"\njid = "example.org"\npassword_file = "password"\n'
                      '[apps.console]\ntype = "console"\n')
    status, _, err = check_config(config, capsys)
    assert status == 2
    assert "xmpp.jid: in client mode it is an account such as bot@example.org" in one_line(err)


@pytest.mark.parametrize("section", ["metrics", "ingest"])
def test_a_busy_listen_port_is_one_line_naming_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], busy_port: int,
        section: str) -> None:
    (tmp_path / "ingest.token").write_text("t0ken")
    extra = (f'[metrics]\nlisten = "127.0.0.1:{busy_port}"\n' if section == "metrics" else
             f'{NOTIFIER}[ingest]\nlisten = "127.0.0.1:{busy_port}"\ntoken_file = "ingest.token"\n')
    config = write_config(tmp_path, extra)
    expected = (f"slixmpp-push: configuration error: {section}.listen: port {busy_port} on "
                "127.0.0.1 is already in use by another program")
    status, _, err = check_config(config, capsys)
    assert status == 2 and one_line(err) == expected
    served = run_cli("serve", "--config", str(config))
    assert served.returncode == 2 and one_line(served.stderr) == expected


async def test_a_start_up_failure_stops_what_had_started(tmp_path: Path,
                                                         busy_port: int) -> None:
    config = load_config(write_config(tmp_path, f'[metrics]\nlisten = "127.0.0.1:{busy_port}"\n'))
    with pytest.raises(ConfigError, match=r"^metrics\.listen: port"):
        await serve(config)
    store = TinyDBStore(config.store)  # the lock serve took is free again
    await store.open()
    await store.close()
    # Refused at the first login: the providers, the store and /health were up by then.
    async with FakeComponentServer("push.localhost", "the-servers-secret") as server:
        config = load_config(write_config(
            tmp_path, f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n', port=server.port))
        with pytest.raises(LoginRefused, match="the server refused the component handshake"):
            await serve(config)
    store = TinyDBStore(config.store)  # the lock serve took is free again
    await store.open()
    await store.close()


async def test_a_port_held_by_the_running_service_is_a_note(tmp_path: Path) -> None:
    """``check-config`` runs beside the service (docs/deploy.md): its own port is fine."""
    status_server = StatusServer(Metrics(), "127.0.0.1", 0)
    await status_server.start()
    try:
        config = write_config(tmp_path, f'[metrics]\nlisten = "127.0.0.1:{status_server.port}"\n')
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "slixmpp_push.cli", "check-config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await status_server.stop()
    assert process.returncode == 0, err.decode()
    assert (f"note: metrics.listen: 127.0.0.1:{status_server.port} is in use by a running "
            "slixmpp-push") in out.decode()


# -- caught by check-config before serve would stumble on them -------------------------------
def test_an_unparsable_ca_file_is_found_by_check_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = p8_key(tmp_path)
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    config = write_config(tmp_path, f"""
[apps.ios]
type = "apns"
topic = "org.example.chat"
key_file = "{key.name}"
key_id = "ABC123DEFG"
team_id = "DEF123GHIJ"
endpoint = "127.0.0.1:1"
ca_file = "ca.pem"
""")
    status, _, err = check_config(config, capsys)
    assert status == 2
    assert one_line(err).startswith(
        "slixmpp-push: configuration error: apps.ios.ca_file: holds no PEM CA certificate")


def test_a_certificate_without_its_key_is_found_by_check_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "cert-only.pem"))  # no private key in it
    config = write_config(tmp_path, """
[apps.ios]
type = "apns"
topic = "org.example.chat"
cert_file = "cert-only.pem"
""")
    status, _, err = check_config(config, capsys)
    assert status == 2
    assert one_line(err).startswith("slixmpp-push: configuration error: apps.ios.cert_file: "
                                    "must hold the certificate and its private key (PEM)")


@pytest.mark.parametrize(("key", "value"), [("key_id", "ABC123"), ("team_id", "team 12345")])
def test_apple_ids_must_have_apples_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          key: str, value: str) -> None:
    ids = {"key_id": "ABC123DEFG", "team_id": "DEF123GHIJ", key: value}
    config = write_config(tmp_path, f"""
[apps.ios]
type = "apns"
topic = "org.example.chat"
key_file = "{p8_key(tmp_path).name}"
key_id = "{ids['key_id']}"
team_id = "{ids['team_id']}"
""")
    status, _, err = check_config(config, capsys)
    assert status == 2
    assert one_line(err) == (f"slixmpp-push: configuration error: apps.ios.{key}: must be "
                             f"Apple's 10-character ID (capital letters and digits), not "
                             f"{value!r}")


def test_a_store_folder_that_cannot_be_made_is_found_by_check_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("a file where the store's folder should be")
    config = write_config(tmp_path, store="afile/store.json")
    status, _, err = check_config(config, capsys)
    assert status == 2
    assert one_line(err) == (f"slixmpp-push: configuration error: appserver.store: "
                             f"{str(tmp_path / 'afile')!r} is not a folder")


@pytest.mark.parametrize(("module", "extra", "expected"), [
    ("firebase_admin", """
[apps.android]
type = "fcm"
service_account_file = "secret"
""", "slixmpp-push: FCM app 'android' needs the 'firebase-admin' package: "
     "pip install 'slixmpp-push[fcm]'"),
    ("aiohttp", NOTIFIER + '[ingest]\nlisten = "127.0.0.1:1"\n',
     "slixmpp-push: the alert receiver ([ingest]) needs the 'aiohttp' package: "
     "pip install 'slixmpp-push[notifier]'"),
], ids=["fcm", "ingest"])
def test_a_missing_extra_is_named_by_check_config(tmp_path: Path, module: str, extra: str,
                                                  expected: str) -> None:
    config = write_config(tmp_path, extra)
    # The interpreter runs as if the package were not installed.
    checked = run_cli("check-config", str(config), code=f"sys.modules[{module!r}] = None")
    assert checked.returncode == 2
    assert one_line(checked.stderr) == expected


def test_a_missing_omemo_extra_is_named_by_check_config(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("pw")
    config = tmp_path / "push.toml"
    config.write_text('[xmpp]\nmode = "client"\njid = "pager@localhost"\n'
                      'password_file = "password"\n[apps.console]\ntype = "console"\n'
                      f"{NOTIFIER}[notifier.omemo]\n")
    checked = run_cli("check-config", str(config), code="sys.modules['slixmpp_omemo'] = None")
    assert checked.returncode == 2
    assert one_line(checked.stderr) == ("slixmpp-push: [notifier.omemo] needs the "
                                        "'slixmpp-omemo' package: pip install "
                                        "'slixmpp-push[omemo]'")


# -- store files of the wrong shape: the one-line store error, never a traceback -------------
@pytest.mark.parametrize(("file", "content", "problem"), [
    ("store.json", '{"_meta": []}', "is not a readable store: table '_meta' is not an object"),
    ("store.json", '{"_meta": {"1": {"schema": 1}}, "registrations": []}',
     "is not a readable store: table 'registrations' is not an object"),
    ("store.json", "[]", "is not a readable store: top level is not an object"),
    ("store.json.journal", '5\n"a"\n', "store.json.journal: line 1 is corrupt"),
    ("store.json.journal", '[[1], "k", {}]\n[]\n', "store.json.journal: line 1 is corrupt"),
], ids=["meta-list", "table-list", "top-list", "journal-number", "journal-table-list"])
def test_a_store_of_the_wrong_shape_is_one_store_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], file: str, content: str,
        problem: str) -> None:
    (tmp_path / file).write_text(content)
    config = write_config(tmp_path)
    status, _, err = check_config(config, capsys)
    assert status == 1
    line = one_line(err)
    assert line.startswith("slixmpp-push: store error: ") and problem in line, line
    served = run_cli("serve", "--config", str(config))
    assert served.returncode == 1 and one_line(served.stderr) == line


def test_a_good_config_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The checks above refuse what is wrong, and only that."""
    config = write_config(tmp_path, f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
                                    f'[apps.ios]\ntype = "apns"\ntopic = "org.example.chat"\n'
                                    f'key_file = "{p8_key(tmp_path).name}"\n'
                                    'key_id = "ABC123DEFG"\nteam_id = "DEF123GHIJ"\n')
    status, out, err = check_config(config, capsys)
    assert (status, err) == (0, "")
    assert out.startswith(f"{config}: OK — component push.localhost")


# -- refused by the server: one line with the fix, each time, with backoff -------------------
@pytest.fixture(params=["prosody_server", "ejabberd_server"])
def real_server(request: pytest.FixtureRequest) -> DevServer:
    server: DevServer = request.getfixturevalue(request.param)
    return server


@pytest.mark.parametrize("mistake", ["wrong secret", "client port", "wrong name", "virtual host"])
def test_a_refused_first_login_is_one_line_and_exit_2(
        real_server: DevServer, tmp_path: Path, mistake: str) -> None:
    """No retry changes these: serve stops with the fix, and systemd does not restart it."""
    spec = real_server.component
    jid, port, secret = spec.jid, real_server.component_port, spec.secret
    prosody = isinstance(real_server, ProsodyServer)
    if mistake == "wrong secret":
        secret = "not-the-secret"
        expected = ("the server refused the component handshake: not-authorized",
                    "Fix: [xmpp] secret_file/secret_env must hold the same secret as the server")
    elif mistake == "client port":
        port = real_server.c2s_port
        expected = (f"127.0.0.1:{port} is the client (c2s) port, not the component port",
                    "Fix: set [xmpp] port to the server's component listener")
    elif mistake == "wrong name":
        jid = "nopush.localhost"
        expected = (("the server has no component nopush.localhost: host-unknown",
                     "Fix: [xmpp] jid must be a component of the server") if prosody else
                    # ejabberd answers an unknown name as it does a wrong secret
                    ("the server refused the component handshake: not-authorized",
                     "nopush.localhost is not in that listener's hosts"))
    else:
        jid = "localhost"
        expected = (("the server has no component localhost: host-unknown",
                     "Fix: [xmpp] jid must be a component of the server") if prosody else
                    ("localhost is a virtual host of the server, not a component: conflict",
                     "Fix: give the app server its own name"))
    config = write_config(tmp_path, f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n',
                          jid=jid, port=port, secret=secret)
    served = run_cli("serve", "--config", str(config))
    line = one_line(served.stderr)
    assert served.returncode == 2, served.stderr
    assert line.startswith(f"slixmpp-push: cannot log in to 127.0.0.1:{port} as {jid}: "), line
    assert all(part in line for part in expected), line


async def test_a_component_already_connected_is_waited_for(
        prosody_server: ProsodyServer, xmpp: Connections, tmp_path: Path) -> None:
    """Refused too, but not for good: another process holds the name (or the server still
    holds our previous stream). serve retries, and connects once the name is free.
    (ejabberd lets several connections share a component name: nothing to wait for.)"""
    spec = prosody_server.component
    holder = await xmpp.component(prosody_server)
    config = write_config(tmp_path, jid=spec.jid, port=prosody_server.component_port,
                          secret=spec.secret)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "slixmpp_push.cli", "serve", "--config", str(config),
        stderr=asyncio.subprocess.PIPE)
    assert process.stderr is not None
    lines: list[str] = []

    async def until_line(part: str) -> str:
        while True:
            raw = await asyncio.wait_for(process.stderr.readline(), 30)  # type: ignore[union-attr]
            assert raw, "serve exited: " + "\n".join(lines)
            lines.append(raw.decode().rstrip("\n"))
            if part in lines[-1]:
                return lines[-1]

    try:
        refused = await until_line("cannot log in")
        await disconnect(holder)
        await until_line(f"connected to 127.0.0.1:{prosody_server.component_port} as {spec.jid}")
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)
    assert "Traceback" not in "\n".join(lines)
    assert "already connected" in refused and refused.endswith("(retrying in 1 s)"), refused


async def test_a_client_account_on_a_server_without_tls_is_refused_at_once(
        prosody_server: ProsodyServer, tmp_path: Path) -> None:
    """Client mode: slixmpp refuses to send the password unencrypted; no retry helps."""
    bot = await make_account(prosody_server, "pushbot")
    (tmp_path / "password").write_text(bot.password)
    host, port = prosody_server.c2s_address
    config = tmp_path / "push.toml"
    config.write_text(f'[xmpp]\nmode = "client"\njid = "{bot.jid}"\nhost = "{host}"\n'
                      f'port = {port}\npassword_file = "password"\n'
                      '[appserver]\nstore = "store.json"\n[apps.console]\ntype = "console"\n')
    served = await asyncio.to_thread(run_cli, "serve", "--config", str(config))
    assert served.returncode == 2, served.stderr
    assert one_line(served.stderr).startswith(
        f"slixmpp-push: cannot log in to {host}:{port} as {bot.jid}: {host}:{port} offers no "
        "STARTTLS, and slixmpp sends no password over an unencrypted stream"), served.stderr
    assert bot.password not in served.stderr


async def test_a_refusal_after_a_session_is_retried(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Once a session has been up, the server's configuration may be changing under us
    (a secret rotated on one side first): each refusal is one line, retried with
    backoff, and the stream comes back when the secret matches again."""
    async with FakeComponentServer("push.localhost", "s3cret") as server:
        async with serving(tmp_path, server.port, secret="s3cret") as metrics_port:
            first = await server.wait_session()
            server.secret = "rotated-on-the-server-first"
            first.abort("server restart")
            refused = await until(lambda: [r.getMessage() for r in caplog.records
                                           if "cannot log in" in r.getMessage()],
                                  "a refused attempt", timeout=30)
            status, details = await health(metrics_port)
            server.secret = "s3cret"
            await server.wait_session(after=first.index, timeout=30)  # the retry
    assert refused[0].startswith(f"cannot log in to 127.0.0.1:{server.port} as push.localhost: "
                                 "the server refused the component handshake: not-authorized. "
                                 "Fix: [xmpp] secret_file/secret_env"), refused
    # 1 s after the session ended, then the delay doubles.
    assert refused[0].endswith("(retrying in 2 s)"), refused
    assert status == 503 and "not-authorized" in details["xmpp"]["problem"]


@pytest.mark.parametrize("port_kind", ["nothing listens", "never answers"])
async def test_a_port_that_is_not_the_server_is_named(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, port_kind: str) -> None:
    """Refused, or connected and silent (a TLS-only port, a firewall's tarpit): the login
    attempt is given up, said in one line, and retried."""
    silent: asyncio.Server | None = None
    held: list[asyncio.StreamWriter] = []
    if port_kind == "never answers":
        async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # keep the connection open, say nothing

        silent = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = int(silent.sockets[0].getsockname()[1])
        expected = (f"connected to 127.0.0.1:{port}, but no answer within 0.5 s. Fix: is "
                    f"127.0.0.1:{port} an XMPP port?")
    else:
        port = free_port()
        expected = (f"connection refused by 127.0.0.1:{port}. Fix: nothing listens there: "
                    "check [xmpp] host and port")
    try:
        async with serving(tmp_path, port, ping_timeout=0.5) as metrics_port:
            refused = await until(lambda: [r.getMessage() for r in caplog.records
                                           if "cannot log in" in r.getMessage()][1:] or None,
                                  "two refused attempts", timeout=30)
            status, details = await health(metrics_port)
    finally:
        for writer in held:
            writer.close()
        if silent is not None:
            silent.close()
            await silent.wait_closed()
    assert refused[0].startswith(f"cannot log in to 127.0.0.1:{port} as push.localhost: "
                                 f"{expected}"), refused
    assert refused[0].endswith("(retrying in 2 s)"), refused
    assert status == 503 and expected in details["xmpp"]["problem"]
