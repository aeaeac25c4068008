"""Whether the store can write, and how long its journal is (for /health and metrics).

A full disk under a storm of requests fails every write, and each failure
used to be logged with a traceback (1.2 MB of log a second). Here failures
are logged once per condition (the error text), summed up at most once every
:data:`LOG_INTERVAL` seconds while they go on, and the recovery is logged
with the count::

    ERROR   store write failed: cannot write …/store.json.journal: [Errno 28] No space …
    ERROR   store still not writable: 4120 more failed write(s): cannot write …
    WARNING store writable again after 5230 failed write(s) in 75 s
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger("slixmpp_push.store")

#: A condition already logged is logged again (as a count) at most this often.
LOG_INTERVAL = 60.0
MIB = 1024 * 1024


@dataclass(slots=True)
class StoreStatus:
    """The store's write health; the store updates it, /health and /metrics read it."""

    writable: bool = True
    error: str = ""  # the failure that made it unwritable (kept until it recovers)
    failing_since: float = 0.0  # wall clock of the first failure of this spell
    failed_writes: int = 0  # writes refused in this spell
    failed_writes_total: int = 0  # since start (a Prometheus counter)
    journal_bytes: int = 0
    journal_limit: int = 0  # /health is not ready above it; 0: no bound
    compaction_error: str = ""  # the last compaction failure, until one succeeds
    _logged_error: str = field(default="", repr=False)
    _logged_at: float = field(default=-LOG_INTERVAL, repr=False)  # monotonic
    _logged_failures: int = field(default=0, repr=False)
    _spell_logged: bool = field(default=False, repr=False)

    # -- updates (the store calls these) -------------------------------------------------
    def write_failed(self, error: str, *, writes: int = 1) -> None:
        """``writes`` writes were refused with ``error`` (0: the store found out by itself
        that it cannot write, as a database store does when its connection is lost)."""
        now = time.monotonic()
        new_spell = self.writable
        if new_spell:
            self.writable = False
            self.failing_since = time.time()
            self.failed_writes = 0
            self._logged_failures = 0
            self._spell_logged = False
        self.error = error
        self.failed_writes += writes
        self.failed_writes_total += writes
        recent = error == self._logged_error and now - self._logged_at < LOG_INTERVAL
        if error != self._logged_error or (new_spell and not recent):
            log.error("store write failed: %s (writes that need the store are answered "
                      "'wait' until it is fixed; more failures are counted, not logged)", error)
        elif not recent:
            # The same condition goes on: a count once a minute. A spell that flaps
            # (writable for a moment, then failing again) is summed up here too.
            log.error("store still not writable: %d more failed write(s): %s",
                      self.failed_writes - self._logged_failures, error)
        else:
            return
        self._logged_error = error
        self._logged_at = now
        self._logged_failures = self.failed_writes
        self._spell_logged = True

    def write_succeeded(self) -> None:
        """A write (or the store's probe) succeeded: writable again."""
        if self.writable:
            return
        self.writable = True
        if self._spell_logged:
            log.warning("store writable again after %d failed write(s) in %.0f s",
                        self.failed_writes, time.time() - self.failing_since)
        self.error = ""

    # -- reading -------------------------------------------------------------------------
    @property
    def journal_over(self) -> bool:
        return bool(self.journal_limit) and self.journal_bytes > self.journal_limit

    def problem(self) -> str:
        """Why the store makes the app server not ready ("" when it does not)."""
        if not self.writable:
            return f"store not writable: {self.error}"
        if self.journal_over:
            why = f": compaction fails: {self.compaction_error}" if self.compaction_error \
                else ""
            return (f"store journal is {self.journal_bytes / MIB:.1f} MiB, above its bound of "
                    f"{self.journal_limit / MIB:.1f} MiB{why}")
        return ""

    def details(self) -> dict[str, object]:
        """The ``store`` part of /health."""
        return {"writable": self.writable, "error": self.error,
                "failing_since": self.failing_since if not self.writable else None,
                "failed_writes": self.failed_writes if not self.writable else 0,
                "journal_bytes": self.journal_bytes, "journal_limit": self.journal_limit,
                "compaction_error": self.compaction_error}
