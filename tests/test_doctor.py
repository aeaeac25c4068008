"""``slixmpp-push doctor``: every check against real servers, nothing mocked.

The XMPP check talks to the real Prosody of the ``prosody_server`` fixture; the
provider checks go through the real aioapns and firebase-admin clients to the
fakes (:mod:`fakes.fake_apns`, :mod:`fakes.fake_fcm`), which verify provider
JWTs and service-account assertions as Apple and Google do. The command runs
in-process (``cli.main`` in a worker thread, because it runs its own event loop
while the fakes serve in the test's), and once as a real subprocess.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FCM_PROJECT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fakes.fake_apns import FakeApns
from fakes.fake_fcm import FakeFcm
from fakes.tls import TestCA
from servers import logged, make_account

from slixmpp_push.cli import main
from slixmpp_push.config import AppConfig, XmppConfig
from slixmpp_push.devserver import DevServer, ProsodyServer
from slixmpp_push.doctor import (
    CheckResult,
    Status,
    check_clock,
    check_credentials,
    check_xmpp,
)
from slixmpp_push.models import Dialect, Registration
from slixmpp_push.providers.apns import ApnsProvider
from slixmpp_push.providers.base import ProbeResult, Provider
from slixmpp_push.providers.fcm import FcmProvider
from slixmpp_push.store import TinyDBStore

IOS = "tigase:messenger:apns:1"
ANDROID = "fcm-xmpp-api"
TOPIC = "org.example.chat"
KEY_ID = "ABC123DEFG"
TEAM_ID = "DEF123GHIJ"
SA_EMAIL = f"firebase-adminsdk@{FCM_PROJECT}.iam.gserviceaccount.com"
DEVICE_TOKEN = "a1b2c3d4" * 8  # a registered device's token: must never be printed


# -- fakes and files -------------------------------------------------------------


def p8_key(folder: Path, key_id: str = KEY_ID) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    path = folder / f"AuthKey_{key_id}.p8"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path, key


def service_account(folder: Path, fcm: FakeFcm) -> tuple[Path, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path = folder / "service-account.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": FCM_PROJECT,
        "private_key_id": "0123456789abcdef", "private_key": pem,
        "client_email": SA_EMAIL, "client_id": "1234567890", "token_uri": fcm.token_url,
    }))
    path.chmod(0o600)
    return path, key


@pytest.fixture
async def apns(test_ca: TestCA) -> AsyncIterator[FakeApns]:
    """Apple, knowing one bundle id; keys are registered by :func:`deployment`."""
    async with FakeApns(test_ca, verify_client=True) as fake:
        fake.topics = {TOPIC}
        yield fake


@pytest.fixture
def fcm(fake_fcm: FakeFcm) -> FakeFcm:
    fake_fcm.issued_tokens = set()  # Google issued none of the tokens we send
    return fake_fcm


class Deployment:
    """A config file next to its secret, key, service account and store."""

    def __init__(self, folder: Path, server: ProsodyServer) -> None:
        self.folder = folder
        self.server = server
        host, port = server.component_address
        self.xmpp: dict[str, Any] = {"mode": "component", "jid": server.component.jid,
                                     "host": host, "port": port,
                                     "secret_file": "component.secret"}
        self.secret = server.component.secret
        self.apps: dict[str, dict[str, Any]] = {}
        self.store = folder / "store" / "store.json"
        self.private_texts: list[str] = []  # what must never appear in the output

    def add_console(self) -> None:
        self.apps["console"] = {"type": "console"}

    def add_apns(self, fake: FakeApns, ca: TestCA, **settings: Any) -> None:
        key_file, key = p8_key(self.folder)
        fake.add_provider_key(KEY_ID, TEAM_ID, key.public_key())
        self.private_texts.append(key_file.read_text().splitlines()[1])
        self.apps[IOS] = {"type": "apns", "topic": TOPIC, "key_file": str(key_file),
                          "key_id": KEY_ID, "team_id": TEAM_ID, "endpoint": fake.endpoint,
                          "ca_file": str(ca.ca_file), **settings}

    def add_fcm(self, fake: FakeFcm, **settings: Any) -> None:
        path, key = service_account(self.folder, fake)
        fake.add_service_account(SA_EMAIL, key.public_key())
        self.private_texts.append(json.loads(path.read_text())["private_key"].splitlines()[1])
        self.apps[ANDROID] = {"type": "fcm", "service_account_file": str(path),
                              "endpoint": fake.base_url, "ca_file": str(fake.ca_file),
                              **settings}

    async def make_store(self, registrations: int = 1, app: str = IOS) -> None:
        store = TinyDBStore(self.store)
        await store.open()
        for i in range(registrations):
            await store.put(Registration(node=f"node{i}", account="alice@localhost",
                                         domain="localhost", app=app, token=DEVICE_TOKEN,
                                         dialect=Dialect.TIGASE, secret="s3cr3t-node-secret"))
        await store.close()
        self.private_texts += [DEVICE_TOKEN, "s3cr3t-node-secret"]

    def write(self) -> Path:
        (self.folder / "component.secret").write_text(self.secret + "\n")
        self.private_texts.append(self.secret)
        lines = ["[xmpp]", *(f"{k} = {json.dumps(v)}" for k, v in self.xmpp.items()),
                 "[appserver]", f"store = {json.dumps(str(self.store))}"]
        for app_id, settings in self.apps.items():
            lines.append(f"[apps.{json.dumps(app_id)}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        path = self.folder / "push.toml"
        path.write_text("\n".join(lines) + "\n")
        return path


@pytest.fixture
def deployment(tmp_path: Path, prosody_server: ProsodyServer) -> Deployment:
    return Deployment(tmp_path, prosody_server)


@pytest.fixture
async def full(deployment: Deployment, apns: FakeApns, fcm: FakeFcm, test_ca: TestCA
               ) -> Deployment:
    """The deployment with APNs, FCM and console apps, and a store with one registration."""
    deployment.add_apns(apns, test_ca)
    deployment.add_fcm(fcm)
    deployment.add_console()
    await deployment.make_store()
    return deployment


async def doctor(config: Path, capsys: pytest.CaptureFixture[str], *extra: str
                 ) -> tuple[int, dict[str, dict[str, str]], str]:
    """Run ``slixmpp-push doctor --json`` in-process: (exit status, checks by name, stdout)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["doctor", "--config", str(config), "--json",
                                          "--timeout", "5", *extra])
    out = capsys.readouterr().out
    report = json.loads(out)
    assert report["exit_status"] == code
    return code, {check["name"]: check for check in report["checks"]}, out


def assert_private(out: str, deployment: Deployment) -> None:
    for text in deployment.private_texts:
        assert text not in out


async def probed(provider: Provider, timeout: float = 5) -> ProbeResult:
    """The provider's probe, as the doctor makes it: started, probed, closed."""
    await provider.start()
    try:
        return await provider.probe(timeout)
    finally:
        await provider.close()


def fcm_app(folder: Path, fake: FakeFcm) -> AppConfig:
    """An FCM app whose service account (in ``folder``) gets its tokens from ``fake``."""
    path, _ = service_account(folder, fake)
    return AppConfig(id=ANDROID, type="fcm", service_account_file=str(path),
                     endpoint=fake.base_url, ca_file=str(fake.ca_file))


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- everything right ---------------------------------------------------------------


async def test_good_deployment_passes_every_check(
    full: Deployment, apns: FakeApns, fcm: FakeFcm, capsys: pytest.CaptureFixture[str],
) -> None:
    code, checks, out = await doctor(full.write(), capsys)

    assert code == 0, out
    assert list(checks) == ["config", "xmpp", f'credentials "{IOS}"', f'apns "{IOS}"',
                            f"credentials {ANDROID}", f"fcm {ANDROID}", "console console",
                            "store", "clock"]
    assert {c["status"] for c in checks.values()} == {"PASS"}, out
    assert "authenticated at" in checks["xmpp"]["detail"]
    assert "400 BadDeviceToken, as expected" in checks[f'apns "{IOS}"']["detail"]
    assert "400 INVALID_ARGUMENT, as expected" in checks[f"fcm {ANDROID}"]["detail"]
    assert "1 registration(s), 0 pending" in checks["store"]["detail"]
    assert_private(out, full)
    # Apple saw one background push, priority 5, to the all-zero token; FCM one dry run.
    [probe] = apns.requests
    assert probe.token == ApnsProvider.PROBE_TOKEN == "0" * 64
    assert probe.headers["apns-push-type"] == "background"
    assert probe.headers["apns-priority"] == "5"
    assert probe.headers["apns-expiration"] == "0"
    assert probe.headers["apns-topic"] == TOPIC
    [dry_run] = fcm.requests
    assert dry_run.validate_only
    assert dry_run.token == FcmProvider.PROBE_TOKEN
    assert fcm.delivered == []


async def test_text_report_and_a_store_in_use(
    deployment: Deployment, capsys: pytest.CaptureFixture[str],
) -> None:
    deployment.add_console()
    await deployment.make_store(app="console")
    config = deployment.write()
    running = TinyDBStore(deployment.store)  # what a running serve holds
    await running.open()
    try:
        capsys.readouterr()
        code = await asyncio.to_thread(main, ["doctor", "--config", str(config)])
        out = capsys.readouterr().out
    finally:
        await running.close()
    print(out)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith(f"PASS  config: {config}: component {deployment.xmpp['jid']}")
    assert any(line.startswith("PASS  console console: console app") for line in lines)
    assert "in use by a running serve (fine" in out
    assert "PASS  clock: no APNs or FCM app" in out
    assert lines[-1] == "slixmpp-push doctor: 5 passed, 0 warning(s), 0 failed"


# -- the XMPP server ---------------------------------------------------------------


async def xmpp_case(deployment: Deployment, capsys: pytest.CaptureFixture[str]
                    ) -> tuple[int, dict[str, str]]:
    deployment.add_console()
    await deployment.make_store(app="console")
    code, checks, out = await doctor(deployment.write(), capsys)
    assert_private(out, deployment)
    return code, checks["xmpp"]


async def test_wrong_component_secret(deployment: Deployment,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    deployment.secret = "not-the-secret"
    code, xmpp = await xmpp_case(deployment, capsys)
    assert code == 1
    assert xmpp["status"] == "FAIL"
    assert xmpp["detail"] == ("the server refused the component handshake: not-authorized "
                              "(Given token does not match calculated token)")
    assert "component_secret" in xmpp["fix"]


async def test_client_port_given_instead_of_component_port(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    host, port = deployment.server.c2s_address
    deployment.xmpp["port"] = port
    code, xmpp = await xmpp_case(deployment, capsys)
    assert code == 1
    assert xmpp["detail"] == (f"{host}:{port} is the client (c2s) port, not the component "
                              "port: the server answered with a jabber:client stream")
    assert "component_ports, default 5347" in xmpp["fix"]


async def test_unknown_component_name(deployment: Deployment,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    deployment.xmpp["jid"] = "nopush.localhost"
    code, xmpp = await xmpp_case(deployment, capsys)
    assert code == 1
    assert xmpp["detail"] == ("the server has no component nopush.localhost: host-unknown "
                              "(nopush.localhost does not match any configured external "
                              "components)")
    assert 'Component "nopush.localhost"' in xmpp["fix"]


async def test_closed_port(deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    deployment.xmpp["port"] = port = closed_port()
    code, xmpp = await xmpp_case(deployment, capsys)
    assert code == 1
    assert xmpp["detail"] == f"connection refused by 127.0.0.1:{port}"
    assert "nothing listens there" in xmpp["fix"]


async def test_silent_port_times_out(deployment: Deployment,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # never answers
    deployment.xmpp["port"] = port = server.sockets[0].getsockname()[1]
    deployment.add_console()
    try:
        code, checks, _ = await doctor(deployment.write(), capsys, "--timeout", "0.5")
    finally:
        server.close()
    assert code == 1
    assert checks["xmpp"]["detail"] == f"connected to 127.0.0.1:{port}, but no answer within 0.5 s"


async def test_a_port_that_does_not_speak_xmpp() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await check_xmpp(XmppConfig("component", "push.localhost", "127.0.0.1", port,
                                             "secret"), 5)
    finally:
        server.close()
    assert result.status is Status.FAIL
    assert result.detail.startswith(f"127.0.0.1:{port} does not speak XMPP: not XML")
    assert "component_ports" in result.fix


async def test_component_already_connected_is_fine(
    deployment: Deployment, capsys: pytest.CaptureFixture[str], xmpp: Any
) -> None:
    await xmpp.component(deployment.server)  # as a running serve would be
    code, check = await xmpp_case(deployment, capsys)
    assert code == 0
    assert check["status"] == "PASS"
    assert "secret accepted" in check["detail"]
    assert "already connected" in check["detail"]


async def test_client_mode(prosody_server: ProsodyServer) -> None:
    account = await make_account(prosody_server, "doctor")
    host, port = prosody_server.c2s_address

    def config(password: str, port: int = port) -> XmppConfig:
        return XmppConfig(mode="client", jid=f"{account.jid}/appserver", host=host, port=port,
                          secret=password)

    good = await check_xmpp(config(account.password), 5, allow_plaintext=True)
    assert good == CheckResult("xmpp", Status.PASS, f"logged in as {account.jid} at {host}:{port}")
    wrong = await check_xmpp(config("wrong password"), 5, allow_plaintext=True)
    assert wrong.status is Status.FAIL
    assert wrong.detail == f"the server refused the password of {account.jid}: not-authorized"
    assert "password_file" in wrong.fix
    component_port = prosody_server.component_address[1]
    mixed_up = await check_xmpp(config(account.password, component_port), 5)
    assert mixed_up.status is Status.FAIL
    assert mixed_up.detail.startswith(f"{host}:{component_port} is a component port, not the "
                                      "client port")
    # Without TLS slixmpp sends no password: that is what the doctor says.
    no_tls = await check_xmpp(config(account.password), 5)
    assert no_tls.status is Status.FAIL
    assert no_tls.detail == (f"{host}:{port} offers no STARTTLS, and slixmpp sends no password "
                             "over an unencrypted stream (SASL mechanisms offered: PLAIN, "
                             "SCRAM-SHA-1)")


async def test_client_mode_gets_past_a_refused_scram_mechanism(scram_ejabberd: DevServer) -> None:
    """ejabberd 24.12 over plain TCP refuses slixmpp's SCRAM ("Invalid channel binding")
    and accepts PLAIN next: the doctor waits for the last mechanism, as serve does."""
    account = await make_account(scram_ejabberd, "doctor")
    host, port = scram_ejabberd.c2s_address

    def config(password: str) -> XmppConfig:
        return XmppConfig(mode="client", jid=f"{account.jid}/appserver", host=host, port=port,
                          secret=password)

    good = await check_xmpp(config(account.password), 5, allow_plaintext=True)
    assert good == CheckResult("xmpp", Status.PASS, f"logged in as {account.jid} at {host}:{port}")
    await logged(scram_ejabberd, "Invalid channel binding")
    wrong = await check_xmpp(config("wrong password"), 5, allow_plaintext=True)
    assert wrong.detail == f"the server refused the password of {account.jid}: not-authorized"


# -- APNs ----------------------------------------------------------------------------


async def test_wrong_apns_key(
    full: Deployment, apns: FakeApns, capsys: pytest.CaptureFixture[str],
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    apns.add_provider_key(KEY_ID, TEAM_ID, other.public_key())  # Apple knows another key
    code, checks, out = await doctor(full.write(), capsys)
    check = checks[f'apns "{IOS}"']
    assert code == 1
    assert check["status"] == "FAIL"
    assert check["detail"] == (
        "Apple refused the provider token (key, key_id or team_id): 403 InvalidProviderToken "
        f"(topic {TOPIC}, key {KEY_ID} of team {TEAM_ID}, production)")
    assert "check key_id" in check["fix"] and "team_id" in check["fix"]
    assert checks[f'credentials "{IOS}"']["status"] == "PASS"  # the file itself is fine
    assert_private(out, full)


#: A wrong setting the credential file does not contradict: the provider refuses it.
#: (app, setting, wrong value, provider check, its detail's start, words of its fix,
#: the credentials check's status and detail).
WRONG_SETTINGS = [
    pytest.param(
        IOS, "team_id", "WRONG12345", f'apns "{IOS}"',
        "Apple refused the provider token (key, key_id or team_id): 403 InvalidProviderToken "
        f"(topic {TOPIC}, key {KEY_ID} of team WRONG12345,", "Membership > Team ID",
        ("PASS", f"key_file AuthKey_{KEY_ID}.p8: an EC P-256 (ES256) key, key_id {KEY_ID}, "
                 "team_id WRONG12345"), id="team_id"),
    pytest.param(
        IOS, "topic", "org.example.other", f'apns "{IOS}"',
        "Apple refused the topic: 400 TopicDisallowed (topic org.example.other,", "bundle id",
        ("PASS", f"key_file AuthKey_{KEY_ID}.p8: an EC P-256 (ES256) key, key_id {KEY_ID}, "
                 f"team_id {TEAM_ID}"), id="topic"),
    pytest.param(
        ANDROID, "project_id", "no-such-project", f"fcm {ANDROID}",
        "FCM does not know the project: 404 NOT_FOUND (project no-such-project): Requested "
        "entity was not found.", "Project settings > General",
        ("WARN", f"project_id is no-such-project, but the service account {SA_EMAIL} belongs "
                 f"to {FCM_PROJECT}"), id="fcm project_id"),
]


@pytest.mark.parametrize(
    ("app", "setting", "value", "check", "detail", "fix", "credentials"), WRONG_SETTINGS)
async def test_wrong_setting_refused_by_the_provider(
    full: Deployment, capsys: pytest.CaptureFixture[str], app: str, setting: str, value: str,
    check: str, detail: str, fix: str, credentials: tuple[str, str],
) -> None:
    full.apps[app][setting] = value
    code, checks, _ = await doctor(full.write(), capsys)
    assert code == 1
    assert checks[check]["status"] == "FAIL"
    assert checks[check]["detail"].startswith(detail)
    assert fix in checks[check]["fix"]
    credentials_check = checks["credentials " + check.partition(" ")[2]]
    assert (credentials_check["status"], credentials_check["detail"]) == credentials


async def test_key_file_named_for_another_key_id(
    full: Deployment, capsys: pytest.CaptureFixture[str],
) -> None:
    full.apps[IOS]["key_id"] = "ZZZ9876543"
    code, checks, _ = await doctor(full.write(), capsys)
    assert code == 1
    credentials = checks[f'credentials "{IOS}"']
    assert credentials["status"] == "WARN"
    assert credentials["detail"] == (f"key_file is named AuthKey_{KEY_ID}.p8, but key_id is "
                                     "ZZZ9876543")
    assert f'probably key_id = "{KEY_ID}"' in credentials["fix"]
    assert "403 InvalidProviderToken" in checks[f'apns "{IOS}"']["detail"]


async def test_expired_certificate(
    deployment: Deployment, apns: FakeApns, test_ca: TestCA,
    capsys: pytest.CaptureFixture[str],
) -> None:
    expired = datetime.datetime(2024, 3, 1, tzinfo=datetime.UTC)
    # Issued by the CA the fake trusts for client certificates (TestCA has no public
    # way to back-date one).
    cert = test_ca._ca.issue_cert("push@example.org", common_name="push@example.org",
                                  not_before=expired - datetime.timedelta(days=365),
                                  not_after=expired)
    cert_file = deployment.folder / "apns-cert.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    deployment.apps[IOS] = {"type": "apns", "topic": TOPIC, "cert_file": str(cert_file),
                            "endpoint": apns.endpoint, "ca_file": str(test_ca.ca_file)}
    await deployment.make_store()
    code, checks, _ = await doctor(deployment.write(), capsys)
    assert code == 1
    credentials = checks[f'credentials "{IOS}"']
    assert credentials == {
        "name": f'credentials "{IOS}"', "status": "FAIL",
        "detail": "cert_file apns-cert.pem expired on 2024-03-01 00:00 UTC",
        "fix": "renew the APNs certificate (developer.apple.com > Certificates) and export it "
               "with its key as one PEM; or switch to token auth (key_file), which does not "
               "expire"}
    probe = checks[f'apns "{IOS}"']
    assert probe["status"] == "FAIL"
    assert probe["detail"] == (f"{apns.endpoint} closed the connection without answering: the "
                               "client certificate was refused (expired, revoked or not issued "
                               "by Apple)")
    assert apns.requests == []  # the TLS handshake refused it


async def test_certificate_auth_and_expiry_warning(test_ca: TestCA, apns: FakeApns,
                                                   tmp_path: Path) -> None:
    cert_file = test_ca.issue_client_cert("push@example.org")
    app = AppConfig(id=IOS, type="apns", topic=TOPIC, cert_file=str(cert_file),
                    endpoint=apns.endpoint, ca_file=str(test_ca.ca_file))
    from cryptography import x509

    not_after = x509.load_pem_x509_certificate(cert_file.read_bytes()).not_valid_after_utc
    checked = check_credentials(app)
    assert checked is not None and checked.status is Status.PASS
    assert checked.detail.startswith(f"cert_file {cert_file.name}: certificate and key, valid "
                                     "until")
    soon = check_credentials(app, now=not_after - datetime.timedelta(days=10, hours=1))
    assert soon is not None and soon.status is Status.WARN
    assert soon.detail.startswith(f"cert_file {cert_file.name} expires in 10 day(s), on")

    probe = await probed(ApnsProvider(app))
    assert probe.status is Status.PASS, probe
    assert f"certificate {cert_file.name}" in probe.detail
    assert apns.requests[0].client_cert is not None


async def test_apns_answers_judged() -> None:
    """Apple's other answers to the probe, and transport failures, named."""
    from aioapns.common import NotificationResult

    app = AppConfig(id=IOS, type="apns", topic=TOPIC, key_file="AuthKey.p8", key_id=KEY_ID,
                    team_id=TEAM_ID, sandbox=True)
    provider = ApnsProvider(app)

    def judge(status: str, reason: str = "") -> Any:
        return provider.judge_probe(NotificationResult("id", status, reason), None)

    assert judge("410", "Unregistered").status is Status.PASS
    assert judge("200").status is Status.WARN
    expired = judge("403", "ExpiredProviderToken")
    assert expired.status is Status.FAIL and "clock" in expired.fix
    environment = judge("403", "BadCertificateEnvironment")
    assert environment.status is Status.FAIL and "environment" in environment.fix
    assert "sandbox" in judge("400", "DeviceTokenNotForTopic").detail
    assert judge("503", "ServiceUnavailable").detail.startswith("Apple is unavailable")


async def test_apns_unreachable_and_untrusted(tmp_path: Path, test_ca: TestCA) -> None:
    key_file, _ = p8_key(tmp_path)
    closed = closed_port()
    app = AppConfig(id=IOS, type="apns", topic=TOPIC, key_file=str(key_file), key_id=KEY_ID,
                    team_id=TEAM_ID, endpoint=f"127.0.0.1:{closed}", ca_file=str(test_ca.ca_file))
    refused = await probed(ApnsProvider(app), 2)
    assert refused.status is Status.FAIL
    assert refused.detail == f"connection refused by 127.0.0.1:{closed}"

    other_ca = TestCA(tmp_path / "other-ca")  # the server's certificate is not this CA's
    async with FakeApns(test_ca) as fake:
        app.endpoint, app.ca_file = fake.endpoint, str(other_ca.ca_file)
        untrusted = await probed(ApnsProvider(app), 2)
    assert untrusted.status is Status.FAIL
    assert untrusted.detail.startswith(f"TLS: the certificate of {fake.endpoint} is not trusted")
    assert "ca_file" in untrusted.fix

    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # no TLS handshake
    app.endpoint = f"127.0.0.1:{silent.sockets[0].getsockname()[1]}"
    try:
        hanging = await probed(ApnsProvider(app), 0.5)
    finally:
        silent.close()
    assert hanging.status is Status.FAIL
    assert hanging.detail == f"no TLS connection to {app.endpoint} within 0.5 s"


# -- FCM -----------------------------------------------------------------------------


async def test_fcm_service_account_refused_by_the_token_endpoint(
    full: Deployment, fcm: FakeFcm, capsys: pytest.CaptureFixture[str],
) -> None:
    revoked = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fcm.add_service_account(SA_EMAIL, revoked.public_key())  # Google has another key now
    code, checks, out = await doctor(full.write(), capsys)
    check = checks[f"fcm {ANDROID}"]
    assert code == 1
    assert check["status"] == "FAIL"
    assert check["detail"] == ("Google's token endpoint refused the service account: "
                               "invalid_grant: Invalid JWT Signature.")
    assert "Generate new private key" in check["fix"]
    assert fcm.requests == []  # no access token, no message
    assert_private(out, full)


@pytest.mark.parametrize(("code", "verdict", "words"), [
    ("UNREGISTERED", Status.PASS, "404 UNREGISTERED, as expected"),
    ("SENDER_ID_MISMATCH", Status.FAIL, "403 SENDER_ID_MISMATCH"),
    ("THIRD_PARTY_AUTH_ERROR", Status.FAIL, "APNs or web-push credentials"),
    ("UNAVAILABLE", Status.FAIL, "FCM is unavailable (503 UNAVAILABLE)"),
])
async def test_fcm_answers_judged(fake_fcm: FakeFcm, tmp_path: Path, code: str,
                                  verdict: Status, words: str) -> None:
    app = fcm_app(tmp_path, fake_fcm)
    fake_fcm.fail(FcmProvider.PROBE_TOKEN, code)
    probe = await probed(FcmProvider(app))
    assert probe.status is verdict
    assert words in probe.detail


async def test_fcm_access_token_refused(test_ca: TestCA, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(test_ca.ca_file))
    async with FakeFcm(ca=test_ca, access_token="ya29.the-right-one") as fake:
        fake.issued_token = "ya29.a-token-fcm-does-not-take"
        app = fcm_app(tmp_path, fake)
        probe = await probed(FcmProvider(app))
    assert probe.status is Status.FAIL
    assert probe.detail.startswith(f"FCM refused the access token: 401 UNAUTHENTICATED (project "
                                   f"{FCM_PROJECT}): Request is missing required authentication")
    assert "Generate new private key" in probe.fix


def test_fcm_permission_denied_judged() -> None:
    import httpx

    app = AppConfig(id=ANDROID, type="fcm", project_id="someone-elses")
    provider = FcmProvider(app)
    response = httpx.Response(403, json={"error": {
        "code": 403, "status": "PERMISSION_DENIED",
        "message": "Permission 'cloudmessaging.messages.create' denied on resource "
                   "'//cloudresourcemanager.googleapis.com/projects/someone-elses' (or it may "
                   "not exist)."}})

    class Refused(Exception):
        http_response = response

    probe = provider.judge_probe(Refused(), None)
    assert probe.status is Status.FAIL
    assert probe.detail.startswith("the service account may not send for the project: 403 "
                                   "PERMISSION_DENIED (project someone-elses): Permission")
    assert "Firebase Cloud Messaging API (V1)" in probe.fix


async def test_fcm_dry_run_accepted_is_suspicious(fake_fcm: FakeFcm, tmp_path: Path) -> None:
    app = fcm_app(tmp_path, fake_fcm)  # issued_tokens unset: any token "exists"
    probe = await probed(FcmProvider(app))
    assert probe.status is Status.WARN
    assert "accepted a message to a token that cannot exist" in probe.detail
    assert fake_fcm.delivered == []  # a dry run all the same


# -- the store -----------------------------------------------------------------------


async def test_unreadable_store(deployment: Deployment,
                                capsys: pytest.CaptureFixture[str]) -> None:
    deployment.add_console()
    deployment.store.parent.mkdir()
    deployment.store.write_text("{not json")
    deployment.store.chmod(0o600)
    code, checks, _ = await doctor(deployment.write(), capsys)
    store = checks["store"]
    assert code == 1
    assert store["status"] == "FAIL"
    assert store["detail"].startswith(f"cannot open: {deployment.store} is not a readable store")
    assert store["fix"] == "restore the store from a backup (docs/deploy.md#backups)"


async def test_store_warnings(deployment: Deployment,
                              capsys: pytest.CaptureFixture[str]) -> None:
    deployment.add_console()
    code, checks, _ = await doctor(deployment.write(), capsys)
    assert code == 0  # warnings only
    assert checks["store"]["status"] == "WARN"
    assert checks["store"]["detail"] == (f"no store at {deployment.store} yet: serve has never "
                                         "run with this config")

    await deployment.make_store(2)  # registrations of IOS, which is not configured
    code, checks, _ = await doctor(deployment.write(), capsys)
    assert checks["store"]["detail"] == (f"{deployment.store}: 2 registration(s), 0 pending; "
                                         f"registrations of apps not in the config: {IOS} (2)")
    deployment.store.chmod(0o644)
    code, checks, _ = await doctor(deployment.write(), capsys)
    assert "store.json has mode 0644: others may read device tokens" in checks["store"]["detail"]
    assert checks["store"]["fix"].startswith(f"chmod 600 {deployment.store}")


# -- the clock -----------------------------------------------------------------------


async def test_clock_skew(
    full: Deployment, apns: FakeApns, fcm: FakeFcm, capsys: pytest.CaptureFixture[str],
) -> None:
    config = full.write()
    apns.clock_offset = 600.0  # Apple's clock is 10 minutes ahead of ours
    code, checks, _ = await doctor(config, capsys)
    assert code == 1
    clock = checks["clock"]
    assert clock["status"] == "FAIL"
    assert clock["detail"] in {f"this machine's clock is {s} s behind apns \"{IOS}\"'s "
                               "(its Date header)" for s in (599, 600, 601)}
    assert "timedatectl set-ntp true" in clock["fix"]
    assert checks[f'apns "{IOS}"']["status"] == "PASS"  # a JWT 10 minutes old is still fine

    apns.clock_offset = 0.0
    fcm.clock_offset = -120.0  # Google's clock 2 minutes behind: ours is ahead
    code, checks, _ = await doctor(config, capsys)
    assert code == 0
    assert checks["clock"]["status"] == "WARN"
    assert f"s ahead of fcm {ANDROID}'s" in checks["clock"]["detail"]


async def test_clock_far_ahead_fails_the_providers_too(
    full: Deployment, apns: FakeApns, fcm: FakeFcm, capsys: pytest.CaptureFixture[str],
) -> None:
    apns.clock_offset = fcm.clock_offset = -7200.0  # our clock 2 hours fast
    code, checks, _ = await doctor(full.write(), capsys)
    assert code == 1
    assert "403 InvalidProviderToken" in checks[f'apns "{IOS}"']["detail"]
    fcm_check = checks[f"fcm {ANDROID}"]
    assert "reasonable timeframe" in fcm_check["detail"]
    assert "clock" in fcm_check["fix"]
    # The token endpoint sends a Date too, but firebase-admin never reached FCM itself:
    # only Apple's clock was read.
    assert "7200 s ahead of apns" in checks["clock"]["detail"]


def test_clock_verdicts() -> None:
    assert check_clock([], 0).status is Status.PASS
    assert check_clock([], 2).status is Status.WARN
    assert check_clock([("apns x", 0.4)], 1).detail.startswith("within 1 s")
    assert check_clock([("apns x", 61.0)], 1).status is Status.WARN
    assert check_clock([("apns x", 20.0), ("fcm y", -301.0)], 2).status is Status.FAIL


# -- the config ---------------------------------------------------------------------------


def test_invalid_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "push.toml"
    config.write_text('[xmpp]\njid = "push.example.org"\nsecret_file = "missing.secret"\n'
                      '[apps.c]\ntype = "console"\n')
    assert main(["doctor", "--config", str(config)]) == 2
    out = capsys.readouterr().out
    missing = tmp_path / "missing.secret"
    assert out.splitlines() == [
        f"FAIL  config: xmpp.secret_file: file '{missing}' does not exist",
        f"      fix: correct xmpp.secret_file in {config} (every key: docs/configuration.md)",
        "slixmpp-push doctor: 0 passed, 0 warning(s), 1 failed",
    ]
    assert main(["doctor", "--config", str(tmp_path / "nowhere.toml")]) == 2
    assert "give --config the app server's TOML config file" in capsys.readouterr().out


def test_command_line_in_a_subprocess(tmp_path: Path, prosody_server: ProsodyServer) -> None:
    """The installed entry point: exit status 1, the failure and its fix on stdout."""
    host, port = prosody_server.component_address
    (tmp_path / "component.secret").write_text("wrong\n")
    config = tmp_path / "push.toml"
    config.write_text(f'[xmpp]\njid = "{prosody_server.component.jid}"\nhost = "{host}"\n'
                      f'port = {port}\nsecret_file = "component.secret"\n'
                      '[apps.c]\ntype = "console"\n')
    done = subprocess.run([sys.executable, "-m", "slixmpp_push.cli", "doctor", "--config",
                           str(config), "--timeout", "5"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert done.returncode == 1, done.stderr
    assert ("FAIL  xmpp: the server refused the component handshake: not-authorized"
            in done.stdout)
    assert "      fix: [xmpp] secret_file/secret_env must hold the same secret" in done.stdout
    assert done.stderr == ""
