"""The package as users and packagers get it: the wheel and the sdist that
``scripts/build-wheel`` builds, installed by pip into clean virtualenvs.

- the wheel holds the ``slixmpp_push`` package and nothing else (no tests, test
  launchers or fakes), with the license, classifiers, URLs and true dependency bounds
  in its metadata;
- the sdist holds the whole project: its tests collect from the unpacked folder;
- a base install (no extras) runs ``--version`` and ``check-config``, and names the
  extra that the pager and the demo need, at once;
- an install with the ``fcm`` and ``notifier`` extras checks configs that use them;
- the oldest slixmpp and aioapns that ``pyproject.toml`` admits, installed at exactly
  those versions, pass the core of the suite: the stream tests, the APNs provider
  against the fake APNs, an end-to-end push through a real Prosody, the registrar CLI
  and the demo.

Everything is built once per session. pip's cache is used, so after the first run
the installs do not download.
"""

from __future__ import annotations

import email
import email.message
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
# Generous guards for pip and the builds, never measurements.
INSTALL_GUARD = 600


def run(*argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        guard: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in argv], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=guard)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}{result.stderr}"
    return result.stdout


@dataclass(frozen=True)
class Dist:
    wheel: Path
    sdist: Path


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    out = tmp_path_factory.mktemp("dist")
    ok(run(ROOT / "scripts" / "build-wheel", out, env={"PYTHON": sys.executable},
           guard=INSTALL_GUARD))
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert [w.name for w in wheels] == [f"slixmpp_push-{VERSION}-py3-none-any.whl"]
    assert [s.name for s in sdists] == [f"slixmpp_push-{VERSION}.tar.gz"]
    return Dist(wheels[0], sdists[0])


def make_venv(folder: Path, *requirements: str | Path) -> Path:
    """A clean virtualenv in ``folder`` with ``requirements`` installed; its bin folder."""
    ok(run(sys.executable, "-m", "venv", folder))
    ok(run(folder / "bin" / "python", "-m", "pip", "install", "-q",
           "--disable-pip-version-check", *requirements, guard=INSTALL_GUARD))
    return folder / "bin"


def write_monitoring_bot(folder: Path) -> Path:
    """examples/monitoring-bot.toml with the secret files it names."""
    (folder / "component.secret").write_text("s3cret\n")
    (folder / "ingest.token").write_text("t0ken\n")
    config = folder / "monitoring-bot.toml"
    config.write_text((ROOT / "examples" / "monitoring-bot.toml").read_text())
    return config


def write_fcm_config(folder: Path) -> Path:
    """The README's minimal config plus an FCM app, its service account as Google's."""
    (folder / "component.secret").write_text("s3cret\n")
    (folder / "fcm.json").write_text(
        '{"type": "service_account", "project_id": "p", "private_key": "-----BEGIN PRIVATE '
        'KEY-----\\n", "client_email": "push@p.iam.gserviceaccount.com", '
        '"token_uri": "https://oauth2.googleapis.com/token"}')
    config = folder / "fcm.toml"
    config.write_text('[xmpp]\nmode = "component"\njid = "push.example.org"\n'
                      'host = "127.0.0.1"\nport = 5347\nsecret_file = "component.secret"\n'
                      '[appserver]\nstore = "store.json"\n'
                      '[apps."fcm-xmpp-api"]\ntype = "fcm"\nservice_account_file = "fcm.json"\n')
    return config


def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        return email.message_from_bytes(
            archive.read(f"slixmpp_push-{VERSION}.dist-info/METADATA"))


def package_files() -> set[str]:
    """What the wheel must hold of the checkout: the package's modules and py.typed."""
    package = ROOT / "slixmpp_push"
    files = {path for path in package.rglob("*.py") if "__pycache__" not in path.parts}
    return {str(path.relative_to(ROOT)) for path in files} | {"slixmpp_push/py.typed"}


# ---------------------------------------------------------------------- the wheel

def test_the_wheel_holds_the_package_and_nothing_else(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as archive:
        names = set(archive.namelist())
    info = f"slixmpp_push-{VERSION}.dist-info/"
    assert {n for n in names if not n.startswith(info)} == package_files()
    assert f"{info}licenses/LICENSE" in names
    # Test-only code stays in tests/: the launchers of ejabberd and Prosody 13, the fakes.
    assert not [n for n in names if re.search(r"devservers|fakes|conftest|tests/", n)]


def test_the_wheel_metadata_is_complete_and_its_bounds_true(dist: Dist) -> None:
    meta = metadata(dist.wheel)
    assert meta["License-Expression"] == "MIT"
    classifiers = meta.get_all("Classifier") or []
    for wanted in ("Development Status :: 4 - Beta", "Framework :: AsyncIO",
                   "Programming Language :: Python :: 3.11", "Typing :: Typed",
                   "Topic :: Communications :: Chat", "Operating System :: POSIX :: Linux"):
        assert wanted in classifiers
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL") or [])
    assert set(urls) == {"Homepage", "Source", "Documentation", "Issues", "Changelog"}
    assert all(url.startswith("https://codeberg.org/slixmpp-push/slixmpp-push") for url in
               urls.values())
    requires = {Requirement(r).name.lower(): Requirement(r)
                for r in meta.get_all("Requires-Dist") or []}
    assert "sniffio" not in requires  # nothing imports it
    # aioapns internals are subclassed: capped; both have a tested floor.
    assert requires["aioapns"].specifier.contains("3.2")
    assert not requires["aioapns"].specifier.contains("3.1")
    assert not requires["aioapns"].specifier.contains("4.1")
    assert not requires["slixmpp"].specifier.contains("1.9.1")  # crashes in connect
    assert requires["pyjwt"]  # providers/apns.py imports jwt


# ---------------------------------------------------------------------- the sdist

def test_the_sdist_holds_the_project_and_its_tests_collect(dist: Dist, tmp_path: Path) -> None:
    with tarfile.open(dist.sdist) as archive:
        archive.extractall(tmp_path, filter="data")
    unpacked = tmp_path / f"slixmpp_push-{VERSION}"
    for part in ("LICENSE", "CHANGELOG.md", "README.md", "example_bot.py", "docs/index.md",
                 "examples/monitoring-bot.toml", "plugins/errbot/README.md", "scripts/demo",
                 "scripts/build-wheel", ".ci/install-system.sh", "benchmarks/README.md",
                 "tests/conftest.py", "tests/fakes/fake_apns.py", "tests/data/captured"):
        assert (unpacked / part).exists(), part
    shipped = {p.name for p in (unpacked / "tests").glob("test_*.py")}
    assert shipped == {p.name for p in (ROOT / "tests").glob("test_*.py")}
    # From the unpacked folder: its pyproject puts "." (its own copy) first on the path.
    collected = run(sys.executable, "-m", "pytest", "--collect-only", "-q",
                    "-p", "no:cacheprovider", cwd=unpacked)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    # "N tests collected in S s"; with a module that fails to import: ", M errors".
    summary = collected.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ tests collected in [\d.]+s", summary), collected.stdout


# ---------------------------------------------------------------- clean installs

def test_a_base_install_runs_and_names_the_extras_it_lacks(
        dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("base")
    bin_ = make_venv(folder / "venv", dist.wheel)
    cli = bin_ / "slixmpp-push"
    assert ok(run(cli, "--version")).strip() == f"slixmpp-push {VERSION}"
    (folder / "component.secret").write_text("s3cret\n")
    minimal = folder / "push.toml"  # the README's, with the console provider
    minimal.write_text('[xmpp]\nmode = "component"\njid = "push.example.org"\n'
                       'host = "127.0.0.1"\nport = 5347\nsecret_file = "component.secret"\n'
                       '[appserver]\nstore = "store.json"\n'
                       '[apps."tigase:messenger:apns:1"]\ntype = "console"\n')
    ok(run(cli, "check-config", "--config", minimal))

    on_database = folder / "database.toml"
    on_database.write_text(minimal.read_text().replace(
        'store = "store.json"', 'store = "postgresql://push@127.0.0.1:5432/push"'))
    for config, extra in ((write_monitoring_bot(folder), "notifier"),
                          (write_fcm_config(folder), "fcm"), (on_database, "postgresql")):
        checked = run(cli, "check-config", "--config", config)
        assert checked.returncode == 2
        assert checked.stderr.strip().endswith(f"pip install 'slixmpp-push[{extra}]'")

    empty_tmp = folder / "tmp"
    empty_tmp.mkdir()
    demo = run(cli, "demo", env={"TMPDIR": str(empty_tmp)})
    assert demo.returncode == 2
    assert demo.stderr.splitlines() == [
        "slixmpp-push: the demo needs the 'aiohttp' package: "
        "pip install 'slixmpp-push[notifier]'"]
    assert demo.stdout == "" and list(empty_tmp.iterdir()) == []  # nothing was started


def test_an_install_with_extras_checks_the_configs_that_use_them(
        dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("extras")
    bin_ = make_venv(folder / "venv", f"{dist.wheel}[fcm,notifier]")
    cli = bin_ / "slixmpp-push"
    assert ok(run(cli, "--version")).strip() == f"slixmpp-push {VERSION}"
    for config in (write_monitoring_bot(folder), write_fcm_config(folder)):
        ok(run(cli, "check-config", "--config", config))


# ------------------------------------------------------- the oldest dependencies

def lowest_pins() -> list[str]:
    """``name==floor`` for slixmpp and aioapns, read from pyproject.toml's bounds."""
    pins = []
    for line in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(line)
        if requirement.name in ("slixmpp", "aioapns"):
            floors = [s.version for s in requirement.specifier if s.operator == ">="]
            assert len(floors) == 1, f"{line}: one >= bound expected"
            pins.append(f"{requirement.name}=={floors[0]}")
    assert len(pins) == 2
    return pins


def core_test_tools() -> Iterator[str]:
    """The test extra's tools the core of the suite needs, with their bounds."""
    for line in PYPROJECT["project"]["optional-dependencies"]["test"]:
        if Requirement(line).name in ("pytest", "pytest-asyncio", "trustme", "hypothesis",
                                      "h11"):
            yield line


# The core that touches slixmpp and aioapns, through every path they serve. The SlixTest
# stream tests come first: they build their XMPP objects outside a running loop, which
# slixmpp 1.10 allows only while the thread has a current loop, and pytest-asyncio unsets
# it after each async test. (The package builds them inside its loop, as slixmpp wants.)
LOWEST_SUBSET = [
    "tests/test_stream_appserver.py",
    "tests/test_stream_registrar.py",
    "tests/test_provider_apns.py",
    "tests/test_registrar_cli.py",
    "tests/test_e2e_appserver.py::test_siskin_register_device",
    "tests/test_demo.py",
]


def test_lowest_supported_versions(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("lowest")
    pins = lowest_pins()
    bin_ = make_venv(folder / "venv", f"{dist.wheel}[notifier]", *pins, *core_test_tools())
    frozen = ok(run(bin_ / "python", "-m", "pip", "list", "--format=freeze")).split()
    installed = {name.lower(): Version(version)
                 for name, _, version in (line.partition("==") for line in frozen)}
    for pin in pins:
        name, _, floor = pin.partition("==")
        assert installed[name] == Version(floor), frozen
    # From the checkout (its pyproject puts "." first): the code under test, on the
    # dependencies of that venv. Prosody 0.12 is the server that needs no backports.
    result = run(bin_ / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 *LOWEST_SUBSET, cwd=ROOT, env={"SLIXMPP_PUSH_TEST_SERVERS": "prosody0.12"},
                 guard=INSTALL_GUARD)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert re.search(r"^\d+ passed", result.stdout.splitlines()[-1]), result.stdout[-2000:]
