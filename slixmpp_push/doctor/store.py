"""The ``store`` check: can ``serve`` open and write its store, and does it look right?

The store is opened read-only, as ``devices list`` does, so that it can be
checked beside a running ``serve`` (whose lock on a store file is only probed,
never taken). It fails when the store cannot be opened or its folder or files
cannot be written (a database: cannot be reached, logged in to, or has a schema
this release does not read), and warns when there is no store yet, when others
may read a store file (device tokens and secrets), or when it holds
registrations of apps no longer in the config.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..config import Config
from ..errors import MissingDependency, StoreError
from ..store import PENDING, Store, create_store, is_database_url
from ..store.tinydb_store import in_use
from .report import CheckResult, failed, passed, warned


async def check_store(config: Config) -> CheckResult:
    """The store opens read-only (as ``devices list`` does, beside a running ``serve``)."""
    if is_database_url(config.store):
        return await _check_database(config)
    return await _check_file(config)


async def _check_file(config: Config) -> CheckResult:
    path = Path(config.store)
    journal = path.with_name(path.name + ".journal")
    folder = path.parent
    files = [f for f in (path, journal) if f.exists()]
    if not files:
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            return failed("store", f"no store at {path}, and its folder is not writable",
                          "let the service's user write the folder (chown)")
        return warned("store", f"no store at {path} yet: serve has never run with this config",
                      "start serve once; if it runs, [appserver] store must name the same "
                      "file as its config")
    if not os.access(folder, os.W_OK | os.X_OK):
        return failed("store", f"the folder {folder} is not writable (snapshots replace the "
                               "store there)", "let the service's user write it (chown)")
    for file in files:
        if not os.access(file, os.R_OK | os.W_OK):
            return failed("store", f"{file} is not readable and writable",
                          "chown it to the service's user and chmod 600")
    store = create_store(str(path), read_only=True)
    try:
        await store.open()
    except StoreError as exc:
        fix = ("restore the store from a backup (docs/deploy.md#backups)"
               if "schema" not in str(exc) else "run the release that wrote it")
        return failed("store", f"cannot open: {exc}", fix)
    finally:
        await store.close()
    use = "; in use by a running serve (fine: read without its lock)" if in_use(path) else ""
    loose = [f for f in files if stat.S_IMODE(f.stat().st_mode) & 0o077]
    if loose:
        mode = stat.S_IMODE(loose[0].stat().st_mode)
        return warned("store", f"{path}: {_counts(store)}{use}; {loose[0].name} has mode "
                               f"{mode:04o}: others may read device tokens and secrets",
                      f"chmod 600 {' '.join(str(f) for f in loose)} (serve does so when it "
                      "opens the store)")
    return _contents(config, str(path), store, use)


async def _check_database(config: Config) -> CheckResult:
    try:
        store = create_store(config.store, password=config.store_password, read_only=True)
    except MissingDependency as exc:
        return failed("store", str(exc), "pip install 'slixmpp-push[postgresql]'")
    try:
        await store.open()
    except StoreError as exc:
        if "newer than this release" in str(exc):
            fix = "run the release that upgraded the database, or a newer one"
        elif "store upgrade" in str(exc):
            fix = f"slixmpp-push store upgrade --config {config.source or 'FILE'}"
        else:
            fix = ("check that PostgreSQL runs and that [appserver] store (role, host, "
                   "database) and store_password_file are right (docs/deploy.md)")
        return failed("store", f"cannot open: {exc}", fix)
    finally:
        await store.close()
    from ..store.postgresql import PostgresStore  # create_store found asyncpg

    if isinstance(store, PostgresStore) and not store.schema_version:
        return warned("store", f"{config.store}: no store in this database yet: serve has "
                               "never run with this config",
                      "start serve once (it creates the tables), or run slixmpp-push store "
                      "upgrade")
    return _contents(config, config.store, store, "")


def _counts(store: Store) -> str:
    return f"{len(store)} registration(s), {len(store.table(PENDING))} pending"


def _contents(config: Config, where: str, store: Store, note: str) -> CheckResult:
    """Passed, or a warning for registrations of apps the config no longer has."""
    counts = _counts(store)
    configured = {app.id for app in config.apps}
    orphans = {app: n for app, n in store.count_by_app().items() if app not in configured}
    if orphans:
        listed = ", ".join(f"{app} ({n})" for app, n in sorted(orphans.items()))
        return warned("store", f"{where}: {counts}{note}; registrations of apps not in the "
                               f"config: {listed}",
                      "add those apps back under their provider ids, or remove the devices "
                      "(slixmpp-push devices remove NODE)")
    return passed("store", f"{where}: {counts}{note}")
