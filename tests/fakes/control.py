"""Faults switched on and off in a fake running in another process.

Memory tests measure the app server's side alone, so the fake runs in a
process of its own (as Apple and Google do); the test drives it over stdin,
one command per line, and reads one answer line per command::

    async with FakeProcess("fakes.fake_apns", "--ca-dir", folder) as fake:
        await fake.command("untrusted on")
        stats = await fake.stats()          # {"untrusted": 1042, ...}
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Self

__all__ = ["FakeProcess", "serve_commands"]

TESTS = Path(__file__).resolve().parent.parent


async def serve_commands(commands: Mapping[str, Callable[[list[str]], str]]) -> None:
    """The fake's side: answer each stdin line ``NAME ARGS…`` with one line; return at EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        name, *args = line.split()
        handler = commands.get(name)
        answer = handler(args) if handler is not None else f"ERROR unknown command {name}"
        print(answer, flush=True)


class FakeProcess:
    """The test's side: ``python -m MODULE ARGS… --control`` in a child process.

    The module prints ``PORT <n>`` (or the bare port number) first: :attr:`port`;
    :meth:`line` reads what it prints next (fake_fcm: ``ca_file=…``).
    """

    def __init__(self, module: str, *args: str) -> None:
        self.argv = [sys.executable, "-m", module, *args, "--control"]
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Self:
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv, cwd=TESTS, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        first = await asyncio.wait_for(self.line(), 30)
        self.port = int(first.split()[-1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()  # EOF: the fake stops
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def line(self) -> str:
        """The next line the fake printed."""
        assert self._proc is not None and self._proc.stdout is not None
        line = (await self._proc.stdout.readline()).decode().strip()
        if not line:
            raise RuntimeError(f"{self.argv[2]} exited ({await self._proc.wait()})")
        return line

    async def command(self, line: str) -> str:
        """Send one command; its answer (``ERROR …`` raises)."""
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(line.encode() + b"\n")
        await self._proc.stdin.drain()
        answer = await asyncio.wait_for(self.line(), 10)
        if answer.startswith("ERROR"):
            raise RuntimeError(answer)
        return answer

    async def stats(self) -> dict[str, int]:
        """The fake's counters: ``stats`` answered ``name=value …``."""
        answer = await self.command("stats")
        return {k: int(v) for k, v in (item.split("=") for item in answer.split())}
