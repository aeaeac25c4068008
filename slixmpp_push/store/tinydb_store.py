"""The default store: a TinyDB file plus an append-only journal.

TinyDB rewrites its whole file on every write (O(n), and not atomic), so
writes go to ``<file>.journal`` instead: one JSON line per change, appended
and fsynced by a single writer thread that commits every change queued
meanwhile in one go (group commit). Once the journal is long, the tables are
written as a fresh TinyDB snapshot — temp file, fsync, ``os.replace``, fsync of
the folder — and the journal starts over. Loading replays the journal over the
snapshot; replay is idempotent, and a torn last line (a crash mid-append)
is ignored, because it was never acknowledged.
The snapshot is read and written one document at a time (:mod:`.snapshot`):
registrations become objects as they are read, with no second copy of the store
in memory.

A write that fails (disk full, I/O error) fails the requests waiting on it,
and the journal is cut back so that the next append starts on a clean line.
The failure is logged once per condition (:class:`~.status.StoreStatus`);
while writes fail, the writer probes every :data:`PROBE_INTERVAL` seconds, so
that the store is reported writable again once space is freed, traffic or not.
A failed compaction is retried after an exponential backoff, not at every
write batch (each try rewrites the whole store), or as soon as the disk has
room for a snapshot again; meanwhile the journal keeps every change, and
/health is not ready once it is longer than ``journal_limit``.

Files are created with mode 0600: they hold device tokens and secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from tinydb.storages import Storage

from ..errors import StoreError
from .base import (
    REGISTRATIONS,
    TABLES,
    Loaded,
    LoadedRegistrations,
    Op,
    Store,
    collections_paused,
)
from .files import FILE_MODE, replace_file
from .packed import FrozenRegistrations
from .packed_cache import SnapshotMeter, read_cache, write_cache
from .snapshot import META_TABLE, IrregularSnapshot, read_snapshot, snapshot_chunks
from .status import MIB

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TEMP_PREFIX = ".slixmpp-push-"
#: /health is not ready once the journal is longer: compaction keeps failing (a
#: healthy journal is emptied every ``compact_after`` lines, about 10 MB).
JOURNAL_LIMIT = 64 * MIB
#: After a failed compaction the next try waits this long, doubling up to
#: COMPACT_MAX_DELAY (or until the disk has room for a snapshot again).
COMPACT_FIRST_DELAY = 1.0
COMPACT_MAX_DELAY = 600.0
#: While writes fail, the store checks this often whether it can write again,
#: writing (and removing) PROBE_BYTES: more than the slack of a file's last block,
#: which takes a journal line or two even on a full disk.
PROBE_INTERVAL = 5.0
PROBE_BYTES = 64 * 1024
SPACE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def in_use(path: str | os.PathLike[str]) -> bool:
    """Whether a process (a running ``serve``) holds the lock of the store at ``path``.

    Probed with a shared, non-blocking flock that is released at once.
    """
    store = Path(path)
    try:
        fd = os.open(store.with_name(store.name + ".lock"), os.O_RDONLY)
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


class AtomicJSONStorage(Storage):
    """A TinyDB storage whose writes replace the file atomically (mode 0600)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Any]] | None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            return None
        return self.parse(text)

    @staticmethod
    def parse(text: str) -> dict[str, dict[str, Any]] | None:
        """The database in ``text`` (None: blank); ValueError if it is none."""
        if not text.strip():
            return None
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
        return data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        self.write_with(lambda handle: json.dump(data, handle, separators=(",", ":")))

    def write_chunks(self, chunks: Iterable[str]) -> None:
        """Replace the file with the concatenation of ``chunks``."""
        self.write_with(lambda handle: handle.writelines(chunks))

    def write_with(self, fill: Callable[[IO[str]], None]) -> None:
        """Replace the file with what ``fill`` writes to the text handle it is given."""
        replace_file(self.path, fill, temp_prefix=TEMP_PREFIX)
        _fsync_dir(self.path.parent)

    def close(self) -> None:
        pass


class TinyDBStore(Store):
    """Registrations and the pending-notification queue in one TinyDB file."""

    def __init__(self, path: str | os.PathLike[str], *, compact_after: int = 20_000,
                 read_only: bool = False, journal_limit: int | None = None) -> None:
        super().__init__()
        self.status.journal_limit = JOURNAL_LIMIT if journal_limit is None else journal_limit
        self.path = Path(path)
        self.read_only = read_only
        self._lock: Any = None
        self.journal_path = self.path.with_name(self.path.name + ".journal")
        self.compact_after = compact_after
        self._journal_lines = 0
        self._journal: Any = None  # binary file object, owned by the writer thread
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="push-store")
        self._queue: list[tuple[list[bytes], asyncio.Future[None]]] = []
        self._wakeup: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        # Where the journal must be cut back to before the next append: a failed
        # append whose partial batch could not be cut off at once.
        self._torn_at: int | None = None
        self._snapshot_bytes = 0
        # Compaction backoff: 0.0 while compactions succeed.
        self._compact_delay = 0.0
        self._compact_at = 0.0  # loop time of the next try
        self._room_wanted = 0  # free bytes worth an early try (after a disk-full failure)
        self._room_checked = 0.0

    # -- loading ------------------------------------------------------------
    async def _load(self) -> Loaded:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._load_sync)

    async def _loaded(self) -> None:
        if self.read_only:
            return
        self._wakeup = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="push-store-writer")

    def _load_sync(self) -> Loaded:
        try:
            with collections_paused():
                return self._load_files()
        except PermissionError as exc:  # a clear message, not a traceback
            raise StoreError(f"{exc.filename}: permission denied (the store needs read and "
                             "write access to its folder and files)") from None
        except OSError as exc:
            raise StoreError(f"{exc.filename or self.path}: {exc.strerror or exc}") from None

    def _load_files(self) -> Loaded:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store folder {folder}: {exc}") from exc
        if not self.read_only:
            self._take_lock()
            for stray in folder.glob(TEMP_PREFIX + "*"):
                stray.unlink(missing_ok=True)
        loaded = Loaded({name: {} for name in TABLES if name != REGISTRATIONS})
        tables, registrations = loaded.documents, loaded.registrations
        if self.path.exists():
            if not self.read_only:
                os.chmod(self.path, FILE_MODE)
            self._snapshot_bytes = self.path.stat().st_size
            try:
                data = self._read_snapshot(registrations)
            except PermissionError:  # not a damaged store: say what access it needs
                access = "read" if self.read_only else "read and write"
                raise StoreError(f"{self.path}: permission denied (the store needs {access} "
                                 "access to its folder and files)") from None
            except (ValueError, OSError) as exc:
                raise StoreError(f"{self.path} is not a readable store: {exc}") from exc
            # A JSON object of another shape is no store either: one line, no traceback.
            shapeless = [name for name in (META_TABLE, *TABLES)
                         if not isinstance(data.get(name, {}), dict)]
            if shapeless:
                raise StoreError(f"{self.path} is not a readable store: table "
                                 f"{shapeless[0]!r} is not an object")
            meta = list(data.get(META_TABLE, {}).values())
            schema = meta[0].get("schema") if meta and isinstance(meta[0], dict) else None
            if schema != SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema version {schema!r} is not supported "
                                 f"(this version reads {SCHEMA_VERSION})")
            for name, table in tables.items():
                for doc in data.get(name, {}).values():
                    key = doc.pop("_key", None) if isinstance(doc, dict) else None
                    if isinstance(key, str):
                        table[key] = doc
        replayed = self._replay_journal(tables, registrations)
        if self.read_only:
            return loaded
        self._journal = self._open_journal()
        self._journal_lines = replayed
        self.status.journal_bytes = os.fstat(self._journal.fileno()).st_size
        return loaded

    def _read_snapshot(self, registrations: LoadedRegistrations) -> dict[str, Any]:
        """The snapshot's top-level object, with its registrations (when that table is
        an object) taken into ``registrations`` instead. Read neither through TinyDB's
        Table.all() (a Document object for each of 100k) nor with one ``json.load``
        (a dictionary for each, then the objects), but with :mod:`.snapshot`."""
        with open(self.path, "rb") as handle:
            raw = handle.read()
        text = raw.decode("utf-8")
        if not text.strip():
            return {}
        cached = read_cache(self.path, raw)
        if cached is None:
            registrations.reserve(text.count('"_key":'))  # at most one per document
            span = None
        else:
            registrations.table, span = cached
        try:
            return read_snapshot(text, registrations, span)
        except IrregularSnapshot:  # parsed whole, which says what is wrong, if anything
            registrations.clear()
        data: dict[str, Any] = AtomicJSONStorage.parse(text) or {}
        if isinstance(data.get(REGISTRATIONS), dict):
            for doc in data.pop(REGISTRATIONS).values():
                key = doc.pop("_key", None) if isinstance(doc, dict) else None
                if isinstance(key, str):
                    registrations.put(key, doc)
        return data

    def _replay_journal(self, tables: dict[str, dict[str, dict[str, Any]]],
                        registrations: LoadedRegistrations) -> int:
        try:
            raw = self.journal_path.read_bytes()
        except FileNotFoundError:
            return 0
        lines = raw.split(b"\n")
        count = 0
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                table, key, doc = json.loads(line)
                if not isinstance(table, str):
                    raise TypeError("the table name is not a string")
            except (ValueError, TypeError):  # not JSON, or not [table, key, doc]
                if number >= len(lines) - 1:
                    # The last line was torn by a crash: never acknowledged, drop it
                    # (and cut it off, unless we only read).
                    log.warning("store journal: ignoring a torn last entry")
                    if not self.read_only:
                        self._truncate_journal_to(raw, line)
                    break
                raise StoreError(f"{self.journal_path}: line {number} is corrupt") from None
            if table == REGISTRATIONS:
                if doc is None:
                    registrations.delete(key)
                else:
                    registrations.put(key, doc)
            elif table not in tables:
                continue
            elif doc is None:
                tables[table].pop(key, None)
            else:
                tables[table][key] = doc
            count += 1
        return count

    def _take_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{self.path} is in use by another process "
                             "(stop the running server first)") from None
        self._lock = fd

    def _truncate_journal_to(self, raw: bytes, torn: bytes) -> None:
        keep = raw.rfind(torn)
        with open(self.journal_path, "r+b") as handle:
            handle.truncate(keep)
            os.fsync(handle.fileno())

    def _open_journal(self) -> Any:
        fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, "ab", buffering=0)

    # -- writing ------------------------------------------------------------
    async def _persist(self, ops: list[Op]) -> None:
        if self.read_only:
            raise StoreError(f"{self.path} was opened read-only")
        if self._closed or self._wakeup is None:
            raise StoreError("the store is closed")
        lines = [json.dumps(op, separators=(",", ":")).encode() + b"\n" for op in ops]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((lines, done))
        self._wakeup.set()
        await done

    async def _write_loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if self.status.writable:
                await self._wakeup.wait()
            else:
                # Once space is freed nothing may come to write: find out by ourselves.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), PROBE_INTERVAL)
            self._wakeup.clear()
            batch, self._queue = self._queue, []
            if batch:
                data = b"".join(line for lines, _ in batch for line in lines)
                try:
                    await loop.run_in_executor(self._executor, self._append, data)
                except Exception as exc:  # disk full, I/O error: fail these writes
                    # Not logged here: StoreStatus logs each condition once.
                    error = StoreError(f"cannot write {self.journal_path}: {exc}")
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(error)
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
                    self._journal_lines += sum(len(lines) for lines, _ in batch)
                    self.status.journal_bytes += len(data)
            elif not self.status.writable and not self._closed:
                await self._probe()
            if self._journal_lines >= self.compact_after and await self._compaction_due():
                await self._compact()
            if self._closed and not self._queue:
                return

    def _append(self, data: bytes) -> None:
        fd = self._journal.fileno()
        if self._torn_at is not None:
            # Never append after a torn line: it would be corrupt in mid-journal.
            os.ftruncate(fd, self._torn_at)
            os.fsync(fd)
            self._torn_at = None
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked (disk full, quota)
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError:
            # Cut the partial batch off, so the next append does not glue onto a
            # torn line; if even that fails, the next append tries it first.
            try:
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError:
                self._torn_at = start
            raise

    async def _probe(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._probe_sync)
        except OSError:
            return  # still failing: counted by the next real write, not logged
        self.status.write_succeeded()

    def _probe_sync(self) -> None:
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.path.parent)
        try:
            view = memoryview(bytes(PROBE_BYTES))
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(temp)

    def _free_bytes(self) -> int:
        stat = os.statvfs(self.path.parent)
        return stat.f_bavail * stat.f_frsize

    async def _compaction_due(self) -> bool:
        """Not at every write batch after a failure: each try rewrites the whole store."""
        if not self._compact_delay:
            return True
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self._compact_at:
            return True
        if not self._room_wanted or now - self._room_checked < 1.0:
            return False
        self._room_checked = now
        free = await loop.run_in_executor(self._executor, self._free_bytes)
        return free >= self._room_wanted

    async def _compact(self) -> None:
        # Copy on the loop thread: documents and registrations are replaced, never
        # mutated, so a shallow copy of each table is a consistent snapshot.
        snapshot = {name: dict(table) for name, table in self._tables.items()}
        registrations = self._registrations.frozen()
        loop = asyncio.get_running_loop()
        try:
            size = await loop.run_in_executor(self._executor, self._compact_sync, snapshot,
                                              registrations)
        except Exception as exc:
            await self._compaction_failed(exc)
            return
        if self._compact_delay:
            log.warning("store: compaction of %s succeeded again; journal emptied (%d bytes)",
                        self.path, self.status.journal_bytes)
        self._compact_delay = 0.0
        self._room_wanted = 0
        self.status.compaction_error = ""
        self._snapshot_bytes = size
        self._journal_lines = 0
        self.status.journal_bytes = 0

    async def _compaction_failed(self, exc: Exception) -> None:
        loop = asyncio.get_running_loop()
        self._compact_delay = min(COMPACT_MAX_DELAY,
                                  max(COMPACT_FIRST_DELAY, self._compact_delay * 2))
        self._compact_at = loop.time() + self._compact_delay
        self._room_wanted = 0
        if isinstance(exc, OSError) and exc.errno in SPACE_ERRORS:
            # Try early once there is room for a snapshot, and more room than now.
            with contextlib.suppress(OSError):
                free = await loop.run_in_executor(self._executor, self._free_bytes)
                estimate = self._snapshot_bytes or self.status.journal_bytes
                self._room_wanted = max(free, estimate) + MIB
        self.status.compaction_error = str(exc)
        log.error("store: compaction of %s failed (journal kept, %d bytes; next try in "
                  "%.0f s%s): %s", self.path, self.status.journal_bytes, self._compact_delay,
                  ", or once there is room" if self._room_wanted else "", exc)

    def _compact_sync(self, snapshot: dict[str, dict[str, dict[str, Any]]],
                      registrations: FrozenRegistrations) -> int:
        meter = SnapshotMeter()
        AtomicJSONStorage(self.path).write_chunks(
            snapshot_chunks(SCHEMA_VERSION, snapshot, registrations, meter))
        write_cache(self.path, meter, registrations, TEMP_PREFIX)
        # The snapshot holds everything the journal did: start it over (in place:
        # the append-only descriptor then writes from 0, nothing to reopen).
        fd = self._journal.fileno()
        os.ftruncate(fd, 0)
        os.fsync(fd)
        self._torn_at = None
        return self.path.stat().st_size

    async def compact(self) -> None:
        """Write a snapshot now and empty the journal."""
        await self._compact()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._wakeup is not None and self._writer is not None:
            self._wakeup.set()
            await self._writer
            if self._journal_lines:  # else the snapshot is already complete
                await self._compact()
        if self._journal is not None:
            self._journal.close()
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None
        self._executor.shutdown(wait=True)
