"""The ``store`` check: can ``serve`` open and write its store, and does it look right?

The store is opened read-only, as ``devices list`` does, so that it can be
checked beside a running ``serve`` (whose lock is only probed, never taken).
It fails when the store cannot be opened or its folder or files cannot be
written, and warns when there is no store yet, when others may read it (device
tokens and secrets), or when it holds registrations of apps no longer in the
config.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from ..config import Config
from ..errors import StoreError
from .report import CheckResult, failed, passed, warned


def _store_locked(path: Path) -> bool:
    """Whether a process (a running ``serve``) holds the store's lock.

    Probed with a shared, non-blocking flock that is released at once.
    """
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the lock, if we got it
    return False


async def check_store(config: Config) -> CheckResult:
    """The store opens read-only (as ``devices list`` does, beside a running ``serve``)."""
    from ..store import TinyDBStore

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
    store = TinyDBStore(path, read_only=True)
    try:
        await store.open()
        registrations = len(store)
        pending = len(store.table("pending"))
        by_app = store.count_by_app()
    except StoreError as exc:
        fix = ("restore the store from a backup (docs/deploy.md#backups)"
               if "schema" not in str(exc) else "run the release that wrote it")
        return failed("store", f"cannot open: {exc}", fix)
    finally:
        await store.close()
    locked = _store_locked(path)
    counts = f"{registrations} registration(s), {pending} pending"
    use = "; in use by a running serve (fine: read without its lock)" if locked else ""
    loose = [f for f in files if stat.S_IMODE(f.stat().st_mode) & 0o077]
    if loose:
        mode = stat.S_IMODE(loose[0].stat().st_mode)
        return warned("store", f"{path}: {counts}{use}; {loose[0].name} has mode {mode:04o}: "
                               "others may read device tokens and secrets",
                      f"chmod 600 {' '.join(str(f) for f in loose)} (serve does so when it "
                      "opens the store)")
    configured = {app.id for app in config.apps}
    orphans = {app: n for app, n in by_app.items() if app not in configured}
    if orphans:
        listed = ", ".join(f"{app} ({n})" for app, n in sorted(orphans.items()))
        return warned("store", f"{path}: {counts}{use}; registrations of apps not in the "
                               f"config: {listed}",
                      "add those apps back under their provider ids, or remove the devices "
                      "(slixmpp-push devices remove NODE)")
    return passed("store", f"{path}: {counts}{use}")
