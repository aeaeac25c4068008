"""Private ejabberd and Prosody 13 launchers for the tests.

The demo needs only the system Prosody (:class:`slixmpp_push.devserver.ProsodyServer`),
which ships in the package; what only the tests start lives here: the system
ejabberd 23.01 (:class:`EjabberdServer`) and the two servers unpacked from
Debian bookworm-backports, Prosody 13 (:class:`Prosody13Server`) and ejabberd
24.12 (:class:`Ejabberd2412Server`). See :mod:`slixmpp_push.devserver` for how
every instance is run (temporary folder, loopback, stopped by PID).

``.ci/install-system.sh`` installs the system packages and then runs
``.ci/install-backports.sh``, which unpacks the pinned backports packages
(``apt-get download`` with a private apt configuration, ``dpkg -x``) into the
private prefix: :func:`servers_prefix`, the environment variable
``SLIXMPP_PUSH_SERVERS`` or else ``/opt/slixmpp-push-servers``
(``prosody13/`` and ``ejabberd24.12/`` below it). Nothing there is registered
with dpkg or replaces a system file, so both versions of each server run side
by side. How a private server is kept apart from the system one:

- Prosody 13: Debian's launcher has its folders baked in
  (``CFG_SOURCEDIR='/usr/lib/prosody'``, which would load the system 0.12
  sources); the install step patches the unpacked ``usr/bin/prosody`` and
  ``prosodyctl`` to read ``PROSODY_SRCDIR``, ``PROSODY_PLUGINDIR``,
  ``PROSODY_CFGDIR`` and ``PROSODY_DATADIR`` like an unconfigured upstream
  launcher, and :class:`Prosody13Server` sets them to the private tree (the
  workdir for config and data). Its ``plugin_paths`` name only the private
  modules folder, where the backports ``prosody-modules`` unpacks too; 0.12's
  ``plugin_paths`` name only the system folders. The system Lua libraries
  (``lua5.4``, ``lua-expat``, ``lua-sec``…) serve both.
- ejabberd 24.12: ``ERL_LIBS`` names only the private
  ``usr/lib/<multiarch>`` (``ejabberd-24.12…``) and ``usr/lib/erlang/lib``
  (``p1_xml-1.1.55``…). Erlang puts ``ERL_LIBS`` before its own lib folder
  (where bookworm's older ``p1_*`` live), so the private applications win.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from slixmpp_push.devserver import DevServer, DevServerError, ProsodyServer

__all__ = [
    "Ejabberd2412Server",
    "EjabberdServer",
    "Prosody13Server",
    "servers_prefix",
]

#: environment variable naming the folder .ci/install-backports.sh unpacks into
SERVERS_PREFIX_ENV = "SLIXMPP_PUSH_SERVERS"
DEFAULT_SERVERS_PREFIX = "/opt/slixmpp-push-servers"
#: the script that installs the private servers (named in error messages)
BACKPORTS_SCRIPT = ".ci/install-backports.sh"


def servers_prefix() -> Path:
    """Where the private (backports) servers are unpacked.

    ``$SLIXMPP_PUSH_SERVERS`` when set, else ``/opt/slixmpp-push-servers``.
    """
    return Path(os.environ.get(SERVERS_PREFIX_ENV) or DEFAULT_SERVERS_PREFIX)


class _PrivateInstall:
    """A server unpacked by ``.ci/install-backports.sh`` into :func:`servers_prefix`."""

    #: folder below the prefix
    subdir: ClassVar[str] = ""
    #: the pinned packages, as the install script names them
    backports_packages: ClassVar[tuple[str, ...]] = ()
    name: ClassVar[str]

    @classmethod
    def root(cls) -> Path:
        """The unpacked tree (``<prefix>/<subdir>``)."""
        return servers_prefix() / cls.subdir

    @classmethod
    def _install_hint(cls, what: str) -> str:
        return (
            f"{cls.name} is not usable: {what}. Run {BACKPORTS_SCRIPT} (or "
            f".ci/install-system.sh): it unpacks Debian bookworm-backports "
            f"{', '.join(cls.backports_packages)} into {cls.root()} "
            f"(the folder above it comes from ${SERVERS_PREFIX_ENV}, "
            f"default {DEFAULT_SERVERS_PREFIX})"
        )

    @classmethod
    def _installed_stamp_reason(cls) -> str | None:
        """Why the unpacked tree is not the pinned one, or None."""
        stamp = cls.root() / ".installed"
        try:
            installed = set(stamp.read_text().split())
        except OSError:
            return f"{stamp} is missing"
        wrong = [p for p in cls.backports_packages if p not in installed]
        if wrong:
            return f"{cls.root()} does not hold {', '.join(wrong)}"
        return None


class Prosody13Server(_PrivateInstall, ProsodyServer):
    """Prosody 13.0.1 (core ``mod_cloud_notify``) from Debian bookworm-backports.

    Runs the unpacked ``<prefix>/prosody13/usr/bin/prosody`` (launcher patched
    by the install step to take its folders from ``PROSODY_*``) with the
    unpacked sources and modules, and the system's Lua 5.4 libraries. Loads
    modules only from the private tree: core ``mod_cloud_notify`` and, from the
    backports ``prosody-modules`` 0.0~hg20250402 (unpacked into the same
    folder), ``mod_cloud_notify_extensions`` (= ``_encrypted``,
    ``_priority_tag``, ``_filters``: the Tigase extensions Siskin and Snikket
    ask for), enabled unless ``cloud_notify_extensions=False``.

    The options are those of :class:`ProsodyServer`.
    """

    name = "Prosody 13"
    version = "13"
    subdir = "prosody13"
    backports_packages = (
        "prosody=13.0.1-1~bpo12+1",
        "prosody-modules=0.0~hg20250402.f315edc39f3d+dfsg-1~bpo12+1",
    )
    debian_packages: ClassVar[tuple[str, ...]] = ()  # none: see _install_hint

    def __init__(self, *, cloud_notify_extensions: bool = True, **options: Any) -> None:
        super().__init__(**options)
        self.cloud_notify_extensions = cloud_notify_extensions
        if cloud_notify_extensions and "cloud_notify_extensions" not in self.extra_modules:
            self.extra_modules = ("cloud_notify_extensions", *self.extra_modules)

    @classmethod
    def _modules_dir(cls) -> Path:
        return cls.root() / "usr" / "lib" / "prosody" / "modules"

    @classmethod
    def _plugin_paths(cls) -> list[str]:
        return [str(cls._modules_dir())]

    @classmethod
    def unavailable_reason(cls) -> str | None:
        launcher = cls.root() / "usr" / "bin" / "prosody"
        if not launcher.is_file():
            return cls._install_hint(f"{launcher} is missing")
        if shutil.which("lua5.4") is None:
            return cls._install_hint("'lua5.4' is not on PATH")
        reason = cls._installed_stamp_reason()
        if reason is not None:
            return cls._install_hint(reason)
        for module in ("cloud_notify", "cloud_notify_extensions"):
            if not cls._has_module(module):
                return cls._install_hint(f"mod_{module} is not in {cls._modules_dir()}")
        return None

    def _program(self, name: str) -> list[str]:
        # lua5.4 explicitly: the launcher's "#!/usr/bin/env lua5.4" would
        # depend on PATH just the same, this says which interpreter runs it.
        lua = shutil.which("lua5.4") or "lua5.4"
        return [lua, str(self.root() / "usr" / "bin" / name)]

    def _environment(self) -> dict[str, str]:
        env = super()._environment()
        env.update(
            {
                "PROSODY_SRCDIR": str(self.root() / "usr" / "lib" / "prosody"),
                "PROSODY_PLUGINDIR": f"{self._modules_dir()}/",
                "PROSODY_CFGDIR": str(self.workdir),
                "PROSODY_DATADIR": str(self.workdir / "data"),
            }
        )
        return env


# -------------------------------------------------------------------- ejabberd


def _erlang_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class EjabberdServer(DevServer):
    """ejabberd 23.01 with ``mod_push`` (Debian ``ejabberd``).

    Runs the node directly with ``erl`` (not ``ejabberdctl``, which would
    switch user and start epmd on 0.0.0.0:4369): no Erlang distribution, one
    process. Accounts are created through ``mod_http_api`` on a third
    loopback port that only accepts ``register``/``unregister`` from
    127.0.0.0/8 (and ``status``, polled to know when start-up is over).

    Options: ``push_include_body`` (``mod_push`` ``include_body``: True, False
    or a placeholder text; ejabberd's default is the text "New message"),
    ``push_include_sender`` (``include_sender``), ``resume_timeout``
    (``mod_stream_mgmt``, seconds), ``extra_modules`` (module name → options,
    merged over the defaults), ``extra_config`` (top-level options).
    """

    name = "ejabberd"
    family = "ejabberd"
    version = "23.01"
    version_pattern = r"ejabberd (\S+) is started"
    debian_packages: ClassVar[tuple[str, ...]] = ("ejabberd",)
    port_collision_markers = ("eaddrinuse", "address already in use")
    # ejabberd logs this and then idles instead of exiting
    fatal_markers = ("Failed to start ejabberd application",)
    extra_port_count = 1

    def __init__(
        self,
        *,
        push_include_body: bool | str | None = None,
        push_include_sender: bool = False,
        resume_timeout: int | None = None,
        extra_modules: Mapping[str, Mapping[str, Any]] | None = None,
        extra_config: Mapping[str, Any] | None = None,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.push_include_body = push_include_body
        self.push_include_sender = push_include_sender
        self.resume_timeout = resume_timeout
        self.extra_modules = dict(extra_modules or {})
        self.extra_config = dict(extra_config or {})
        self._pending_accounts: list[tuple[str, str]] = []

    @classmethod
    def _erl_libs(cls) -> str | None:
        """``ERL_LIBS``: the folder holding ``ejabberd-<version>/`` (Debian: multiarch lib dir)."""
        override = os.environ.get("EJABBERD_ERL_LIBS")
        if override:
            return override
        for app in sorted(glob.glob("/usr/lib/*/ejabberd-*/ebin/ejabberd.app")) + sorted(
            glob.glob("/usr/lib/ejabberd-*/ebin/ejabberd.app")
        ):
            return str(Path(app).parents[2])
        return None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if shutil.which("erl") is None:
            return cls._install_hint("Erlang's 'erl' is not on PATH")
        if cls._erl_libs() is None:
            return cls._install_hint("ejabberd's Erlang application was not found")
        return None

    @property
    def http_port(self) -> int:
        """The loopback port of the HTTP API used to create accounts."""
        self._prepare()
        return self._ports[2]

    @property
    def config_path(self) -> Path:
        return self.workdir / "ejabberd.yml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "log" / "ejabberd.log"

    def _config(self) -> dict[str, Any]:
        loopback_only = {"ip": "127.0.0.0/8"}
        push: dict[str, Any] = {"include_sender": self.push_include_sender}
        if self.push_include_body is not None:
            push["include_body"] = self.push_include_body
        stream_mgmt: dict[str, Any] = {}
        if self.resume_timeout is not None:
            stream_mgmt["resume_timeout"] = self.resume_timeout
        modules: dict[str, Any] = {
            "mod_roster": {},
            "mod_disco": {},
            "mod_ping": {},
            "mod_carboncopy": {},
            "mod_offline": {},
            "mod_mam": {},
            "mod_stream_mgmt": stream_mgmt,
            "mod_push": push,
            "mod_http_api": {},
        }
        modules.update(self.extra_modules)
        config: dict[str, Any] = {
            "hosts": [self.domain],
            "loglevel": self.log_level,
            "log_rotate_count": 0,
            "certfiles": [],
            "acme": {"auto": False},
            "s2s_access": "none",
            "auth_method": "internal",
            "auth_password_format": "scram",
            "listen": [
                {
                    "port": self.c2s_port,
                    "ip": self.host,
                    "module": "ejabberd_c2s",
                    "backlog": 1024,  # ejabberd's default is 5
                    "starttls_required": False,
                    "max_stanza_size": 262144,
                },
                {
                    "port": self.component_port,
                    "ip": self.host,
                    "module": "ejabberd_service",
                    "backlog": 1024,  # ejabberd's default is 5
                    "hosts": {spec.jid: {"password": spec.secret} for spec in self.components},
                },
                {
                    "port": self.http_port,
                    "ip": self.host,
                    "module": "ejabberd_http",
                    "backlog": 1024,  # ejabberd's default is 5
                    "request_handlers": {"/api": "mod_http_api"},
                },
            ],
            "acl": {"loopback": loopback_only},
            "api_permissions": {
                "devserver accounts": {
                    "from": ["mod_http_api"],
                    "who": loopback_only,
                    "what": ["register", "unregister", "status"],
                }
            },
            "shaper_rules": {"max_user_offline_messages": 5000, "max_user_sessions": 100},
            "modules": modules,
        }
        config.update(self.extra_config)
        return config

    def _write_config(self) -> None:
        (self.workdir / "log").mkdir(exist_ok=True)
        (self.workdir / "spool").mkdir(exist_ok=True)
        # Hosts only from the hosts file: no DNS, and no inet_gethost helper.
        (self.workdir / "inetrc").write_text(
            '{lookup, [file]}.\n{host, {127,0,0,1}, ["localhost"]}.\n'
        )
        # JSON is valid YAML, and needs no YAML quoting rules.
        self.config_path.write_text(json.dumps(self._config(), indent=2) + "\n")

    def _command(self) -> list[str]:
        return [
            "erl",
            "-noinput",  # implies -noshell
            "-mnesia",
            "dir",
            _erlang_string(str(self.workdir / "spool")),
            "-s",
            "ejabberd",
        ]

    def _environment(self) -> dict[str, str]:
        env = super()._environment()
        for key in [k for k in env if k.startswith(("ERL_", "EJABBERD_"))]:
            del env[key]
        libs = self._erl_libs()
        assert libs is not None
        env.update(
            {
                "HOME": str(self.workdir),  # so a ~/.erlang of the user is not run
                "ERL_LIBS": libs,
                "ERL_INETRC": str(self.workdir / "inetrc"),
                "ERL_CRASH_DUMP": str(self.workdir / "erl_crash.dump"),
                "EJABBERD_CONFIG_PATH": str(self.config_path),
                "EJABBERD_LOG_PATH": str(self.log_path),
            }
        )
        return env

    def _done_stopping(self) -> bool:
        # After SIGTERM ejabberd has stopped in ~20 ms, but the Erlang VM's
        # init:stop() takes another second to exit. In a temporary folder
        # that is deleted next, nothing is lost by not waiting for it.
        return self._given_workdir is None and "is stopped in the node" in self._log_end()

    async def _serving(self) -> bool:
        # ejabberd binds its ports early in its start-up but accepts
        # connections only once every module is loaded: ask the HTTP API.
        try:
            status, _ = await self._api("status", {}, timeout=0.5)
        except DevServerError:
            return False
        return status == 200

    async def _after_ready(self) -> None:
        pending, self._pending_accounts = self._pending_accounts, []
        for user, password in pending:
            await self._api_register(user, password)

    async def _create_account(self, user: str, password: str) -> None:
        if self.running:
            await self._api_register(user, password)
        else:
            self._pending_accounts.append((user, password))

    async def _api_register(self, user: str, password: str) -> None:
        status, body = await self._api(
            "register", {"user": user, "host": self.domain, "password": password}
        )
        if status != 200:
            raise DevServerError(f"ejabberd register {user}@{self.domain} failed: {status} {body}")

    async def _api(
        self, command: str, arguments: Mapping[str, Any], timeout: float = 10.0
    ) -> tuple[int, str]:
        """POST one ``mod_http_api`` command; return (HTTP status, body)."""
        body = json.dumps(arguments).encode()
        request = (
            f"POST /api/{command} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.http_port}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body

        async def exchange() -> bytes:
            reader, writer = await asyncio.open_connection(self.host, self.http_port)
            try:
                writer.write(request)
                await writer.drain()
                return await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

        try:
            raw = await asyncio.wait_for(exchange(), timeout)
        except (TimeoutError, OSError) as exc:
            raise DevServerError(f"ejabberd HTTP API /api/{command}: {exc!r}") from exc
        head, _, payload = raw.partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise DevServerError(f"ejabberd HTTP API: unreadable reply {raw[:200]!r}") from None
        return status, payload.decode(errors="replace")


class Ejabberd2412Server(_PrivateInstall, EjabberdServer):
    """ejabberd 24.12 (``mod_push``) from Debian bookworm-backports.

    Runs bookworm's ``erl`` (OTP 25, which 24.12 accepts) with ``ERL_LIBS`` at
    the unpacked ``<prefix>/ejabberd24.12/usr/lib/<multiarch>`` (ejabberd
    itself) and ``usr/lib/erlang/lib`` (``erlang-p1-*`` and ``erlang-jose`` in
    the versions 24.12 needs, newer than bookworm's). ``ERL_LIBS`` comes before
    OTP's lib folder in the code path, so these win over the system's older
    copies; the libraries bookworm has in a new enough version (lager, jiffy,
    idna, OTP…) come from the system. ``EJABBERD_ERL_LIBS`` is not read.

    c2s offers PLAIN only (``disable_sasl_mechanisms``, unless given in
    ``extra_config``): over plain TCP 24.12 rejects the SCRAM login of a client
    that supports channel binding (see :meth:`_config`).

    The options are those of :class:`EjabberdServer`.
    """

    name = "ejabberd 24.12"
    version = "24.12"
    subdir = "ejabberd24.12"
    backports_packages = ("ejabberd=24.12-3~bpo12+1", "erlang-p1-xmpp=1.9.4-1~bpo12+1")
    debian_packages: ClassVar[tuple[str, ...]] = ()  # none: see _install_hint

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        # p1_xmpp 1.9.4's SCRAM fails the final step when the client's gs2 flag
        # is "y" (client can bind, server offered no -PLUS), which is what a
        # binding-capable client such as slixmpp sends over this plain TCP
        # ("Invalid channel binding"). With TLS, where -PLUS is offered, it
        # does not arise. Offer PLAIN only, unless the caller set the option.
        if "disable_sasl_mechanisms" not in self.extra_config:
            config["disable_sasl_mechanisms"] = ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"]
        return config

    @classmethod
    def _erl_libs(cls) -> str | None:
        root = cls.root()
        apps = sorted(
            glob.glob(str(root / "usr" / "lib" / "*" / "ejabberd-24.12*" / "ebin" / "ejabberd.app"))
        )
        libs = root / "usr" / "lib" / "erlang" / "lib"
        if not apps or not libs.is_dir():
            return None
        return f"{Path(apps[-1]).parents[2]}:{libs}"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if shutil.which("erl") is None:
            return cls._install_hint("Erlang's 'erl' is not on PATH")
        if cls._erl_libs() is None:
            return cls._install_hint(f"ejabberd 24.12 was not found in {cls.root()}")
        reason = cls._installed_stamp_reason()
        if reason is not None:
            return cls._install_hint(reason)
        return None
