"""``slixmpp-push register | unregister | status``: the registrar for operators.

Logs in as an account, registers a token with an app server and enables push
at the account's server, so that a whole deployment can be tested without a
phone (with the console provider, the app server prints the push)::

    slixmpp-push register --jid alice@example.org --password-file pw \\
        --dialect tigase --provider tigase:messenger:apns:1 --token $(openssl rand -hex 32)
    slixmpp-push status --jid alice@example.org --password-env ALICE_PASSWORD
    slixmpp-push unregister --jid alice@example.org --password-file pw

The password comes from a file or an environment variable, never from the
command line (other users can read a process's arguments). Exit status: 0
done, 1 the server or app server refused (condition and text printed), 2 a
usage or configuration mistake.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from slixmpp import JID, ClientXMPP
from slixmpp.jid import InvalidJID

from ..client_login import ClientLogin, LoginFailed
from ..errors import ConfigError
from ..logs import short_token
from ..store import Store, TinyDBStore
from .app_server import Unregistration
from .dialects import DIALECT_NAMES, ClientRegistration
from .errors import RegistrarError
from .plugin import PushRegistrar

EXIT_XMPP = 1
DEFAULT_STORE = "~/.local/state/slixmpp-push/registrar.json"
PLUGINS = ("xep_0030", "xep_0004", "xep_0050", "push_registrar")


class _RefusePassword(argparse.Action):
    """``--password``: refused with a clear message (without echoing the value)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        parser.error("a password on the command line is refused (other users can read "
                     "it): use --password-file FILE or --password-env VARIABLE")


# -- arguments ------------------------------------------------------------------------
def add_commands(commands: Any) -> None:
    """Add ``register``, ``unregister`` and ``status`` to the ``slixmpp-push`` parser."""
    register = _command(commands, "register", "register a token and enable push",
                        cmd_register)
    register.add_argument("--token", required=True, help="the device's push token")
    register.add_argument("--voip-token", help="a second (VoIP / PushKit) token, tigase only")
    register.add_argument("--device-id", help="stable device id (p2 android-id, v1 node); "
                          "default: the stored one, or a new random one")
    register.add_argument("--push-module", help="stateless: the pushModule naming the app")
    _selectors(register, default_dialect="tigase")
    unregister = _command(commands, "unregister",
                          "disable push and unregister at the app server", cmd_unregister)
    _selectors(unregister, default_dialect=None)
    _command(commands, "status", "show push support and stored registrations", cmd_status)


def _command(commands: Any, name: str, help_text: str, run: Any) -> argparse.ArgumentParser:
    # allow_abbrev=False: "--password" must not pass as an abbreviation of anything.
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=help_text, description=help_text, allow_abbrev=False)
    parser.add_argument("--jid", required=True, help="the account, e.g. alice@example.org")
    password = parser.add_mutually_exclusive_group(required=True)
    password.add_argument("--password-file", metavar="FILE",
                          help="file holding the account's password")
    password.add_argument("--password-env", metavar="VARIABLE",
                          help="environment variable holding the account's password")
    parser.add_argument("--password", action=_RefusePassword, help=argparse.SUPPRESS)
    parser.add_argument("--host", help="connect here instead of the JID's SRV records")
    parser.add_argument("--port", type=int, default=5222, help="with --host (default 5222)")
    parser.add_argument("--plain", action="store_true",
                        help="allow an unencrypted connection (local test servers only)")
    parser.add_argument("--store", default=DEFAULT_STORE,
                        help=f"registrations file (default {DEFAULT_STORE})")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for each answer (default 10)")
    parser.set_defaults(run=run)
    return parser


def _selectors(parser: argparse.ArgumentParser, default_dialect: str | None) -> None:
    parser.add_argument("--app-server", metavar="JID",
                        help="the app server (default: discovered on the account's domain)")
    parser.add_argument("--dialect", choices=DIALECT_NAMES, default=default_dialect,
                        help="registration dialect" + (f" (default {default_dialect})"
                                                       if default_dialect else ""))
    parser.add_argument("--provider", default="",
                        help="provider id (tigase: required, e.g. tigase:messenger:apns:1)")


def read_password(args: argparse.Namespace) -> str:
    if args.password_file:
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError("--password-file", f"cannot read {args.password_file}: "
                              f"{exc.strerror}") from None
        if not password:
            raise ConfigError("--password-file", f"{args.password_file} is empty")
        return password
    password = os.environ.get(args.password_env, "")
    if not password:
        raise ConfigError("--password-env", f"${args.password_env} is not set or empty")
    return password


def account_jid(args: argparse.Namespace) -> JID:
    try:
        jid = JID(args.jid)
    except InvalidJID as exc:
        raise ConfigError("--jid", f"{args.jid!r} is not a JID: {exc}") from None
    if not jid.user:
        raise ConfigError("--jid", f"{args.jid!r} is not an account (user@domain)")
    return jid


# -- running ----------------------------------------------------------------------------
def cmd_register(args: argparse.Namespace) -> int:
    if args.dialect == "tigase" and not args.provider:
        raise ConfigError("--provider", "the tigase dialect needs a provider id")
    if args.dialect == "stateless" and not args.push_module:
        raise ConfigError("--push-module", "the stateless dialect needs a push module")
    return _run(args)


def cmd_unregister(args: argparse.Namespace) -> int:
    return _run(args)


def cmd_status(args: argparse.Namespace) -> int:
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    jid, password = account_jid(args), read_password(args)
    if not logging.getLogger().handlers:
        # The one line printed says what failed: no slixmpp log lines besides it
        # (it logs "No appropriate login method." where we explain why).
        logging.getLogger().addHandler(logging.NullHandler())
    return asyncio.run(run_async(args, jid, password))


async def run_async(args: argparse.Namespace, jid: JID, password: str) -> int:
    """Log in, do the command, log out; the exit status."""
    read_only = args.command == "status"
    store: Store = TinyDBStore(Path(args.store).expanduser(), read_only=read_only)
    xmpp: ClientXMPP | None = None
    try:
        await store.open()
        xmpp = await login(args, jid, password, store)
        registrar: PushRegistrar = xmpp["push_registrar"]
        action = {"register": _register, "unregister": _unregister, "status": _status}
        return await action[args.command](args, registrar)
    except LoginFailed as exc:
        print(f"slixmpp-push: cannot log in as {jid.bare}: {exc}", file=sys.stderr)
        return EXIT_XMPP
    except RegistrarError as exc:
        print(f"slixmpp-push: {exc}", file=sys.stderr)
        return EXIT_XMPP
    finally:
        if xmpp is not None:
            await _logout(xmpp)
        await store.close()


async def login(args: argparse.Namespace, jid: JID, password: str, store: Store,
                ) -> ClientXMPP:
    """A ClientXMPP with push_registrar (no automatic re-enabling), after session start.

    Raises :class:`LoginFailed` only once every way in has failed: each address and
    method slixmpp tries (direct TLS, then STARTTLS), each SASL mechanism."""
    config: dict[str, dict[str, Any]] = {
        "push_registrar": {"store": store, "reenable": False, "timeout": args.timeout}}
    if args.plain:
        config["feature_mechanisms"] = {"unencrypted_plain": True, "unencrypted_scram": True}
    xmpp = ClientXMPP(jid.full or jid.bare, password, plugin_config=config)
    if args.plain:
        xmpp.enable_direct_tls = xmpp.enable_starttls = False
        xmpp.enable_plaintext = True
    for plugin in PLUGINS:
        xmpp.register_plugin(plugin)
    address = (args.host, args.port) if args.host else None
    watch = ClientLogin(xmpp, address)
    if address:
        xmpp.connect(*address)
    else:
        xmpp.connect()
    try:
        await watch.wait(args.timeout + 10)
    except LoginFailed as exc:
        if exc.no_tls and not args.plain:
            raise LoginFailed(f"{exc}; a local test server without TLS: add --plain",
                              no_tls=True) from None
        raise
    return xmpp


async def _logout(xmpp: ClientXMPP) -> None:
    try:
        await asyncio.wait_for(xmpp.disconnect(wait=1.0), 3)
    except (TimeoutError, OSError):
        xmpp.abort()


def _label(registration: ClientRegistration) -> str:
    provider = f", provider {registration.provider}" if registration.provider else ""
    return f"{registration.app_server} ({registration.dialect}{provider})"


async def _register(args: argparse.Namespace, registrar: PushRegistrar) -> int:
    found = ""
    app_server = args.app_server
    if not app_server:
        app_server = str(await registrar.discover(args.provider or None))
        found = ", found by discovery"
    registration = await registrar.register(
        args.token, dialect=args.dialect, app_server=app_server, provider=args.provider,
        voip_token=args.voip_token, device_id=args.device_id, push_module=args.push_module)
    print(f"registered {registration.account} with {_label(registration)}{found}: "
          f"node {registration.node}")
    print(f"enabled push at {JID(registration.account).domain}: it now notifies "
          f"{registration.target} on node {registration.node}")
    return 0


async def _unregister(args: argparse.Namespace, registrar: PushRegistrar) -> int:
    chosen = registrar.find(args.app_server or None, args.dialect, args.provider or None)
    if not chosen:
        print(f"slixmpp-push: no stored registration of {registrar.account} matches "
              f"(see 'slixmpp-push status')", file=sys.stderr)
        return EXIT_XMPP
    for registration in chosen:
        outcome = await registrar.unregister(registration)
        print(f"{_unregistered(registration, outcome)}: node {registration.node}")
    return 0


def _unregistered(registration: ClientRegistration, outcome: Unregistration) -> str:
    """What an unregistration did, claiming at the app server only what happened there."""
    disabled = f"disabled push at {JID(registration.account).domain}"
    account, app_server = registration.account, _label(registration)
    if outcome is Unregistration.REMOVED:
        return f"{disabled} and unregistered {account} from {app_server}"
    if outcome is Unregistration.NOT_REGISTERED:
        return (f"{disabled}; {account} was no longer registered with {app_server}, which "
                "answered item-not-found")
    return (f"{disabled} for {account}; {app_server} keeps no registration in this dialect, "
            "nothing to unregister")


async def _status(args: argparse.Namespace, registrar: PushRegistrar) -> int:
    domain = registrar.xmpp.boundjid.domain
    supported = await registrar.supported()
    print(f"{domain} {'supports' if supported else 'does NOT support'} push (urn:xmpp:push:0)")
    registrations = registrar.registrations()
    if not registrations:
        print(f"no registrations stored for {registrar.account} in {args.store}")
    for registration in registrations:
        enabled = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(registration.enabled_at))
                   if registration.enabled_at else "never")
        print(f"{_label(registration)}: node {registration.node}, "
              f"token {short_token(registration.token)}, last enabled {enabled}")
    return 0
