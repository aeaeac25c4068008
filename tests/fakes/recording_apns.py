"""The fake APNs in a process of its own, writing down every answer it gives.

For tests in which app servers crash and take over from each other: what counts is
what Apple would have accepted (once, or twice), whichever process sent it, and the
fake outlives them all. Run by :class:`fakes.control.FakeProcess`::

    async with FakeProcess("fakes.recording_apns", "--ca-dir", folder,
                           "--record", record_file) as fake:
        await fake.command("outage 503 ServiceUnavailable")
        await fake.command("outage off")
        record = RecordedAnswers(record_file)
        record.answers()      # [(status, token, payload), ...] so far
        record.delivered()    # [(token, payload), ...] of those answered 200
        record.delivered_at() # [(token, payload, time.time() of the answer), ...]

It prints ``PORT <n>``; clients trust ``<ca-dir>/ca.pem``. Each request answered
appends one line ``STATUS TOKEN TIME PAYLOAD`` (the wall clock of the answer, the
payload's JSON) to the record file,
flushed at once. Commands: those of :mod:`fakes.fake_apns`, and ``outage STATUS
REASON`` or ``outage off``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .control import serve_commands
from .fake_apns import FakeApns, _commands
from .tls import TestCA

__all__ = ["RecordedAnswers", "RecordingApns"]


class RecordingApns(FakeApns):
    """The fake APNs, appending each answer it decides to ``record``."""

    def __init__(self, ca: TestCA, record: TextIO, **options: Any) -> None:
        super().__init__(ca, verify_client=False, **options)
        self.record = record

    def _decide(self, headers: dict[str, str], token: str, body: bytes,
                ) -> tuple[int, str, int | None]:
        status, reason, retry_after = super()._decide(headers, token, body)
        payload = body.decode(errors="replace").replace("\n", " ") or "null"
        self.record.write(f"{status} {token or '-'} {time.time():.6f} {payload}\n")
        self.record.flush()
        return status, reason, retry_after


class RecordedAnswers:
    """The test's side: the record file, read again at each call."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def answers(self) -> list[tuple[int, str, Any]]:
        """(status, token, payload) per answer, in order (a last line the fake is still
        writing is left for the next read)."""
        return [(status, token, body) for status, token, _, body in self._lines()]

    def delivered(self) -> list[tuple[str, Any]]:
        """(token, payload) of each request answered 200, in order."""
        return [(token, payload) for token, payload, _ in self.delivered_at()]

    def delivered_at(self) -> list[tuple[str, Any, float]]:
        """(token, payload, wall clock of the answer) of each request answered 200."""
        return [(token, body, at) for status, token, at, body in self._lines()
                if status == 200]

    def _lines(self) -> list[tuple[int, str, float, Any]]:
        lines = []
        text = self.path.read_text() if self.path.exists() else ""
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            status, token, at, payload = line.rstrip("\n").split(" ", 3)
            try:
                body = json.loads(payload)
            except ValueError:
                body = None
            lines.append((int(status), token, float(at), body))
        return lines


def _outage(fake: FakeApns) -> Callable[[list[str]], str]:
    def outage(args: list[str]) -> str:
        if args == ["off"]:
            fake.end_outage()
        else:
            status, reason = args
            fake.set_outage(int(status), reason)
        return "OK"

    return outage


async def _serve(args: argparse.Namespace, record: TextIO) -> None:
    async with RecordingApns(TestCA(Path(args.ca_dir)), record) as fake:
        print(f"PORT {fake.port}", flush=True)
        await serve_commands({**_commands(fake), "outage": _outage(fake)})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake APNs recording its answers.")
    parser.add_argument("--ca-dir", required=True, help="folder receiving ca.pem")
    parser.add_argument("--record", required=True, help="file the answers are appended to")
    parser.add_argument("--control", action="store_true",
                        help="take commands on stdin (fakes.control); stop at EOF")
    args = parser.parse_args(argv)
    with open(args.record, "a", encoding="utf-8") as record:
        asyncio.run(_serve(args, record))


if __name__ == "__main__":
    main()
