"""``slixmpp-push``: run and operate the push app server.

    slixmpp-push serve --config FILE        run the app server
    slixmpp-push check-config --config FILE validate a config without connecting (or: FILE)
    slixmpp-push doctor --config FILE       check a deployment: XMPP, Apple/Google, store, clock
    slixmpp-push devices list --config FILE
    slixmpp-push devices remove NODE --config FILE
    slixmpp-push store upgrade --config FILE   apply a PostgreSQL store's schema migrations
    slixmpp-push store migrate --from SRC --to DST   copy a store (TinyDB file, postgresql:// URL)
    slixmpp-push demo                       a self-contained demo on a private Prosody
    slixmpp-push --version

Exit status: 0 success, 1 failure at run time, 2 bad configuration or usage (the
XMPP server refusing the app server's login at start-up included: a wrong secret,
port or name).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

from .config import LOG_LEVELS, Config, load_config
from .errors import ConfigError, LoginRefused, MissingDependency, StoreError
from .logs import setup_logging, short_token
from .preflight import check_startup

EXIT_RUNTIME = 1
EXIT_CONFIG = 2


def _load(path: str) -> Config:
    return load_config(path)


class UsageError(Exception):
    """A command line that argparse accepts but the command cannot run."""


def cmd_check_config(args: argparse.Namespace) -> int:
    if args.file and args.config:
        raise UsageError("give the config file once: FILE or --config FILE, not both")
    if not (args.file or args.config):
        raise UsageError("which config file? check-config --config FILE")
    args.config = args.config or args.file
    config = _load(args.config)
    notes = check_startup(config)
    asyncio.run(_check_store_readable(config))
    print(f"{args.config}: OK — {config.xmpp.mode} {config.xmpp.jid}, "
          f"apps: {', '.join(f'{a.id} ({a.type})' for a in config.apps)}, store {config.store}")
    for note in notes:
        print(f"  note: {note}")
    return 0


async def _check_store_readable(config: Config) -> None:
    """Load an existing store file read-only, as ``serve`` will (a StoreError names the
    file); no lock is taken, so this works beside the running service. A database is
    not connected to (``doctor`` does that): its driver must be installed."""
    from .store import TinyDBStore, create_store

    store = create_store(config.store, password=config.store_password, read_only=True)
    if not isinstance(store, TinyDBStore):
        return
    if not store.path.exists() and not store.journal_path.exists():
        return  # serve creates it
    await store.open()
    await store.close()


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    setup_logging(args.log_level or config.log_level, config.log_format)
    from .server import serve

    asyncio.run(serve(config))
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from .config import load_store_settings
    from .store import create_store

    location, password = load_store_settings(args.config)

    async def run() -> int:
        store = create_store(location, password=password, read_only=args.action == "list")
        await store.open()
        try:
            if args.action == "list":
                rows = sorted(store.registrations(), key=lambda r: (r.account, r.created))
                for r in rows:
                    token = short_token(r.token)
                    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.updated))
                    print(f"{r.node}\t{r.account}\t{r.app}\t{r.dialect.value}\t{token}\t{when}")
                print(f"{len(rows)} registration(s), {len(store.table('pending'))} pending",
                      file=sys.stderr)
                return 0
            removed = await store.remove(args.node)
            if removed is None:
                print(f"no registration with node {args.node!r}", file=sys.stderr)
                return EXIT_RUNTIME
            await store.set_doc("pending", args.node, None)
            print(f"removed {removed.node} of {removed.account}")
            return 0
        finally:
            await store.close()

    return asyncio.run(run())


def cmd_doctor(args: argparse.Namespace) -> int:
    import logging

    from .doctor import run_doctor

    if not logging.getLogger().handlers:
        # The report says what went wrong: no library warnings on stderr besides it.
        logging.getLogger().addHandler(logging.NullHandler())
    report = asyncio.run(run_doctor(args.config, args.timeout))
    print(report.json() if args.json else report.text())
    return report.exit_status


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return asyncio.run(run_demo(keep_running=args.keep_running))


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value!r}")
    return number


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("slixmpp-push")
    except PackageNotFoundError:  # run from a checkout that was never installed
        from . import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slixmpp-push", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the app server")
    serve.add_argument("--config", "-c", required=True)
    # Any case, as [logging] level takes it.
    serve.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                       help="overrides [logging] level: " + ", ".join(LOG_LEVELS))
    serve.set_defaults(run=cmd_serve)
    check = commands.add_parser(
        "check-config", help="validate a config file",
        description="Validate a config file without connecting: FILE or --config FILE.")
    check.add_argument("file", nargs="?", metavar="FILE", help="the config file")
    check.add_argument("--config", "-c", help="the config file (instead of FILE)")
    check.set_defaults(run=cmd_check_config)
    devices = commands.add_parser("devices", help="list or remove registrations")
    devices_actions = devices.add_subparsers(dest="action", required=True)
    listing = devices_actions.add_parser("list")
    listing.add_argument("--config", "-c", required=True)
    remove = devices_actions.add_parser("remove")
    remove.add_argument("node")
    remove.add_argument("--config", "-c", required=True)
    devices.set_defaults(run=cmd_devices)
    doctor = commands.add_parser(
        "doctor", help="check a deployment: XMPP login, Apple/Google credentials, store, clock")
    doctor.add_argument("--config", "-c", required=True)
    doctor.add_argument("--timeout", type=_positive, default=10.0,
                        help="seconds for each network check (default 10)")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(run=cmd_doctor)
    demo = commands.add_parser("demo", help="run the self-contained demo")
    demo.add_argument("--keep-running", action="store_true",
                      help="keep the demo servers up until Ctrl-C")
    demo.set_defaults(run=cmd_demo)
    from .notice_cli import add_commands as add_notice_commands

    add_notice_commands(commands)
    from .store_cli import add_commands as add_store_commands

    add_store_commands(commands)
    from .registrar.cli import add_commands

    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except UsageError as exc:
        print(f"slixmpp-push {args.command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as exc:
        print(f"slixmpp-push: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except LoginRefused as exc:
        print(f"slixmpp-push: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except MissingDependency as exc:
        print(f"slixmpp-push: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as exc:
        print(f"slixmpp-push: store error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
