"""``slixmpp-push store``: the database's schema, and copying a store between back ends.

    slixmpp-push store upgrade --config FILE
    slixmpp-push store migrate --from SRC --to DST [--force]
                               [--from-password-file FILE] [--to-password-file FILE]

``upgrade`` applies the schema migrations a PostgreSQL store lacks (``serve`` does it
too when it starts). ``migrate`` copies every table of a store, a TinyDB file or a
``postgresql://`` URL, to another, reads the copy back and compares it with the source.
A password never goes in the URL: ``--from-password-file``/``--to-password-file``, or
libpq's ``PGPASSWORD`` and ``~/.pgpass``. Stop ``serve`` first: a TinyDB store in use is
refused, and what a running server writes during the copy would not be in it. A
destination that holds anything is refused unless ``--force``, which replaces it.

Exit status: 0 done, 1 a store error, 2 a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import load_store_settings
from .errors import StoreError
from .store import Store, create_store, is_database_url
from .store.base import TABLES
from .store.tinydb_store import in_use

EXIT_USAGE = 2
Tables = dict[str, dict[str, dict[str, Any]]]


def add_commands(subparsers: Any) -> None:
    """Add ``store upgrade`` and ``store migrate`` to the ``slixmpp-push`` subcommands."""
    store = subparsers.add_parser(
        "store", help="upgrade a PostgreSQL store's schema, copy a store to another",
        description="Upgrade the schema of a PostgreSQL store, or copy a store (a TinyDB "
                    "file or a postgresql:// URL) to another.")
    actions = store.add_subparsers(dest="action", required=True)
    upgrade = actions.add_parser(
        "upgrade", help="apply the schema migrations the configured database lacks",
        description="Apply the schema migrations the configured PostgreSQL store lacks "
                    "(serve does it too when it starts).")
    upgrade.add_argument("--config", "-c", required=True)
    migrate = actions.add_parser(
        "migrate", help="copy every table of a store to another",
        description="Copy every table of a store to another, then read the copy back and "
                    "compare. Stop serve first.")
    migrate.add_argument("--from", dest="source", required=True, metavar="SRC",
                         help="a TinyDB file or a postgresql:// URL")
    migrate.add_argument("--to", dest="destination", required=True, metavar="DST",
                         help="a TinyDB file or a postgresql:// URL")
    migrate.add_argument("--force", action="store_true",
                         help="replace what the destination holds")
    migrate.add_argument("--from-password-file", metavar="FILE",
                         help="the source database's password (else PGPASSWORD, ~/.pgpass)")
    migrate.add_argument("--to-password-file", metavar="FILE",
                         help="the destination database's password")
    store.set_defaults(run=cmd_store)


def cmd_store(args: argparse.Namespace) -> int:
    if args.action == "upgrade":
        return asyncio.run(_upgrade(args.config))
    try:
        source = _Side(args.source, args.from_password_file, "--from")
        destination = _Side(args.destination, args.to_password_file, "--to")
    except ValueError as exc:
        return _usage(str(exc))
    if source.same_as(destination):
        return _usage("--from and --to name the same store")
    return asyncio.run(_migrate(source, destination, args.force))


def _usage(problem: str) -> int:
    print(f"slixmpp-push store: {problem}", file=sys.stderr)
    return EXIT_USAGE


async def _upgrade(config: str) -> int:
    location, password = load_store_settings(config)
    if not is_database_url(location):
        print(f"{location}: a TinyDB store has no schema to upgrade")
        return 0
    store = create_store(location, password=password)
    from .store.postgresql import PostgresStore  # create_store checked that asyncpg is there

    assert isinstance(store, PostgresStore)
    before, after = await store.upgrade()
    state = f"upgraded from {before}" if before != after else "up to date"
    print(f"{store.where}: schema version {after}, {state}")
    return 0


class _Side:
    """One end of a copy: where it is, and the password of a database."""

    def __init__(self, location: str, password_file: str | None, option: str) -> None:
        self.database = is_database_url(location)
        self.location = location if self.database else str(Path(location).expanduser())
        self.password: str | None = None
        if password_file is not None:
            if not self.database:
                raise ValueError(f"{option}-password-file is only used with a "
                                 "postgresql:// URL")
            try:
                self.password = Path(password_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"{option}-password-file: cannot read {password_file}: "
                                 f"{exc}") from None
            if not self.password:
                raise ValueError(f"{option}-password-file: {password_file} is empty")

    def same_as(self, other: _Side) -> bool:
        if self.database or other.database:
            return self.location == other.location
        return Path(self.location).resolve() == Path(other.location).resolve()

    def store(self, read_only: bool) -> Store:
        return create_store(self.location, password=self.password, read_only=read_only)


async def _migrate(source: _Side, destination: _Side, force: bool) -> int:
    tables = await _read_source(source)
    target = destination.store(read_only=False)
    await target.open()
    try:
        held = _counts({name: target.table(name) for name in TABLES})
        if held and not force:
            return _usage(f"{destination.location} is not empty ({held}): add --force to "
                          "replace what it holds")
        await target.replace_all(tables)
    finally:
        await target.close()
    copy = destination.store(read_only=True)
    await copy.open()
    try:
        for name in TABLES:
            if copy.table(name) != tables[name]:
                key = next(k for k in sorted({*copy.table(name), *tables[name]})
                           if copy.table(name).get(k) != tables[name].get(k))
                raise StoreError(f"the copy in {destination.location} differs from the source "
                                 f"in {name} {key!r}")
    finally:
        await copy.close()
    print(f"copied {_counts(tables) or 'an empty store'} from {source.location} to "
          f"{destination.location} (read back: identical)")
    return 0


async def _read_source(source: _Side) -> Tables:
    if not source.database:
        path = Path(source.location)
        if not path.exists() and not path.with_name(path.name + ".journal").exists():
            raise StoreError(f"no store at {path}")
        if in_use(path):
            raise StoreError(f"{path} is in use by a running serve: stop it first, or what "
                             "it writes during the copy is lost")
    store = source.store(read_only=True)
    await store.open()
    try:
        if source.database:
            from .store.postgresql import PostgresStore

            if isinstance(store, PostgresStore) and not store.schema_version:
                raise StoreError(f"{source.location} holds no slixmpp-push store (no "
                                 "schema_version table)")
        return {name: dict(store.table(name)) for name in TABLES}
    finally:
        await store.close()


def _counts(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """``3 registrations, 1 pending, …`` for the tables that hold anything."""
    return ", ".join(f"{len(docs)} {name.replace('_', ' ')}"
                     for name, docs in tables.items() if docs)
