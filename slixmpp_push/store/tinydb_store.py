"""The default store: a TinyDB file plus an append-only journal.

TinyDB rewrites its whole file on every write (O(n), and not atomic), so
writes go to ``<file>.journal`` instead: one JSON line per change, appended
and fsynced by a single writer thread that commits every change queued
meanwhile in one go (group commit). Once the journal is long, the tables are
written as a fresh TinyDB snapshot — temp file, fsync, ``os.replace``, fsync of
the folder — and the journal starts over. Loading replays the journal over the
snapshot; replay is idempotent, and a torn last line (a crash mid-append)
is ignored, because it was never acknowledged.

Files are created with mode 0600: they hold device tokens and secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tinydb.storages import Storage

from ..errors import StoreError
from .base import TABLES, Op, Store

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
META_TABLE = "_meta"
TEMP_PREFIX = ".slixmpp-push-"
FILE_MODE = 0o600


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        if not text.strip():
            return None
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
        return data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        folder = self.path.parent
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, separators=(",", ":"))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        _fsync_dir(folder)

    def close(self) -> None:
        pass


class TinyDBStore(Store):
    """Registrations and the pending-notification queue in one TinyDB file."""

    def __init__(self, path: str | os.PathLike[str], *, compact_after: int = 20_000,
                 read_only: bool = False) -> None:
        super().__init__()
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
        self._opening: asyncio.Future[None] | None = None
        self._broken = False  # a failed write could not be undone: no more writes

    # -- loading ------------------------------------------------------------
    async def open(self) -> None:
        # Several plugins may open the store at once (session start): one load.
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open_once())
        try:
            await asyncio.shield(self._opening)
        except BaseException:
            if self._opening.done():
                self._opening = None  # a failed open may be tried again
            raise

    async def _open_once(self) -> None:
        if self._opened:
            return
        loop = asyncio.get_running_loop()
        tables = await loop.run_in_executor(self._executor, self._load_sync)
        self._load_tables(tables)
        self._opened = True
        if self.read_only:
            return
        self._wakeup = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="push-store-writer")

    async def _load(self) -> dict[str, dict[str, dict[str, Any]]]:  # pragma: no cover
        raise NotImplementedError  # open() loads in the writer thread

    def _load_sync(self) -> dict[str, dict[str, dict[str, Any]]]:
        try:
            return self._load_files()
        except PermissionError as exc:  # a clear message, not a traceback
            raise StoreError(f"{exc.filename}: permission denied (the store needs read and "
                             "write access to its folder and files)") from None
        except OSError as exc:
            raise StoreError(f"{exc.filename or self.path}: {exc.strerror or exc}") from None

    def _load_files(self) -> dict[str, dict[str, dict[str, Any]]]:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store folder {folder}: {exc}") from exc
        if not self.read_only:
            self._take_lock()
            for stray in folder.glob(TEMP_PREFIX + "*"):
                stray.unlink(missing_ok=True)
        tables: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in TABLES}
        if self.path.exists():
            if not self.read_only:
                os.chmod(self.path, FILE_MODE)
            # Read through TinyDB's storage layer rather than Table.all(): the
            # file is the same, without wrapping 100k documents in Document objects.
            try:
                data = AtomicJSONStorage(self.path).read() or {}
            except (ValueError, OSError) as exc:
                raise StoreError(f"{self.path} is not a readable store: {exc}") from exc
            meta = list(data.get(META_TABLE, {}).values())
            schema = meta[0].get("schema") if meta and isinstance(meta[0], dict) else None
            if schema != SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema version {schema!r} is not supported "
                                 f"(this version reads {SCHEMA_VERSION})")
            for name in TABLES:
                table = tables[name]
                for doc in data.get(name, {}).values():
                    key = doc.pop("_key", None) if isinstance(doc, dict) else None
                    if isinstance(key, str):
                        table[key] = doc
        replayed = self._replay_journal(tables)
        if self.read_only:
            return tables
        self._journal = self._open_journal()
        self._journal_lines = replayed
        return tables

    def _replay_journal(self, tables: dict[str, dict[str, dict[str, Any]]]) -> int:
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
            except ValueError:
                if number >= len(lines) - 1:
                    # The last line was torn by a crash: never acknowledged, drop it
                    # (and cut it off, unless we only read).
                    log.warning("store journal: ignoring a torn last entry")
                    if not self.read_only:
                        self._truncate_journal_to(raw, line)
                    break
                raise StoreError(f"{self.journal_path}: line {number} is corrupt") from None
            if table not in tables:
                continue
            if doc is None:
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
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._queue = self._queue, []
            if batch:
                data = b"".join(line for lines, _ in batch for line in lines)
                try:
                    await loop.run_in_executor(self._executor, self._append, data)
                except Exception as exc:  # disk full, I/O error: fail these writes
                    log.error("store: cannot write %s: %s", self.journal_path, exc)
                    error = StoreError(f"cannot write {self.journal_path}: {exc}")
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(error)
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
                    self._journal_lines += sum(len(lines) for lines, _ in batch)
            if self._journal_lines >= self.compact_after:
                await self._compact()
            if self._closed and not self._queue:
                return

    def _append(self, data: bytes) -> None:
        if self._broken:
            raise StoreError(f"{self.journal_path} could not be repaired after a failed write")
        fd = self._journal.fileno()
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked (disk full, quota)
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError:
            # Cut the partial batch off, so the next append does not glue onto a
            # torn line; if even that fails, refuse every further write.
            try:
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError:
                self._broken = True
            raise

    async def _compact(self) -> None:
        # Copy on the loop thread: documents are replaced, never mutated, so a
        # shallow copy of each table is a consistent snapshot.
        snapshot = {name: dict(self._tables[name]) for name in TABLES}
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._compact_sync, snapshot)
        except Exception as exc:
            log.error("store: compaction of %s failed (journal kept): %s", self.path, exc)
            return
        self._journal_lines = 0

    def _compact_sync(self, snapshot: dict[str, dict[str, dict[str, Any]]]) -> None:
        data: dict[str, dict[str, Any]] = {META_TABLE: {"1": {"schema": SCHEMA_VERSION}}}
        for name, docs in snapshot.items():
            data[name] = {str(i): {**doc, "_key": key}
                          for i, (key, doc) in enumerate(docs.items(), start=1)}
        AtomicJSONStorage(self.path).write(data)
        # The snapshot holds everything the journal did: start it over.
        self._journal.close()
        with open(self.journal_path, "wb") as handle:
            os.fsync(handle.fileno())
        self._journal = self._open_journal()

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
