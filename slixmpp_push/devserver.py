"""Private XMPP server instances on loopback, for the demo and the tests.

Each server runs as a child process from a temporary folder (config, data,
logs), listens on ``127.0.0.1`` only, on free high ports, with server-to-server
traffic switched off, and is stopped by its PID. Nothing touches a system
service or its files::

    async with ProsodyServer() as server:
        alice = await server.register("alice", "pw")   # -> "alice@localhost"
        host, port = server.c2s_address                 # plain TCP, no TLS
        push = server.component                         # ComponentSpec("push.localhost", secret)
        ...                                             # connect clients / the component

What each instance offers: the virtual host ``domain`` (``localhost``), c2s on
plain TCP (SASL PLAIN allowed without TLS, and SCRAM), an XEP-0114 component
per :class:`ComponentSpec` (default ``push.<domain>`` with a random secret),
roster, disco, ping, carbons, offline storage, stream management with
resumption, MAM, and XEP-0357 push (Prosody ``mod_cloud_notify``).

Accounts: :meth:`DevServer.register` works before and after :meth:`start`.

This module ships in the package because the demo runs the system's Debian
Prosody 0.12 (:class:`ProsodyServer`). The launchers only the tests need
(ejabberd 23.01 and 24.12, Prosody 13 from bookworm-backports) subclass
:class:`DevServer` in ``tests/devservers.py``.

After start, a server whose log announces another release than its
:attr:`DevServer.version` (``Prosody version …``, ``ejabberd … is started``) is
stopped with :class:`DevServerError`: the wrong code on its path.

:meth:`DevServer.available` says whether a server can run here,
:meth:`DevServer.unavailable_reason` why not (naming the package or the
install script).

The server objects hold no asyncio objects between calls: ``start()``,
``register()`` and ``stop()`` may run in different event loops (a test
fixture may start a server in one loop and tests use it from theirs).
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

__all__ = [
    "ComponentSpec",
    "DevServer",
    "DevServerError",
    "DevServerUnavailable",
    "ProsodyServer",
]

LOOPBACK = "127.0.0.1"

class DevServerError(RuntimeError):
    """A development server could not be started, used or stopped."""


class DevServerUnavailable(DevServerError):
    """The server software is not installed on this machine."""


@dataclass(frozen=True, slots=True)
class ComponentSpec:
    """An XEP-0114 external component the server accepts."""

    jid: str
    secret: str


# Servers still running, so that they are killed when the interpreter exits
# without stop() having been awaited (a crashed test run, Ctrl-C in the demo).
_RUNNING: weakref.WeakSet[DevServer] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_RUNNING):
        server._kill_now()


def _free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Ports that are free on ``host`` right now, all different.

    They are held open together so the kernel hands out distinct ones; the
    server binds them a moment later. A race with another process is caught
    at start (the bind fails) and retried with new ports.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _listening_ports(pid: int) -> set[int] | None:
    """TCP ports on which process ``pid`` has a listening socket (Linux).

    ``None`` when /proc cannot tell (another OS, or no permission).
    """
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        ports: set[int] = set()
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/net/{table}") as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    # local_address st ... inode; st 0A is LISTEN
                    if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return ports
    except OSError:
        return None


async def _accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` has exited, without reaping it.

    Until it is reaped its PID, which is also its process group's id, cannot
    be reused, so the group can still be killed safely.
    """
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped by someone else
        return proc.poll() is not None
    except (AttributeError, OSError):  # no waitid on this platform
        return proc.poll() is not None


def _descendants(pid: int) -> dict[int, str]:
    """All processes below ``pid`` (Linux /proc), as PID -> start time.

    Erlang's helpers (erl_child_setup, port programs) start sessions of their
    own, so the process group does not hold them. The start time tells a
    process from a later one that reuses its PID. Empty without /proc.
    """
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "Z":
            continue
        # after "pid (comm)": state ppid ... and starttime is field 22 of the line
        children.setdefault(int(fields[1]), []).append(int(entry))
        started[int(entry)] = fields[19]
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if child in started and child not in found:
            found[child] = started[child]
            todo.extend(children.get(child, []))
    return found


def _start_time(pid: int) -> str | None:
    """Start time of live process ``pid``; None once it exited (zombies count as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def _kill_if_same(pid: int, start_time: str) -> None:
    """SIGKILL ``pid`` unless it exited (or its PID now names another process)."""
    if _start_time(pid) == start_time:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


class DevServer(abc.ABC):
    """A private XMPP server process on loopback.

    Subclasses write the config, name the command and create accounts. The
    common part picks ports, runs the process in its own session (process
    group) from a temporary folder, waits until every port listens, and stops
    it: SIGTERM, then SIGKILL after ``stop_timeout``, then SIGKILL to what is
    left of its process group and of the helpers it had started.
    """

    #: shown in messages
    name: ClassVar[str] = "server"
    #: "prosody" or "ejabberd"
    family: ClassVar[str] = "server"
    #: the server's release as people name it: "0.12", "13", "23.01", "24.12"
    version: ClassVar[str] = ""
    #: regex on the log whose group 1 is the running release (checked after start
    #: when the log level shows it): a private server must not run the system's code
    version_pattern: ClassVar[str | None] = None
    #: Debian packages that provide the server
    debian_packages: ClassVar[tuple[str, ...]] = ()
    #: log text that means a port was taken between choosing and binding it
    port_collision_markers: ClassVar[tuple[str, ...]] = ()
    #: log text that means the server failed for good but keeps running
    fatal_markers: ClassVar[tuple[str, ...]] = ()
    #: extra ports besides c2s and component
    extra_port_count: ClassVar[int] = 0

    def __init__(
        self,
        *,
        domain: str = "localhost",
        components: Sequence[ComponentSpec] | None = None,
        log_level: str = "info",
        workdir: str | os.PathLike[str] | None = None,
        ready_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.domain = domain
        self.components: tuple[ComponentSpec, ...] = tuple(
            components
            if components is not None
            else [ComponentSpec(f"push.{domain}", secrets.token_hex(16))]
        )
        self.host = LOOPBACK
        self.log_level = log_level
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._given_workdir = Path(workdir) if workdir is not None else None
        self._workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports: list[int] = []
        self._final_log = ""
        self._final_console = ""
        #: seconds the last start() / stop() took
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None

    # ----------------------------------------------------------- availability

    @classmethod
    @abc.abstractmethod
    def unavailable_reason(cls) -> str | None:
        """Why this server cannot run here (names the Debian package), or None."""

    @classmethod
    def available(cls) -> bool:
        """True when the server's programs are installed."""
        return cls.unavailable_reason() is None

    @classmethod
    def require(cls) -> None:
        """Raise :class:`DevServerUnavailable` when the server cannot run here."""
        reason = cls.unavailable_reason()
        if reason is not None:
            raise DevServerUnavailable(reason)

    @classmethod
    def key(cls) -> str:
        """Family and version, e.g. ``"prosody13"``: test ids, file names."""
        return f"{cls.family}{cls.version}"

    @classmethod
    def version_info(cls) -> tuple[int, ...]:
        """:attr:`version` as numbers, for comparisons: ``(0, 12)``, ``(24, 12)``."""
        return tuple(int(part) for part in cls.version.split("."))

    @classmethod
    def _install_hint(cls, what: str) -> str:
        packages = " ".join(cls.debian_packages)
        return (
            f"{cls.name} is not usable: {what}. Install the Debian package(s) "
            f"{packages} (apt-get install {packages}, or run .ci/install-system.sh)"
        )

    # ------------------------------------------------------------- properties

    @property
    def workdir(self) -> Path:
        """The folder holding config, data and logs (created on first use)."""
        self._prepare()
        assert self._workdir is not None
        return self._workdir

    @property
    def c2s_port(self) -> int:
        self._prepare()
        return self._ports[0]

    @property
    def component_port(self) -> int:
        self._prepare()
        return self._ports[1]

    @property
    def c2s_address(self) -> tuple[str, int]:
        return (self.host, self.c2s_port)

    @property
    def component_address(self) -> tuple[str, int]:
        return (self.host, self.component_port)

    @property
    def component(self) -> ComponentSpec:
        """The first (by default the only) component, ``push.<domain>``."""
        return self.components[0]

    @property
    def pid(self) -> int | None:
        """PID of the running server process, None when not running."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and not _has_exited(self._proc)

    @property
    @abc.abstractmethod
    def log_path(self) -> Path:
        """The server's own log file."""

    @property
    def console_path(self) -> Path:
        """Where the process's stdout and stderr go."""
        return self.workdir / "console.log"

    def log_text(self) -> str:
        """The server's log so far (kept in memory after stop removed the folder)."""
        if self._workdir is None or not self._workdir.exists():
            return self._final_log
        return self._read(self.log_path)

    def console_text(self) -> str:
        """What the process wrote to stdout and stderr."""
        if self._workdir is None or not self._workdir.exists():
            return self._final_console
        return self._read(self.console_path)

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe_logs(self, lines: int = 40) -> str:
        """The tails of the log and the console output, for error messages."""
        parts = [f"--- last lines of {self.log_path.name} ---", _tail(self.log_text(), lines)]
        console = self.console_text().strip()
        if console:
            parts += ["--- last lines of console output ---", _tail(console, lines // 2)]
        return "\n".join(parts)

    # ------------------------------------------------------------ subclass API

    @abc.abstractmethod
    def _write_config(self) -> None:
        """Write the config for the current ports into the workdir."""

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The argv that runs the server in the foreground."""

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    @abc.abstractmethod
    async def _create_account(self, user: str, password: str) -> None:
        """Create an account (the server may or may not be running)."""

    async def _serving(self) -> bool:
        """Once every port listens: is the server done starting? (polled)"""
        return True

    async def _after_ready(self) -> None:
        """Hook run once the server is ready."""

    # -------------------------------------------------------------- lifecycle

    def _prepare(self) -> None:
        if self._workdir is not None:
            return
        if self._given_workdir is not None:
            self._given_workdir.mkdir(parents=True, exist_ok=True)
            self._workdir = self._given_workdir.resolve()
        else:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"slixmpp-push-{self.key()}-"))
        self._ports = _free_ports(2 + self.extra_port_count, self.host)
        self._write_config()

    def _ready_ports(self) -> list[int]:
        return list(self._ports)

    async def start(self) -> None:
        """Start the server and wait until it accepts connections on every port.

        Raises :class:`DevServerError` with the log's tail when the server
        exits or is not ready within ``ready_timeout`` seconds.
        """
        if self.running:
            raise DevServerError(f"{self.name} is already running (PID {self.pid})")
        self.require()
        began = time.monotonic()
        self._prepare()
        try:
            for attempt in range(3):
                try:
                    await self._spawn_and_wait()
                    break
                except _PortCollision:
                    await self._terminate()
                    if attempt == 2:
                        raise DevServerError(
                            f"{self.name}: its ports were taken three times in a row\n"
                            + self.describe_logs()
                        ) from None
                    self._ports = _free_ports(2 + self.extra_port_count, self.host)
                    self._write_config()
                    self.log_path.unlink(missing_ok=True)
                    self.console_path.unlink(missing_ok=True)
            self._check_version()
            await self._after_ready()
        except BaseException:
            # stop() keeps the log text in memory and removes the folder
            await self.stop()
            raise
        self.start_seconds = time.monotonic() - began

    async def _spawn_and_wait(self) -> None:
        self._spawn()
        await self._wait_ready()

    def _spawn(self) -> None:
        # Popen rather than asyncio's subprocess: the process must not belong
        # to an event loop (fixtures start it in one loop, tests use another).
        command = self._command()
        # setpriv --pdeathsig: the server gets SIGTERM if this process dies
        # without stopping it (the thread that forks must outlive the server;
        # start() runs in the event loop's thread).
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            command = [setpriv, "--pdeathsig", "TERM", "--", *command]
        with open(self.console_path, "ab") as console:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._environment(),
                start_new_session=True,
            )
        _RUNNING.add(self)

    async def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.ready_timeout
        pending = set(self._ready_ports())
        while True:
            if _has_exited(proc):
                if self._collided():
                    raise _PortCollision()
                raise DevServerError(f"{self.name} exited while starting\n" + self.describe_logs())
            if self._collided():
                raise _PortCollision()
            if self._log_has(self.fatal_markers):
                raise DevServerError(f"{self.name} failed to start\n" + self.describe_logs())
            owned = _listening_ports(proc.pid)
            for port in sorted(pending):
                # A socket of this very process (not of someone who took the
                # port first) listening on the port: the kernel accepts
                # connections from now on. Without /proc, try a connection;
                # /proc is preferred because a probe connection that Prosody
                # has not seen closed yet makes its shutdown wait 1 s.
                if owned is not None:
                    ready = port in owned
                else:
                    ready = await _accepts(self.host, port)
                if ready:
                    pending.discard(port)
            if not pending and await self._serving():
                return
            if time.monotonic() > deadline:
                why = (
                    f"ports {sorted(pending)} on {self.host} not listening"
                    if pending
                    else "its ports listen, but it is still starting"
                )
                raise DevServerError(
                    f"{self.name} was not ready within {self.ready_timeout:.0f} s: {why}\n"
                    + self.describe_logs()
                )
            await asyncio.sleep(0.02)

    def _check_version(self) -> None:
        """Fail when the log announces another release than :attr:`version`."""
        if self.version_pattern is None:
            return
        found = re.search(self.version_pattern, self.log_text())
        if found is None:  # not logged at this log level
            return
        running = found.group(1)
        if running != self.version and not running.startswith(
            (f"{self.version}.", f"{self.version}-")
        ):
            raise DevServerError(
                f"{self.name}: expected release {self.version}, but it runs {running} "
                "(wrong libraries on its path?)\n" + self.describe_logs()
            )

    def _collided(self) -> bool:
        return self._log_has(self.port_collision_markers)

    def _log_has(self, markers: Iterable[str]) -> bool:
        markers = tuple(markers)
        if not markers:
            return False
        text = self.log_text() + self.console_text()
        return any(marker in text for marker in markers)

    async def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``stop_timeout``), remove its folder.

        Safe to call more than once and on a server that never started. The
        log stays readable through :meth:`log_text`. Without a given
        ``workdir`` a later start() begins afresh (new folder, ports, no accounts).
        """
        began = time.monotonic()
        await self._terminate()
        self.stop_seconds = time.monotonic() - began
        self._cleanup()

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        helpers = _descendants(proc.pid)
        if not _has_exited(proc):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            if not await self._wait_exit(proc, self.stop_timeout, self._done_stopping):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await self._wait_exit(proc, 5.0)
        if proc.returncode is None:  # unreaped: the group id cannot have been reused
            self._kill_group(proc.pid)
        # Helpers quit once the server's pipes close (and are reaped by their
        # parent then); give them a moment before killing what is left.
        deadline = time.monotonic() + 0.5
        while helpers and time.monotonic() < deadline:
            helpers = {p: t for p, t in helpers.items() if _start_time(p) == t}
            if helpers:
                await asyncio.sleep(0.01)
        for pid, start_time in helpers.items():
            _kill_if_same(pid, start_time)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1.0)
        _RUNNING.discard(self)

    def _done_stopping(self) -> bool:
        """After SIGTERM: has the server finished all that matters? (polled)

        True lets stop() SIGKILL the process instead of waiting for it to exit.
        """
        return False

    @staticmethod
    async def _wait_exit(
        proc: subprocess.Popen[bytes],
        timeout: float,
        done: Callable[[], bool] | None = None,
    ) -> bool:
        deadline = time.monotonic() + timeout
        while not _has_exited(proc):
            if time.monotonic() > deadline or (done is not None and done()):
                return False
            await asyncio.sleep(0.01)
        return True

    def _log_end(self, size: int = 4096) -> str:
        """The last ``size`` bytes of the log (cheap to poll)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - size))
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    @staticmethod
    def _kill_group(pgid: int) -> None:
        # The server runs in a session of its own: whatever else is in its
        # process group must not outlive it either.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def _kill_now(self) -> None:
        """Synchronous last resort (interpreter exit): SIGKILL and clean up."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            helpers = _descendants(proc.pid)
            self._kill_group(proc.pid)
            for pid, start_time in helpers.items():
                _kill_if_same(pid, start_time)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._workdir is None:
            return
        self._final_log = self.log_text()
        self._final_console = self.console_text()
        if self._given_workdir is None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._ports = []
        self._proc = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --------------------------------------------------------------- accounts

    async def register(self, user: str, password: str) -> str:
        """Create account ``user@domain`` with ``password``; return its bare JID.

        Works before and after :meth:`start`. Raises :class:`DevServerError`
        when the account exists or the server refuses.
        """
        if not user or "@" in user or "/" in user:
            raise ValueError(f"not a plain user name: {user!r}")
        self.require()
        self._prepare()
        await self._create_account(user, password)
        return f"{user}@{self.domain}"

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        ports = f" c2s={self._ports[0]} component={self._ports[1]}" if self._ports else ""
        return f"<{type(self).__name__} {self.domain}{ports} {state}>"


class _PortCollision(Exception):
    pass


# --------------------------------------------------------------------- Prosody


def _lua(value: object) -> str:
    """A Python value as a Lua literal (strings, numbers, booleans, lists)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = (
            value.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\n", "\\n")
            .replace("\r", "\\r")
            .replace("\0", "\\0")
        )
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "{ " + "; ".join(_lua(item) for item in value) + " }"
    raise TypeError(f"cannot write {value!r} as Lua")


class ProsodyServer(DevServer):
    """Prosody 0.12 with ``mod_cloud_notify`` (Debian ``prosody``, ``prosody-modules``).

    Options: ``push_max_errors`` (Prosody's default 16),
    ``push_notification_with_body`` / ``push_notification_with_sender``
    (send the real body / sender instead of a placeholder),
    ``smacks_hibernation_time`` (seconds a stream-management session waits
    to be resumed) and ``push_max_hibernation_timeout`` (mod_cloud_notify
    replaces the former by this, 72 h by default, for a session that enabled
    push: a test that wants such a session to expire needs both short),
    ``extra_modules`` and ``extra_config`` (raw Lua lines appended to the
    global section).
    """

    name = "Prosody"
    family = "prosody"
    version = "0.12"
    version_pattern = r"Prosody version (\S+)"
    debian_packages: ClassVar[tuple[str, ...]] = ("prosody", "prosody-modules")
    port_collision_markers = ("Failed to open server port",)
    modules: ClassVar[tuple[str, ...]] = (
        "roster",
        "saslauth",
        "disco",
        "ping",
        "carbons",
        "smacks",
        "offline",
        "mam",
        "cloud_notify",
    )
    module_dirs: ClassVar[tuple[str, ...]] = (
        "/usr/lib/prosody/modules",
        "/usr/share/prosody-modules",
        "/usr/lib/prosody-modules",
    )

    def __init__(
        self,
        *,
        push_max_errors: int | None = None,
        push_notification_with_body: bool = False,
        push_notification_with_sender: bool = False,
        smacks_hibernation_time: int | None = None,
        push_max_hibernation_timeout: int | None = None,
        extra_modules: Iterable[str] = (),
        extra_config: Iterable[str] = (),
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.push_max_errors = push_max_errors
        self.push_notification_with_body = push_notification_with_body
        self.push_notification_with_sender = push_notification_with_sender
        self.smacks_hibernation_time = smacks_hibernation_time
        self.push_max_hibernation_timeout = push_max_hibernation_timeout
        self.extra_modules = tuple(extra_modules)
        self.extra_config = tuple(extra_config)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        for program in ("prosody", "prosodyctl"):
            if shutil.which(program) is None:
                return cls._install_hint(f"'{program}' is not on PATH")
        if not cls._has_module("cloud_notify"):
            return cls._install_hint("mod_cloud_notify was not found")
        return None

    @classmethod
    def _plugin_paths(cls) -> list[str]:
        """The module folders this Prosody loads from (``plugin_paths``)."""
        return [d for d in cls.module_dirs if Path(d).is_dir()]

    @classmethod
    def _has_module(cls, module: str) -> bool:
        return any(
            Path(d, f"mod_{module}").is_dir() or Path(d, f"mod_{module}.lua").is_file()
            for d in cls._plugin_paths()
        )

    def _program(self, name: str) -> list[str]:
        """argv start of ``prosody`` / ``prosodyctl``."""
        return [name]

    @property
    def config_path(self) -> Path:
        return self.workdir / "prosody.cfg.lua"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prosody.log"

    def _write_config(self) -> None:
        work = self.workdir
        for sub in ("data", "certs"):
            (work / sub).mkdir(exist_ok=True)
        plugin_paths = self._plugin_paths()
        settings: list[tuple[str, object]] = [
            # As root, without it 0.12 refuses *and hangs*; 13 refuses and exits 1
            ("run_as_root", True),
            ("pidfile", str(work / "prosody.pid")),
            ("data_path", str(work / "data")),
            ("certificates", str(work / "certs")),
            ("plugin_paths", plugin_paths),
            ("interfaces", [self.host]),
            ("c2s_interfaces", [self.host]),
            ("component_interfaces", [self.host]),
            ("local_interfaces", [self.host]),
            ("c2s_ports", [self.c2s_port]),
            ("component_ports", [self.component_port]),
            ("c2s_direct_tls_ports", []),
            ("legacy_ssl_ports", []),
            ("http_ports", []),
            ("https_ports", []),
            # s2s is loaded even when not listed, and would bind 5269
            ("modules_disabled", ["s2s", "s2s_auth_certs"]),
            ("c2s_require_encryption", False),
            ("allow_unencrypted_plain_auth", True),
            ("authentication", "internal_hashed"),
            ("storage", "internal"),
            ("modules_enabled", [*self.modules, *self.extra_modules]),
        ]
        if self.push_max_errors is not None:
            settings.append(("push_max_errors", self.push_max_errors))
        settings.append(("push_notification_with_body", self.push_notification_with_body))
        settings.append(("push_notification_with_sender", self.push_notification_with_sender))
        if self.smacks_hibernation_time is not None:
            settings.append(("smacks_hibernation_time", self.smacks_hibernation_time))
        if self.push_max_hibernation_timeout is not None:
            settings.append(("push_max_hibernation_timeout", self.push_max_hibernation_timeout))
        lines = ["-- written by slixmpp_push.devserver; private instance, loopback only"]
        lines += [f"{key} = {_lua(value)}" for key, value in settings]
        level = {"warning": "warn"}.get(self.log_level, self.log_level)
        lines.append(
            f'log = {{ {{ levels = {{ min = {_lua(level)} }}, to = "file", '
            f"filename = {_lua(str(self.log_path))} }} }}"
        )
        lines += self.extra_config
        lines.append(f"VirtualHost {_lua(self.domain)}")
        for spec in self.components:
            lines.append(f"Component {_lua(spec.jid)}")
            lines.append(f"    component_secret = {_lua(spec.secret)}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        return [*self._program("prosody"), "--config", str(self.config_path), "-F"]

    def _environment(self) -> dict[str, str]:
        env = super()._environment()
        for key in [k for k in env if k.startswith("PROSODY")]:
            del env[key]
        return env

    def _account_file(self, user: str) -> Path:
        # Prosody's datamanager: every byte that is not a letter or a digit
        # becomes %xx; prosodyctl nodepreps (lowercases) the user first.
        def encode(text: str) -> str:
            return re.sub(
                rb"[^A-Za-z0-9]",
                lambda m: b"%%%02x" % m.group()[0],
                text.encode(),
            ).decode()

        return (
            self.workdir / "data" / encode(self.domain) / "accounts" / f"{encode(user.lower())}.dat"
        )

    async def _create_account(self, user: str, password: str) -> None:
        # prosodyctl register silently resets the password of an existing account.
        if self._account_file(user).exists():
            raise DevServerError(f"account {user}@{self.domain} already exists")
        proc = await asyncio.create_subprocess_exec(
            *self._program("prosodyctl"),
            "--config",
            str(self.config_path),
            "register",
            user,
            self.domain,
            password,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.workdir,
            env=self._environment(),
        )
        output, _ = await proc.communicate()
        if proc.returncode != 0:
            raise DevServerError(
                f"prosodyctl register {user} {self.domain} failed "
                f"(status {proc.returncode}): {output.decode(errors='replace').strip()}"
            )
