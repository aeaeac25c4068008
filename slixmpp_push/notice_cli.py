"""``slixmpp-push notify``: an administrator notice from the command line.

    slixmpp-push notify --config FILE (--account JID ... | --domain D | --everyone)
                        --title TEXT [--body TEXT] [--priority high] [--yes]

Works with the server stopped (a store file is locked while it runs; then use
the ad-hoc command ``send-notification``): it opens the store, builds the
providers of the apps it needs and sends through the same delivery engine as
the server. What cannot be delivered now stays pending in the store, and the
server delivers it when it starts (a PostgreSQL store may be open in a running
server too, but that server leaves these pending ones to its next start). Dead
tokens are removed (the accounts' servers learn it at their next publish).
Progress goes to stderr, the summary line to stdout. Exit status: 0 when
nothing failed, 1 otherwise, 2 on a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from typing import Any, TextIO

from .appserver.delivery import Delivery, Submitted
from .appserver.notices import (
    DEFAULT_PRIORITY,
    PRIORITIES,
    NoticeSummary,
    bare_jid,
    select_registrations,
    send_notice,
)
from .config import Config, DeliveryPolicy, load_config
from .errors import DeliveryResult, StoreError
from .models import Notification, Priority, Registration
from .providers import Provider, create_provider
from .store import Store, create_store

EXIT_FAILED = 1
EXIT_USAGE = 2


def add_commands(subparsers: Any) -> None:
    """Add ``notify`` to the ``slixmpp-push`` subcommands."""
    notify = subparsers.add_parser(
        "notify", help="send an administrator notice to registered devices",
        description="Send a notification to the registered devices of accounts, of "
                    "domains or of everyone, whether or not they are online.")
    notify.add_argument("--config", "-c", required=True)
    notify.add_argument("--account", action="append", default=[], metavar="JID",
                        help="an account whose devices get the notice (repeatable)")
    notify.add_argument("--domain", action="append", default=[], metavar="DOMAIN",
                        help="every account of this domain (repeatable)")
    notify.add_argument("--everyone", action="store_true", help="every registered device")
    notify.add_argument("--title", required=True)
    notify.add_argument("--body", help="shown only by apps with include_body = true")
    notify.add_argument("--priority", choices=PRIORITIES, default=DEFAULT_PRIORITY.value)
    notify.add_argument("--yes", "-y", action="store_true",
                        help="do not ask before sending to everyone")
    notify.set_defaults(run=cmd_notify)


def cmd_notify(args: argparse.Namespace) -> int:
    if not (args.account or args.domain or args.everyone):
        return _usage("choose --account, --domain or --everyone")
    if not args.title.strip():
        return _usage("--title must not be empty")
    try:
        accounts = [bare_jid(account) for account in args.account]
    except ValueError as exc:
        return _usage(f"--account: {exc}")
    config = load_config(args.config)  # a ConfigError exits with status 2 in main()
    return asyncio.run(_notify(config, args, accounts))


def _usage(problem: str) -> int:
    print(f"slixmpp-push notify: {problem}", file=sys.stderr)
    return EXIT_USAGE


async def _notify(config: Config, args: argparse.Namespace, accounts: list[str]) -> int:
    store = create_store(config.store, password=config.store_password)
    try:
        await store.open()
    except StoreError as exc:
        print(f"slixmpp-push notify: {exc}\nWhile the server runs, send the notice with its "
              "ad-hoc command 'send-notification' ([appserver] admins).", file=sys.stderr)
        return EXIT_FAILED
    try:
        targets = select_registrations(store, accounts, args.domain, args.everyone)
        if not targets:
            print("no registered device matches", file=sys.stderr)
            print(NoticeSummary().line())
            return 0
        if args.everyone and not args.yes and not await _confirm(len(targets), args.title):
            return EXIT_FAILED if sys.stdin.isatty() else EXIT_USAGE
        summary = await _send(config, store, targets, args)
    finally:
        await store.close()
    print(summary.line())
    if summary.queued:
        print(f"{summary.queued} notification(s) stay pending in the store; the server "
              "delivers them when it starts", file=sys.stderr)
    return 0 if summary.failed == 0 else EXIT_FAILED


async def _confirm(count: int, title: str) -> bool:
    if not sys.stdin.isatty():
        print(f"slixmpp-push notify: --everyone reaches all {count} registered device(s): "
              "confirm with --yes", file=sys.stderr)
        return False
    answer = await asyncio.to_thread(
        input, f"Send {title!r} to all {count} registered device(s)? [y/N] ")
    if answer.strip().lower() in ("y", "yes"):
        return True
    print("nothing sent", file=sys.stderr)
    return False


async def _send(config: Config, store: Store, targets: list[Registration],
                args: argparse.Namespace) -> NoticeSummary:
    needed = {registration.app for registration in targets}
    apps = [app for app in config.apps if app.id in needed]
    gone = sorted(needed - {app.id for app in apps})
    if gone:
        # The delivery engine counts these as failed; say why before the summary does.
        skipped = sum(1 for registration in targets if registration.app in gone)
        print(f"{skipped} device(s) of app(s) no longer in the config ({', '.join(gone)}): "
              "not sent, counted as failed", file=sys.stderr)
    providers: dict[str, Provider] = {}
    try:
        for app in apps:
            providers[app.id] = provider = create_provider(app)
            await provider.start()
        # Wait for each provider's own timeout, so that the summary is final
        # rather than "queued" for every slow answer.
        wait = max([config.delivery.reply_within, *(app.timeout + 1.0 for app in apps)])
        local = LocalNotifier(store, providers,
                              dataclasses.replace(config.delivery, reply_within=wait))
        print(f"sending {args.title!r} to {len(targets)} device(s)", file=sys.stderr)
        try:
            return await send_notice(local, targets, args.title, args.body,
                                     Priority(args.priority), ProgressBar(sys.stderr))
        finally:
            await local.delivery.stop()
    finally:
        for provider in providers.values():
            await provider.close()


class LocalNotifier:
    """The app server's delivery engine without XMPP, for the command line."""

    def __init__(self, store: Store, providers: dict[str, Provider],
                 policy: DeliveryPolicy) -> None:
        self.store = store
        self.delivery = Delivery(store, providers, policy, self._on_dead_token)

    async def notify(self, registration: Registration, notification: Notification,
                     ) -> Submitted:
        return await self.delivery.submit(registration, notification)

    async def _on_dead_token(self, registration: Registration, result: DeliveryResult,
                             ) -> None:
        # Only stored registrations are selected (never Monal's stateless ones).
        await self.store.remove(registration.node)


class ProgressBar:
    """A text progress bar redrawn in place; a line every 10% when not on a terminal."""

    WIDTH = 30

    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._shown = -1 if self.tty else 0  # last percent drawn, or last tenth printed

    def __call__(self, done: int, total: int) -> None:
        percent = done * 100 // total if total else 100
        if self.tty:
            if percent == self._shown:
                return
            self._shown = percent
            filled = self.WIDTH * percent // 100
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            end = "\n" if done >= total else ""
            self.stream.write(f"\r[{bar}] {percent:3d}% {done}/{total}{end}")
        else:
            if percent // 10 <= self._shown:
                return
            self._shown = percent // 10
            self.stream.write(f"{percent}% ({done}/{total})\n")
        self.stream.flush()
