"""The docs match the code: every command, config and Python snippet they show is checked.

- each ``slixmpp-push …`` command line in a shell block parses with the real argument parser
  (so a renamed option or a removed command fails here, not in a reader's terminal);
- each TOML block is a valid config, or a valid fragment of one, for the real config parser
  (files a block names are created empty and environment variables set, since the checks
  here are of keys, types and values);
- each Python block compiles, and what it imports from ``slixmpp_push`` exists;
- what ``docs/deploy.md`` promises about ``devices`` (the service's own config works without
  its secrets) holds.

The commands that can run on this machine were also run by hand when the docs were written;
the demo and the test suite are the two of the quick start, and CI runs both.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import importlib
import io
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from slixmpp_push.cli import build_parser
from slixmpp_push.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(
    [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "plugins" / "errbot" / "README.md",
     *(ROOT / "docs").rglob("*.md")]
)


@dataclass(frozen=True)
class Block:
    file: Path
    line: int  # of the first line inside the fence
    language: str
    text: str

    def where(self, offset: int = 0) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line + offset}"


def _blocks(language: str) -> Iterator[Block]:
    for file in DOCS:
        if not file.exists():
            continue
        lines = file.read_text(encoding="utf-8").splitlines()
        inside: str | None = None
        start = 0
        body: list[str] = []
        for number, line in enumerate(lines, 1):
            fence = re.match(r"^\s*```(\S*)", line)
            if fence and inside is None:
                inside, start, body = fence.group(1), number + 1, []
            elif fence:
                if inside == language:
                    yield Block(file, start, inside, "\n".join(body))
                inside = None
            elif inside is not None:
                body.append(line)


# ------------------------------------------------------------------------- commands

# Lines whose tool is another program that merely names the service or its user.
_OTHER_TOOLS = {"journalctl", "systemctl", "useradd", "adduser", "chown", "install", "pip",
                "python", "python3", "git", "cd", "ls", "cp", "scripts/demo", "scripts/test"}


def _invocation(code: str) -> list[str] | None:
    """The arguments of the ``slixmpp-push`` a shell line runs, if it runs one."""
    code = re.sub(r"\$\([^)]*\)", "SUBSTITUTED", code)  # $(openssl rand -hex 32)
    code = re.sub(r"\s\[-[^\]]*\]", "", code)  # optional parts of a synopsis: [--json]
    code = re.split(r"\s(?:&&|\|\|?|;|>|2>)\s?", code)[0]
    try:
        words = shlex.split(code)
    except ValueError:  # a quoted script (sh -c '… > file') cut at its redirection
        return None
    while words and (words[0] == "sudo" or "=" in words[0] or words[0] == "env"):
        # sudo -u USER, env VAR=value: skip to the program they run
        words = words[3:] if words[0] == "sudo" and words[1:2] == ["-u"] else words[1:]
    if not words or words[0] in _OTHER_TOOLS:
        return None
    if words[0] == "slixmpp-push" or words[0].endswith("/bin/slixmpp-push"):
        return words[1:]
    return None


def _command_lines(block: Block) -> Iterator[tuple[str, list[str]]]:
    """``(where, argv)`` for each ``slixmpp-push`` invocation of a shell block."""
    joined: list[tuple[int, str]] = []
    pending = ""
    for offset, line in enumerate(block.text.splitlines()):
        if pending:
            line = pending + " " + line.strip()
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1]
            continue
        pending = ""
        joined.append((offset, line))
    for offset, line in joined:
        code = line.split(" #", 1)[0].strip()
        if not code or code.startswith("#") or "slixmpp-push" not in code:
            continue
        argv = _invocation(code)
        if argv is not None:
            yield block.where(offset), argv


def _commands() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for block in _blocks("sh"):
        found.extend(_command_lines(block))
    return found


COMMANDS = _commands()


def test_the_docs_show_commands() -> None:
    names = {argv[0] for _, argv in COMMANDS if argv}
    assert {"serve", "check-config", "devices", "doctor", "register"} <= names, names


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_command_in_the_docs_parses(where: str, argv: list[str]) -> None:
    parser = build_parser()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parsed = parser.parse_args(argv)
    except SystemExit as exit_:
        assert exit_.code == 0, f"{where}: slixmpp-push {shlex.join(argv)}: {stderr.getvalue()}"
        return
    assert isinstance(parsed, argparse.Namespace)


# ---------------------------------------------------------------------------- TOML

_BASE_CONFIG: dict[str, Any] = {
    "xmpp": {"jid": "push.example.org", "secret_env": "DOCS_TEST_SECRET"},
    "apps": {"docs-test": {"type": "console"}},
}


def _merge(base: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in fragment.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _materialise(value: Any, key: str, folder: Path, env: dict[str, str]) -> Any:
    """Files a config names are created, variables it names are set."""
    if isinstance(value, dict):
        return {k: _materialise(v, k, folder, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_materialise(v, key, folder, env) for v in value]
    if isinstance(value, str) and key.endswith("_file"):
        path = folder / "files" / value.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("docs-test\n")
        return str(path)
    if isinstance(value, str) and key.endswith("_env"):
        env[value] = "docs-test"
    if isinstance(value, str) and key == "store" and "://" not in value:
        return str(folder / "store" / Path(value).name)
    return value


TOML_BLOCKS = list(_blocks("toml"))


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=[b.where() for b in TOML_BLOCKS])
def test_every_config_in_the_docs_is_valid(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        data = tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as exc:
        pytest.fail(f"{block.where()}: not valid TOML: {exc}")
    if "xmpp" not in data:
        data = _merge(_BASE_CONFIG, data)
    env: dict[str, str] = {"DOCS_TEST_SECRET": "docs-test"}
    data = _materialise(data, "", tmp_path, env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parse_config(data, tmp_path)


# -------------------------------------------------------------------------- Python


PYTHON_BLOCKS = list(_blocks("python"))


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.where() for b in PYTHON_BLOCKS])
def test_every_python_snippet_compiles_and_imports_what_exists(block: Block) -> None:
    tree = ast.parse(block.text, filename=block.where())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("slixmpp_push"):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), (
                    f"{block.where(node.lineno - 1)}: {node.module} has no {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("slixmpp_push"):
                    importlib.import_module(alias.name)


# ------------------------------------------------------------------ docs' promises


def test_devices_works_with_the_service_config_while_its_secrets_are_unreadable(
    tmp_path: Path,
) -> None:
    """docs/deploy.md, "Running commands by hand": the service's own config is enough."""
    config = tmp_path / "push.toml"
    config.write_text(
        '[xmpp]\njid = "push.example.org"\n'
        'secret_file = "/run/credentials/slixmpp-push.service/component.secret"\n'
        f'[appserver]\nstore = "{tmp_path / "store.json"}"\n'
        '[apps."tigase:messenger:apns:1"]\ntype = "apns"\n'
        'key_file = "/run/credentials/slixmpp-push.service/apns.p8"\n'
        'key_id = "ABC123DEFG"\nteam_id = "DEF123GHIJ"\ntopic = "org.example.app"\n'
    )
    listed = subprocess.run(
        [sys.executable, "-m", "slixmpp_push.cli", "devices", "list", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert "0 registration(s), 0 pending" in listed.stderr
