"""Run the fake APNs (tests/fakes/fake_apns.py) in its own process for a benchmark."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class FakeApnsProcess:
    """The fake's process; ``received`` maps token → monotonic receive times."""

    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-apns-")))
    port: int = 0
    received: dict[str, list[float]] = field(default_factory=dict)
    count: int = 0
    _process: asyncio.subprocess.Process | None = None
    _reader: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    def key_file(self) -> Path:
        path = self.folder / "AuthKey_BENCH12345.p8"
        key = ec.generate_private_key(ec.SECP256R1())
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.fakes.fake_apns", "--port", "0", "--ca-dir",
            str(self.folder), "--log-requests", cwd=ROOT, stdout=subprocess.PIPE)
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), 30)
        self.port = int(line.split()[1])
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for line in self._process.stdout:
            parts = line.split()
            if parts[:1] == [b"REQ"]:
                self.received.setdefault(parts[1].decode(), []).append(float(parts[2]))
                self.count += 1

    async def wait_for(self, count: int, timeout: float = 120.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while self.count < count:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"fake APNs saw {self.count} of {count} requests")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            await self._process.wait()
        if self._reader is not None:
            self._reader.cancel()
