"""A private PostgreSQL for the tests: ``initdb`` into a temporary folder, loopback only.

The cluster is made by the PostgreSQL binaries of this machine (``pg_config --bindir``,
else the newest ``/usr/lib/postgresql/*/bin``), listens on 127.0.0.1 on a free port and
on a socket in its own folder, and is stopped by the postmaster's PID at the end of the
session (and at exit, should the session die first). The system's cluster, if any, is
never used. ``initdb`` refuses to run as root: as root, the cluster belongs to the user
``postgres`` (or ``nobody``), and its programs run as that user.

Authentication: every role is trusted on loopback except :data:`PASSWORD_ROLE`, which
must give :attr:`PostgresServer.password` (SCRAM), so that the password path is real.

Fixtures
    ``postgres_server``  session-scoped :class:`PostgresServer`
    ``postgres_url``     function-scoped: a fresh database (``CREATE DATABASE … TEMPLATE
                         template0``) on it, as a ``postgresql://`` URL, dropped after
                         the test

When PostgreSQL is not installed the fixtures skip the test, naming the package; when
the environment variable ``CI`` is set they fail instead (``.ci/install-system.sh test``
installs it).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from slixmpp_push.devserver import _free_ports, _kill_if_same, _start_time

#: The role that logs in with a password over TCP (all others are trusted).
PASSWORD_ROLE = "pushpw"
SUPERUSER = "postgres"
INSTALL_HINT = ("PostgreSQL is not installed (no initdb): apt-get install postgresql, or "
                ".ci/install-system.sh test")

_RUNNING: weakref.WeakSet[PostgresServer] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_RUNNING):
        server.kill()


def postgres_bindir() -> Path | None:
    """The folder of ``initdb``, ``pg_ctl`` and ``psql``, or None when not installed."""
    candidates: list[Path] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                               timeout=10, check=True)
        candidates.append(Path(found.stdout.strip()))

    def version(folder: Path) -> tuple[int, ...]:
        name = folder.parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _owner() -> str | None:
    """Who runs the cluster: this user, or when root one of the unprivileged ones."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root, and neither 'postgres' nor 'nobody' exists to "
                       "run initdb as")


class PostgresServer:
    """One private cluster; :meth:`start` makes it the first time, then restarts it.

    It runs with ``fsync=off`` (the tests need no crash safety, and go faster) unless
    ``durable``: then with the server's defaults, as in production (the benchmarks).
    """

    def __init__(self, durable: bool = False) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError(INSTALL_HINT)
        self.bindir = bindir
        self.durable = durable
        self.user = _owner()
        self.folder = Path(tempfile.mkdtemp(prefix="slixmpp-push-pg-"))
        self.data = self.folder / "data"
        self.sockets = self.folder / "sockets"
        self.log = self.folder / "postgres.log"
        self.host = "127.0.0.1"
        self.port = 0
        self.password = secrets.token_urlsafe(16)
        self.pid: int | None = None
        self._start_time: str | None = None
        self._names = itertools.count(1)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)

    @staticmethod
    def unavailable_reason() -> str | None:
        return None if postgres_bindir() is not None else INSTALL_HINT

    # -- running the PostgreSQL programs --------------------------------------------------
    def _run(self, program: str, *args: str, timeout: float = 60.0) -> str:
        command = [str(self.bindir / program), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=self.folder)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): "
                               f"{done.stderr.strip() or done.stdout.strip()}\n"
                               f"{self.log_tail()}")
        return done.stdout

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _initdb(self) -> None:
        self._run("initdb", "-D", str(self.data), "--username", SUPERUSER, "--auth", "trust",
                  "--encoding", "UTF8", "--no-locale", "--no-sync")
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {PASSWORD_ROLE} {self.host}/32 scram-sha-256\n"
            f"host all all {self.host}/32 trust\n")
        self.sockets.mkdir()
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.sockets, entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        """Make the cluster (first time), start it and wait until it accepts connections."""
        first = not self.data.exists()
        if first:
            self._initdb()
        for attempt in range(3):
            if first or not self.port:
                self.port = _free_ports(1, self.host)[0]
            options = (f"-c listen_addresses={self.host} -c port={self.port} "
                       f"-c unix_socket_directories={self.sockets}")
            if not self.durable:
                options += " -c fsync=off -c full_page_writes=off"
            try:
                self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
                          "-l", str(self.log), "-o", options)
                break
            except RuntimeError:
                if attempt == 2 or "already in use" not in self.log_tail():
                    raise
                self.port = 0  # taken since we looked: another one
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        self._start_time = _start_time(self.pid)
        _RUNNING.add(self)
        if first:
            self.psql(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{self.password}'")

    def stop(self) -> None:
        """Fast shutdown by PID (SIGINT), SIGKILL if it has not ended within 30 s."""
        pid, started = self.pid, self._start_time
        self.pid = None
        _RUNNING.discard(self)
        if pid is None or started is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 30.0
        while _start_time(pid) == started and time.monotonic() < deadline:
            time.sleep(0.02)
        _kill_if_same(pid, started)

    def kill(self) -> None:
        if self.pid is not None and self._start_time is not None:
            _kill_if_same(self.pid, self._start_time)
        self.pid = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- databases -------------------------------------------------------------------------
    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one SQL command as the superuser (over the socket); its output, unaligned."""
        return self._run("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                         "-h", str(self.sockets), "-p", str(self.port), "-U", SUPERUSER,
                         "-d", database, "-c", sql)

    def create_database(self, owner: str = SUPERUSER) -> str:
        """A new empty database; its name."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name} OWNER {owner} TEMPLATE template0")
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def url(self, database: str, user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@{self.host}:{self.port}/{database}"


def require_postgres() -> None:
    """Skip when PostgreSQL is missing, but fail under CI, where it must be installed."""
    reason = PostgresServer.unavailable_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def private_postgres() -> Iterator[PostgresServer]:
    """A started cluster of one's own (the body of a fixture), removed afterwards."""
    require_postgres()
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    yield from private_postgres()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A cluster of the test's own, for tests that stop and start it."""
    yield from private_postgres()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database of the session's cluster, for the superuser."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        if postgres_server.pid is not None:
            postgres_server.drop_database(name)


async def until(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Wait until ``check()`` is true (a hang guard, not a pace to keep); its value."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)
    return value
