"""The TOML config loader and ``slixmpp-push check-config``: every error names its key."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from slixmpp_push.cli import EXIT_CONFIG, main
from slixmpp_push.config import AppConfig, Config, DeliveryPolicy, load_config, parse_config
from slixmpp_push.errors import ConfigError

DOCS = Path(__file__).resolve().parent.parent / "docs"

MINIMAL = """\
[xmpp]
jid = "push.example.org"
secret_file = "component.secret"

[apps.console]
type = "console"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "component.secret").write_text("s3cret\n")
    (tmp_path / "AuthKey.p8").write_text("not checked by the loader\n")
    return tmp_path


def write(folder: Path, text: str, name: str = "push.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def doc(**sections: dict[str, Any]) -> dict[str, Any]:
    """A parsed TOML document: the minimal config with ``sections`` merged in."""
    data: dict[str, Any] = {"xmpp": {"jid": "push.example.org",
                                     "secret_file": "component.secret"},
                            "apps": {"console": {"type": "console"}}}
    for name, table in sections.items():
        data[name] = {**data.get(name, {}), **table}
    return data


def error(data: dict[str, Any], base: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base)
    return info.value


# -- a good config ---------------------------------------------------------------------
def test_minimal_config_loads_with_defaults(folder: Path) -> None:
    config = load_config(write(folder, MINIMAL))
    assert isinstance(config, Config)
    assert config.xmpp.mode == "component"
    assert config.xmpp.jid == "push.example.org"
    assert (config.xmpp.host, config.xmpp.port) == ("127.0.0.1", 5347)
    assert config.xmpp.secret == "s3cret"  # stripped
    assert config.store == str(folder / "slixmpp-push.json")
    assert config.allowed_domains is None
    assert config.remote_disable is True
    assert config.delivery == DeliveryPolicy()
    assert config.log_level == "INFO"
    assert config.log_format == "text"
    assert config.metrics_listen is None
    assert config.source == folder / "push.toml"
    assert config.apps == [AppConfig(id="console", type="console", topic="", format="apns")]


def test_client_mode_reads_password_and_port_5222(folder: Path, monkeypatch: pytest.MonkeyPatch,
                                                  ) -> None:
    monkeypatch.setenv("PUSH_PASSWORD", "pw")
    data = doc()
    data["xmpp"] = {"mode": "client", "jid": "push@example.org", "password_env": "PUSH_PASSWORD"}
    config = parse_config(data, folder)
    assert (config.xmpp.mode, config.xmpp.port, config.xmpp.secret) == ("client", 5222, "pw")


def test_secret_env_is_read(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSH_SECRET", "from-env")
    data = doc()
    data["xmpp"] = {"jid": "push.example.org", "secret_env": "PUSH_SECRET"}
    assert parse_config(data, folder).xmpp.secret == "from-env"


def test_relative_paths_resolve_against_the_config_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "component.secret").write_text("s")
    (etc / "keys").mkdir()
    (etc / "keys" / "AuthKey.p8").write_text("k")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(write(etc, MINIMAL + """
[appserver]
store = "data/store.json"

[apps.ios]
type = "apns"
topic = "org.example.chat"
key_file = "keys/AuthKey.p8"
key_id = "ABC123DEFG"
team_id = "DEF123GHIJ"
"""))
    assert config.store == str(etc / "data" / "store.json")
    ios = next(app for app in config.apps if app.id == "ios")
    assert ios.key_file == str(etc / "keys" / "AuthKey.p8")
    assert Path(ios.key_file).is_absolute()
    # the secret file too: found next to the config, not in the working folder
    assert config.xmpp.secret == "s"


def test_absolute_store_path_is_kept(folder: Path) -> None:
    config = parse_config(doc(appserver={"store": "/var/lib/push/store.json"}), folder)
    assert config.store == "/var/lib/push/store.json"


def test_apns_and_fcm_apps(folder: Path) -> None:
    (folder / "sa.json").write_text("{}")
    config = parse_config({
        "xmpp": {"jid": "push.example.org", "secret_file": "component.secret"},
        "apps": {
            "tigase:messenger:apns:1": {
                "type": "apns", "topic": "org.example.chat", "environment": "sandbox",
                "key_file": "AuthKey.p8", "key_id": "K", "team_id": "T",
                "include_body": True, "ttl": 3600, "call_ttl": 20,
                "monal_modules": ["exampleProdiOS"], "max_connections": 2, "timeout": 5},
            "fcm-xmpp-api": {"type": "fcm", "service_account_file": "sa.json",
                             "project_id": "p-1", "android_channel": "pages"},
        },
    }, folder)
    ios, android = config.apps
    assert (ios.id, ios.type, ios.topic, ios.sandbox) == (
        "tigase:messenger:apns:1", "apns", "org.example.chat", True)
    assert (ios.key_id, ios.team_id, ios.include_body) == ("K", "T", True)
    assert (ios.ttl, ios.call_ttl, ios.max_connections, ios.timeout) == (3600, 20, 2, 5.0)
    assert ios.monal_modules == ("exampleProdiOS",)
    assert (android.id, android.type, android.project_id) == ("fcm-xmpp-api", "fcm", "p-1")
    assert android.service_account_file == str(folder / "sa.json")
    assert android.android_channel == "pages"


def test_delivery_and_logging_values(folder: Path) -> None:
    config = parse_config(doc(
        delivery={"reply_within": 1, "retry_base": 0.5, "retry_max_delay": 60,
                  "give_up_after": 3600, "max_pending": 10, "rate_burst": 3,
                  "rate_interval": 0},
        logging={"level": "debug", "format": "json"},
        metrics={"listen": "[::1]:9108"},
        appserver={"allowed_domains": ["example.org", "example.net"],
                   "remote_disable": False}), folder)
    assert config.delivery == DeliveryPolicy(1.0, 0.5, 60.0, 3600.0, 10, 3, 0.0)
    assert config.log_level == "DEBUG"
    assert config.log_format == "json"
    assert config.metrics_listen == ("::1", 9108)
    assert config.allowed_domains == ["example.org", "example.net"]
    assert config.remote_disable is False


# -- every error names its key ------------------------------------------------------------
def test_missing_jid(folder: Path) -> None:
    data = doc()
    del data["xmpp"]["jid"]
    exc = error(data, folder)
    assert (exc.key, exc.problem) == ("xmpp.jid", "is required")
    assert str(exc) == "xmpp.jid: is required"


def test_inline_secret_is_refused(folder: Path) -> None:
    exc = error(doc(xmpp={"secret": "hunter2"}), folder)
    assert exc.key == "xmpp.secret"
    assert "xmpp.secret_file" in exc.problem and "xmpp.secret_env" in exc.problem
    assert "hunter2" not in str(exc)


def test_inline_password_is_refused_in_client_mode(folder: Path) -> None:
    data = doc()
    data["xmpp"] = {"mode": "client", "jid": "a@example.org", "password": "pw"}
    exc = error(data, folder)
    assert exc.key == "xmpp.password"
    assert "xmpp.password_file" in exc.problem and "xmpp.password_env" in exc.problem


def test_no_secret_at_all(folder: Path) -> None:
    data = doc()
    del data["xmpp"]["secret_file"]
    exc = error(data, folder)
    assert exc.key == "xmpp.secret_file"
    assert "xmpp.secret_env" in exc.problem


def test_secret_env_unset(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLIXMPP_PUSH_TEST_UNSET", raising=False)
    data = doc()
    data["xmpp"] = {"jid": "push.example.org", "secret_env": "SLIXMPP_PUSH_TEST_UNSET"}
    exc = error(data, folder)
    assert exc.key == "xmpp.secret_env"
    assert "SLIXMPP_PUSH_TEST_UNSET" in exc.problem and "not set" in exc.problem


def test_secret_env_empty_counts_as_unset(folder: Path, monkeypatch: pytest.MonkeyPatch,
                                          ) -> None:
    monkeypatch.setenv("SLIXMPP_PUSH_TEST_EMPTY", "")
    data = doc()
    data["xmpp"] = {"jid": "push.example.org", "secret_env": "SLIXMPP_PUSH_TEST_EMPTY"}
    assert error(data, folder).key == "xmpp.secret_env"


def test_secret_file_missing(folder: Path) -> None:
    exc = error(doc(xmpp={"secret_file": "nope.secret"}), folder)
    assert exc.key == "xmpp.secret_file"
    assert str(folder / "nope.secret") in exc.problem and "does not exist" in exc.problem


def test_secret_file_empty(folder: Path) -> None:
    (folder / "empty.secret").write_text("\n")
    exc = error(doc(xmpp={"secret_file": "empty.secret"}), folder)
    assert exc.key == "xmpp.secret_file"
    assert "empty" in exc.problem


def test_unknown_top_level_key(folder: Path) -> None:
    data = doc()
    data["database"] = {"url": "x"}
    exc = error(data, folder)
    assert (exc.key, exc.problem) == ("database", "is not a known key")


def test_unknown_key_in_xmpp(folder: Path) -> None:
    assert error(doc(xmpp={"hots": "x"}), folder).key == "xmpp.hots"


def test_unknown_key_in_an_app(folder: Path) -> None:
    data = doc()
    data["apps"] = {"ios": {"type": "console", "colour": "blue"}}
    exc = error(data, folder)
    assert (exc.key, exc.problem) == ("apps.ios.colour", "is not a known key")


def test_app_id_with_dots_is_quoted_in_the_key(folder: Path) -> None:
    data = doc()
    data["apps"] = {"org.example.chat": {"type": "console", "colour": "blue"}}
    assert error(data, folder).key == 'apps."org.example.chat".colour'


def test_bad_app_type(folder: Path) -> None:
    data = doc()
    data["apps"] = {"ios": {"type": "gcm"}}
    exc = error(data, folder)
    assert exc.key == "apps.ios.type"
    assert "apns" in exc.problem and "fcm" in exc.problem and "console" in exc.problem


def test_app_without_type(folder: Path) -> None:
    data = doc()
    data["apps"] = {"ios": {"topic": "x"}}
    assert error(data, folder).key == "apps.ios.type"


def test_app_that_is_not_a_table(folder: Path) -> None:
    data = doc()
    data["apps"] = {"ios": "apns"}
    assert error(data, folder).key == "apps.ios"


def apns(**kw: Any) -> dict[str, Any]:
    return doc(apps={"ios": {"type": "apns", "topic": "org.example.chat", **kw}})


def test_apns_without_key_file_or_cert_file(folder: Path) -> None:
    exc = error(apns(), folder)
    assert exc.key == "apps.ios.key_file"
    assert "cert_file" in exc.problem


def test_apns_key_file_without_key_id(folder: Path) -> None:
    exc = error(apns(key_file="AuthKey.p8", team_id="T"), folder)
    assert (exc.key, exc.problem) == ("apps.ios.key_id", "is required")


def test_apns_key_file_without_team_id(folder: Path) -> None:
    assert error(apns(key_file="AuthKey.p8", key_id="K"), folder).key == "apps.ios.team_id"


def test_apns_key_file_missing(folder: Path) -> None:
    exc = error(apns(key_file="Gone.p8", key_id="K", team_id="T"), folder)
    assert exc.key == "apps.ios.key_file"
    assert "does not exist" in exc.problem


def test_apns_without_topic(folder: Path) -> None:
    data = doc(apps={"ios": {"type": "apns", "key_file": "AuthKey.p8", "key_id": "K",
                             "team_id": "T"}})
    assert error(data, folder).key == "apps.ios.topic"


def test_apns_cert_file_alone_is_enough(folder: Path) -> None:
    (folder / "cert.pem").write_text("pem")
    apps = parse_config(apns(cert_file="cert.pem"), folder).apps
    app = next(a for a in apps if a.id == "ios")
    assert app.cert_file == str(folder / "cert.pem")
    assert app.key_file is None


def test_apns_bad_environment(folder: Path) -> None:
    exc = error(apns(key_file="AuthKey.p8", key_id="K", team_id="T",
                     environment="development"), folder)
    assert exc.key == "apps.ios.environment"
    assert "production" in exc.problem and "sandbox" in exc.problem


def test_fcm_without_service_account(folder: Path) -> None:
    data = doc(apps={"android": {"type": "fcm"}})
    assert error(data, folder).key == "apps.android.service_account_file"


def test_collapse_modes(folder: Path) -> None:
    default = parse_config(doc(), folder)
    assert default.apps[0].collapse == "account"
    stacked = parse_config(doc(apps={"console": {"type": "console", "collapse": "none"}}),
                           folder)
    assert stacked.apps[0].collapse == "none"
    data = doc(apps={"console": {"type": "console", "collapse": "sender"}})
    problem = error(data, folder)
    assert problem.key == "apps.console.collapse" and "account, none" in str(problem)


def test_console_bad_format(folder: Path) -> None:
    data = doc(apps={"console": {"type": "console", "format": "webpush"}})
    assert error(data, folder).key == "apps.console.format"


def test_negative_retry_base(folder: Path) -> None:
    exc = error(doc(delivery={"retry_base": -1}), folder)
    assert exc.key == "delivery.retry_base"
    assert "at least 0" in exc.problem


def test_rate_burst_below_one(folder: Path) -> None:
    assert error(doc(delivery={"rate_burst": 0}), folder).key == "delivery.rate_burst"


def test_unknown_delivery_key(folder: Path) -> None:
    assert error(doc(delivery={"retries": 3}), folder).key == "delivery.retries"


@pytest.mark.parametrize(("section", "key", "value"), [
    ("xmpp", "port", "5347"),
    ("xmpp", "port", 5347.0),
    ("xmpp", "port", True),
    ("xmpp", "jid", 42),
    ("delivery", "retry_base", "1"),
    ("delivery", "max_pending", 1.5),
    ("appserver", "remote_disable", "yes"),
    ("appserver", "allowed_domains", "example.org"),
    ("appserver", "store", ["a"]),
    ("logging", "level", 10),
])
def test_wrong_types(folder: Path, section: str, key: str, value: Any) -> None:
    exc = error(doc(**{section: {key: value}}), folder)
    assert exc.key == f"{section}.{key}"
    assert exc.problem.startswith("must be ")
    assert repr(value) in exc.problem


def test_port_out_of_range(folder: Path) -> None:
    assert error(doc(xmpp={"port": 70000}), folder).key == "xmpp.port"


def test_bad_mode(folder: Path) -> None:
    assert error(doc(xmpp={"mode": "server"}), folder).key == "xmpp.mode"


def test_allowed_domains_must_be_names(folder: Path) -> None:
    exc = error(doc(appserver={"allowed_domains": ["example.org", ""]}), folder)
    assert exc.key == "appserver.allowed_domains"


@pytest.mark.parametrize("key", ["admins", "trusted_publishers"])
def test_account_lists_take_bare_jids(folder: Path, key: str) -> None:
    config = parse_config(doc(appserver={key: ["pager@example.org"]}), folder)
    assert getattr(config, key) == ["pager@example.org"]
    for wrong in ("example.org", "pager@example.org/bot"):
        exc = error(doc(appserver={key: [wrong]}), folder)
        assert (exc.key, exc.problem) == (f"appserver.{key}",
                                         f"{wrong!r} is not a bare JID (user@domain)")


def test_trusted_publishers_and_their_echo_window_reach_the_app_server(folder: Path) -> None:
    from slixmpp_push.server import build_xmpp

    config = parse_config(doc(appserver={"trusted_publishers": ["pager@example.org"],
                                         "echo_window": 5}), folder)
    plugin_config = build_xmpp(config).plugin["push_appserver"].config
    assert plugin_config["trusted_publishers"] == ("pager@example.org",)
    assert plugin_config["echo_window"] == 5.0
    assert parse_config(doc(), folder).echo_window == 15.0
    assert error(doc(appserver={"echo_window": -1}), folder).key == "appserver.echo_window"


def test_bad_logging_level(folder: Path) -> None:
    exc = error(doc(logging={"level": "VERBOSE"}), folder)
    assert exc.key == "logging.level"
    assert "DEBUG" in exc.problem


def test_bad_logging_format(folder: Path) -> None:
    assert error(doc(logging={"format": "xml"}), folder).key == "logging.format"


@pytest.mark.parametrize("listen", ["9108", ":9108", "localhost:http", "127.0.0.1:70000"])
def test_bad_metrics_listen(folder: Path, listen: str) -> None:
    exc = error(doc(metrics={"listen": listen}), folder)
    assert exc.key == "metrics.listen"
    assert repr(listen) in exc.problem


def test_unknown_metrics_key(folder: Path) -> None:
    assert error(doc(metrics={"port": 9108}), folder).key == "metrics.port"


def test_no_apps_at_all(folder: Path) -> None:
    data = doc()
    del data["apps"]
    exc = error(data, folder)
    assert exc.key == "apps"
    assert "console" in exc.problem


def test_empty_apps_table(folder: Path) -> None:
    data = doc()
    data["apps"] = {}
    assert error(data, folder).key == "apps"


def test_section_that_is_not_a_table(folder: Path) -> None:
    data = doc()
    data["delivery"] = "fast"
    assert error(data, folder).key == "delivery"


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert info.value.key == str(tmp_path / "absent.toml")
    assert "does not exist" in info.value.problem
    bad = write(tmp_path, "[xmpp\njid = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.key == str(bad)
    assert "not valid TOML" in info.value.problem


# -- the CLI ---------------------------------------------------------------------------------
def test_check_config_ok(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(folder, MINIMAL)
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}: OK")
    assert "component push.example.org" in out
    assert "console (console)" in out
    assert err == ""


@pytest.mark.parametrize(("text", "line"), [
    (MINIMAL.replace('jid = "push.example.org"\n', ""), "xmpp.jid: is required"),
    (MINIMAL + "\n[apps.ios]\ntype = \"console\"\ncolour = \"blue\"\n",
     "apps.ios.colour: is not a known key"),
    (MINIMAL.replace("[xmpp]\n", "[xmpp]\nport = \"5347\"\n"),
     "xmpp.port: must be an integer, not '5347'"),
    (MINIMAL + "\n[logging]\nlevel = \"LOUD\"\n",
     "logging.level: must be DEBUG, INFO, WARNING or ERROR"),
])
def test_check_config_bad(folder: Path, capsys: pytest.CaptureFixture[str], text: str,
                          line: str) -> None:
    assert main(["check-config", str(write(folder, text))]) == EXIT_CONFIG == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"slixmpp-push: configuration error: {line}\n"


def test_check_config_inline_secret(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = MINIMAL.replace('secret_file = "component.secret"', 'secret = "hunter2"')
    assert main(["check-config", str(write(folder, text))]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"slixmpp-push: configuration error: xmpp\.secret: [^\n]*"
                        r"xmpp\.secret_file[^\n]*xmpp\.secret_env[^\n]*\n", err)
    assert "hunter2" not in err


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "absent.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("slixmpp-push: configuration error: ")


def test_check_config_runs_provider_checks(folder: Path, capsys: pytest.CaptureFixture[str],
                                           ) -> None:
    # Both credentials load (config.py) but APNs wants one or the other (providers/apns.py).
    (folder / "cert.pem").write_text("pem")
    text = MINIMAL + """
[apps.ios]
type = "apns"
topic = "org.example.chat"
key_file = "AuthKey.p8"
key_id = "K"
team_id = "T"
cert_file = "cert.pem"
"""
    assert main(["check-config", str(write(folder, text))]) == 2
    err = capsys.readouterr().err
    assert err == ("slixmpp-push: configuration error: apps.ios.cert_file: "
                   "use key_file (token auth) or cert_file, not both\n")


# -- the documented production example ----------------------------------------------------------
def make_credentials(folder: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    ec_key = ec.generate_private_key(ec.SECP256R1())
    (folder / "AuthKey_ABC123DEFG.p8").write_bytes(ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    (folder / "firebase-service-account.json").write_text(json.dumps({
        "type": "service_account",
        "project_id": "example-chat-12345",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": pem,
        "client_email": "push@example-chat-12345.iam.gserviceaccount.com",
        "client_id": "123456789012345678901",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
    }))
    (folder / "component.secret").write_text("component-secret\n")


def test_example_config_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (DOCS / "example-config.toml").read_text()
    paths = set(re.findall(r'"(/(?:etc|var)/[^"]+)"', text))
    assert paths, "the example names its files with absolute paths"
    for path in paths:
        text = text.replace(f'"{path}"', f'"{tmp_path / Path(path).name}"')
    make_credentials(tmp_path)
    shutil.copy(DOCS / "example-config.toml", tmp_path / "original.toml")
    config_path = write(tmp_path, text, "example-config.toml")

    config = load_config(config_path)
    assert config.xmpp.mode == "component"
    assert config.xmpp.secret == "component-secret"
    by_id = {app.id: app for app in config.apps}
    ios = by_id["tigase:messenger:apns:1"]
    android = by_id["fcm-xmpp-api"]
    assert ios.type == "apns" and ios.key_file and ios.key_id and ios.team_id
    assert not ios.sandbox
    assert android.type == "fcm" and android.service_account_file
    assert config.metrics_listen == ("127.0.0.1", 9108)

    assert main(["check-config", str(config_path)]) == 0
    assert ": OK" in capsys.readouterr().out

    # The dummy credentials are real ones: the providers' own loaders take them.
    from firebase_admin import credentials

    from slixmpp_push.providers.apns import ApnsProvider

    assert "BEGIN PRIVATE KEY" in ApnsProvider(ios)._read_key()
    assert android.service_account_file is not None
    assert credentials.Certificate(android.service_account_file).project_id == \
        "example-chat-12345"


def test_minimal_console_example_in_the_docs_is_accepted(tmp_path: Path) -> None:
    text = (DOCS / "configuration.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    minimal = [b for b in blocks if 'type = "console"' in b and "[apps." in b]
    assert minimal, "docs/configuration.md shows a minimal console config"
    (tmp_path / "component.secret").write_text("s\n")
    config = load_config(write(tmp_path, minimal[0]))
    assert [app.type for app in config.apps] == ["console"]


def test_production_example_in_the_docs_is_the_example_file() -> None:
    text = (DOCS / "configuration.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    production = [b for b in blocks if 'type = "fcm"' in b]
    example = (DOCS / "example-config.toml").read_text()
    assert len(production) == 1
    assert production[0] == example[example.index("[xmpp]"):]


def test_credential_and_bound_checks(tmp_path: Path) -> None:
    from slixmpp_push.config import check_credentials

    (tmp_path / "s").write_text("x")
    (tmp_path / "bad.p8").write_text("not a key")
    base = {"xmpp": {"jid": "push.x", "secret_file": "s"}}

    def app(**keys: object) -> dict[str, object]:
        return {**base, "apps": {"ios": {"type": "apns", "topic": "t", **keys}}}

    with pytest.raises(ConfigError, match="key_id: is only used with key_file"):
        parse_config(app(cert_file="s", key_id="K"), tmp_path)
    with pytest.raises(ConfigError, match="not both"):
        parse_config({**base, "xmpp": {"jid": "j", "secret_file": "s", "secret_env": "HOME"},
                      "apps": {"c": {"type": "console"}}}, tmp_path)
    with pytest.raises(ConfigError, match=r"apps\.ios\.timeout"):
        parse_config(app(cert_file="s", timeout=0), tmp_path)
    with pytest.raises(ConfigError, match=r"apps\.ios\.ttl"):
        parse_config(app(cert_file="s", ttl=-1), tmp_path)
    with pytest.raises(ConfigError, match="monal_modules"):
        parse_config(app(cert_file="s", monal_modules=[1]), tmp_path)
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        parse_config({**app(cert_file="s"), "metrics": {"listen": "a:b:9108"}}, tmp_path)
    config = parse_config(app(key_file="bad.p8", key_id="K", team_id="T"), tmp_path)
    with pytest.raises(ConfigError, match=r"apps\.ios\.key_file: is not a readable \.p8 key"):
        check_credentials(config.apps[0])
    config = parse_config(app(cert_file="s"), tmp_path)
    with pytest.raises(ConfigError, match="cert_file: holds no PEM certificate"):
        check_credentials(config.apps[0])


def test_notifier_ingest_omemo_and_muc_sections(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x")
    (tmp_path / "hook").write_text("t")
    base: dict[str, object] = {
        "xmpp": {"mode": "client", "jid": "pager@x", "password_file": "pw"},
        "apps": {"c": {"type": "console"}}}
    notifier = {"default_policy": "oncall", "groups": {"sre": ["a@x", "b@x"]},
                "policies": {"oncall": {"steps": [{"targets": ["a@x"], "wait": 60},
                                                  {"targets": ["group:sre"], "wait": 120}],
                                        "repeat": 2, "final": ["boss@x"],
                                        "ack_timeout": 900}},
                "omemo": {"btbv": False, "trusted": {"a@x": ["05ab"]}},
                "muc": {"room": "ops@conference.x", "nick": "pager"}}
    config = parse_config({**base, "notifier": notifier,
                           "ingest": {"listen": "127.0.0.1:9095", "token_file": "hook"}},
                          tmp_path)
    assert config.notifier is not None and config.ingest is not None
    policy = config.notifier.policies["oncall"]
    assert [s.wait for s in policy.steps] == [60, 120] and policy.ack_timeout == 900
    assert config.notifier.omemo is not None and config.notifier.omemo.btbv is False
    assert config.notifier.muc is not None and config.notifier.muc.room == "ops@conference.x"
    assert config.ingest.token == "t"
    assert config.notifier.echo_window == 15.0
    assert config.notifier.plugin_config()["echo_window"] == 15.0
    quiet = parse_config({**base, "notifier": {"echo_window": 0}}, tmp_path)
    assert quiet.notifier is not None and quiet.notifier.echo_window == 0
    bad = [
        ({"echo_window": -1}, r"notifier\.echo_window"),
        ({"policies": {"p": {"steps": []}}}, r"notifier\.policies\.p\.steps"),
        ({"policies": {"p": {"steps": [{"targets": [], "wait": 1}]}}},
         r"notifier\.policies\.p\.steps\[0\]\.targets"),
        ({"policies": {"p": {"steps": [{"targets": ["a@x"], "wait": 0}]}}},
         r"notifier\.policies\.p\.steps\[0\]\.wait"),
        ({"default_policy": "nope"}, r"notifier\.default_policy"),
        ({"muc": {"nick": "x"}}, r"notifier\.muc\.room"),
    ]
    for section, key in bad:
        with pytest.raises(ConfigError, match=key):
            parse_config({**base, "notifier": section}, tmp_path)
    component = {**base, "xmpp": {"jid": "push.x", "secret_file": "pw"}}
    with pytest.raises(ConfigError, match=r"notifier\.omemo: needs xmpp\.mode"):
        parse_config({**component, "notifier": {"omemo": {}}}, tmp_path)
    with pytest.raises(ConfigError, match=r"ingest: needs a \[notifier\]"):
        parse_config({**base, "ingest": {"token_file": "hook"}}, tmp_path)
    with pytest.raises(ConfigError, match=r"ingest\.token_file"):  # not loopback: token needed
        parse_config({**base, "notifier": {}, "ingest": {"listen": "0.0.0.0:9095"}}, tmp_path)


# -- a PostgreSQL store ---------------------------------------------------------------------
DATABASE = "postgresql://push@db.example.org:5432/push"


def test_database_store_url_and_its_password_from_a_file_or_the_environment(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(doc(appserver={"store": DATABASE}), folder)
    assert (config.store, config.store_password) == (DATABASE, None)  # peer/trust: none
    local = "postgres:///push?host=/run/postgresql"  # a socket folder, no host name
    assert parse_config(doc(appserver={"store": local}), folder).store == local
    (folder / "db.password").write_text("from-file\n")
    config = parse_config(doc(appserver={"store": DATABASE,
                                         "store_password_file": "db.password"}), folder)
    assert config.store_password == "from-file"
    assert "from-file" not in repr(config)
    monkeypatch.setenv("PUSH_DB_PASSWORD", "from-env")
    config = parse_config(doc(appserver={"store": DATABASE,
                                         "store_password_env": "PUSH_DB_PASSWORD"}), folder)
    assert config.store_password == "from-env"


@pytest.mark.parametrize(("appserver", "key", "problem"), [
    ({"store": "postgresql://push:hunter2@db/push"}, "appserver.store",
     "holds a password: inline secrets are not accepted: use appserver.store_password_file "
     "or appserver.store_password_env"),
    ({"store": "postgresql://db/push?password=hunter2"}, "appserver.store",
     "holds a password: inline secrets are not accepted: use appserver.store_password_file "
     "or appserver.store_password_env"),
    ({"store": "postgresql://push@db.example.org:5432/"}, "appserver.store",
     "names no database: postgresql://USER@HOST:PORT/DATABASE"),
    ({"store": "postgresql://push@db.example.org:port/push"}, "appserver.store",
     "is not a valid URL ("),  # then Python's words
    ({"store": DATABASE, "store_password": "hunter2"}, "appserver.store_password",
     "inline secrets are not accepted: use appserver.store_password_file or "
     "appserver.store_password_env"),
    ({"store": DATABASE, "store_password_file": "nowhere"}, "appserver.store_password_file",
     "file '{folder}/nowhere' does not exist"),
    ({"store": DATABASE, "store_password_env": "PUSH_UNSET_VARIABLE"},
     "appserver.store_password_env", "environment variable 'PUSH_UNSET_VARIABLE' is not set"),
    ({"store": "store.json", "store_password_env": "X"}, "appserver.store_password_env",
     "is only used with a postgresql:// store"),
    ({"store": DATABASE, "store_journal_max_mb": 10}, "appserver.store_journal_max_mb",
     "is only used with a TinyDB store (a file), not a database"),
    ({"store": DATABASE, "instances": "two"}, "appserver.instances",
     "must be 'one-active' or 'all-active', not 'two'"),
    ({"instances": "all-active"}, "appserver.instances",
     "'all-active' needs a postgresql:// store that the instances share"),
])
def test_database_store_errors_name_the_key(folder: Path, appserver: dict[str, Any], key: str,
                                            problem: str) -> None:
    exc = error(doc(appserver=appserver), folder)
    assert exc.key == key
    assert exc.problem.startswith(problem.format(folder=folder)), exc.problem
    assert "hunter2" not in str(exc)


def test_instances_default_to_one_active_and_all_active_needs_a_component(
        folder: Path) -> None:
    assert parse_config(doc(appserver={"store": DATABASE}), folder).instances == "one-active"
    config = parse_config(doc(appserver={"store": DATABASE, "instances": "all-active"}), folder)
    assert config.instances == "all-active"
    client = doc(appserver={"store": DATABASE, "instances": "all-active"})
    client["xmpp"] = {"mode": "client", "jid": "push@example.org", "password_env": "HOME"}
    exc = error(client, folder)
    assert (exc.key, exc.problem) == ("appserver.instances", "'all-active' needs xmpp.mode = "
                                      "\"component\" (a server balances several component "
                                      "connections, not one account's)")


def test_check_config_of_a_database_store_does_not_connect(
        folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on loopback: nothing listens there, and check-config must not try.
    config = write(folder, MINIMAL + '[appserver]\nstore = "postgresql://push@127.0.0.1:1/push"\n')
    assert main(["check-config", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith(
        f"{config}: OK — component push.example.org, apps: console (console), "
        "store postgresql://push@127.0.0.1:1/push")
