"""``slixmpp-push`` behaves like one tool: ``--version``; ``--config``/``-c`` for every
command that reads a config (``check-config FILE`` still works); log levels in any
case, on the command line as in the config. The busy ports and refused logins are in
``test_startup_errors.py``, the registrar's logins in ``test_registrar_cli.py``."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest
from test_startup_errors import busy_port, run_cli, write_config  # noqa: F401

from slixmpp_push.cli import build_parser, main

DEBUG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ DEBUG ", re.MULTILINE)


def test_version_is_the_installed_release() -> None:
    shown = run_cli("--version")
    assert (shown.returncode, shown.stderr) == (0, "")
    assert shown.stdout == f"slixmpp-push {version('slixmpp-push')}\n"


@pytest.mark.parametrize("argv", [
    ["serve", "--config", "push.toml"],
    ["check-config", "--config", "push.toml"],
    ["doctor", "-c", "push.toml"],
    ["devices", "list", "-c", "push.toml"],
    ["devices", "remove", "NODE", "--config", "push.toml"],
    ["notify", "-c", "push.toml", "--everyone", "--title", "t"],
], ids=lambda argv: " ".join(argv[:2]))
def test_every_command_with_a_config_takes_config_and_c(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).config == "push.toml"
    short = ["-c" if arg == "--config" else arg for arg in argv]
    assert build_parser().parse_args(short).config == "push.toml"


def test_check_config_takes_the_file_as_argument_or_option(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    for argv in (["check-config", str(config)], ["check-config", "--config", str(config)],
                 ["check-config", "-c", str(config)]):
        assert main(argv) == 0, argv
        out, err = capsys.readouterr()
        assert (out.splitlines()[0], err) == (f"{config}: OK — component push.localhost, "
                                              "apps: console (console), store "
                                              f"{tmp_path / 'store.json'}", "")
    assert main(["check-config", str(config), "--config", str(config)]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", "slixmpp-push check-config: give the config file once: FILE or "
                              "--config FILE, not both\n")
    assert main(["check-config"]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", "slixmpp-push check-config: which config file? check-config "
                              "--config FILE\n")


@pytest.mark.parametrize(("where", "level", "debug_shown"), [
    ("option", "debug", True),
    ("option", "Warning", False),
    ("config", "debug", True),
    ("config", "INFO", False),
])
def test_log_levels_in_any_case(tmp_path: Path, busy_port: int,  # noqa: F811
                                where: str, level: str, debug_shown: bool) -> None:
    """serve stops at once on the busy port, after setting up its logging."""
    logging_section = f'[logging]\nlevel = "{level}"\n' if where == "config" else ""
    config = write_config(tmp_path, f'[metrics]\nlisten = "127.0.0.1:{busy_port}"\n'
                                    + logging_section)
    option = ["--log-level", level] if where == "option" else []
    served = run_cli("serve", "--config", str(config), *option)
    assert served.returncode == 2 and "Traceback" not in served.stderr
    assert served.stderr.splitlines()[-1].endswith("is already in use by another program")
    assert bool(DEBUG_LINE.search(served.stderr)) is debug_shown, served.stderr
    if level == "Warning":
        assert served.stderr.count("\n") == 1, served.stderr  # not even INFO


def test_an_unknown_log_level_is_a_usage_error(tmp_path: Path) -> None:
    served = run_cli("serve", "--config", str(write_config(tmp_path)), "--log-level", "verbose")
    assert served.returncode == 2
    assert served.stderr.splitlines()[-1] == (
        "slixmpp-push serve: error: argument --log-level: invalid choice: 'VERBOSE' "
        "(choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR')")
