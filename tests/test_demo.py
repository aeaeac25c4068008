"""``slixmpp-push demo``: a signal at any point stops it and leaves nothing behind, and a
failure inside it is reported as itself.

The demo runs as a user runs it: a separate process through the CLI's entry point, with
the system's Prosody. Its TMPDIR is a folder of the test's own, so "the temporary folder
is removed" means that this folder is empty again. The Prosody PID is the one the demo
prints at step 1. The whole demo, from the push to the ack, is checked by
``test_example_bot.py::test_demo_runs_end_to_end``; without the ``notifier`` extra, by
``test_packaging.py`` on a real install without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from slixmpp_push.devserver import ProsodyServer

# Every wait below is a guard against a hung demo, never a measurement.
GUARD = 60.0


class Demo:
    """``slixmpp-push demo ARGS`` in a fresh interpreter; ``code`` runs first."""

    def __init__(self, process: asyncio.subprocess.Process, tmp: Path) -> None:
        self.process = process
        self.tmp = tmp
        self.output: list[str] = []
        self.prosody_pid: int | None = None

    @classmethod
    async def start(cls, tmp: Path, *args: str, code: str = "") -> Demo:
        script = (f"import sys\n{code}\n"
                  "from slixmpp_push.cli import main\nsys.exit(main(sys.argv[1:]))")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, "demo", *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp)})
        return cls(process, tmp)

    async def wait_for_line(self, start: str) -> str:
        """Read the demo's output up to the first line starting with ``start``."""
        assert self.process.stdout is not None
        while True:
            line = (await asyncio.wait_for(self.process.stdout.readline(), GUARD)).decode()
            assert line, f"the demo ended before {start!r}:\n" + "".join(self.output)
            self.output.append(line)
            found = re.search(r"\(PID (\d+)\)", line)
            if found:
                self.prosody_pid = int(found.group(1))
            if line.startswith(start):
                return line

    async def finish(self) -> tuple[int, str, str]:
        """Exit status, the rest of stdout, and stderr."""
        out, err = await asyncio.wait_for(self.process.communicate(), GUARD)
        assert self.process.returncode is not None
        return self.process.returncode, out.decode(), err.decode()

    def assert_nothing_left(self) -> None:
        assert list(self.tmp.iterdir()) == [], "the demo left files in its TMPDIR"
        if self.prosody_pid is not None:
            assert not Path(f"/proc/{self.prosody_pid}").exists(), "Prosody still runs"
        # Also before step 1 has printed the PID: Prosody runs with its config there.
        assert processes_running_from(self.tmp) == []


def processes_running_from(folder: Path) -> list[str]:
    """Command lines of the processes that name ``folder`` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            words = cmdline.read_bytes().decode(errors="replace").split("\0")
            if any(str(folder) in word for word in words):
                found.append(" ".join(words))
    return found


@pytest.fixture
def demo_tmp(tmp_path: Path) -> Path:
    ProsodyServer.require()  # fails (never skips) without Debian's prosody
    folder = tmp_path / "tmp"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["ctrl-c", "sigterm", "sighup"])
async def test_keep_running_stops_on_a_signal_and_cleans_up(demo_tmp: Path,
                                                           sig: signal.Signals) -> None:
    demo = await Demo.start(demo_tmp, "--keep-running")
    await demo.wait_for_line("Servers keep running")
    assert demo.prosody_pid is not None and Path(f"/proc/{demo.prosody_pid}").exists()
    assert len(list(demo_tmp.iterdir())) == 1  # the demo's folder, while it runs
    demo.process.send_signal(sig)
    status, out, err = await demo.finish()
    # Ended the way the demo says to end it: success.
    assert status == 0, out + err
    assert out.startswith(f"Stopped ({sig.name}): Prosody stopped, "), out
    assert err == ""
    demo.assert_nothing_left()


@pytest.mark.parametrize(("sig", "after"), [
    (signal.SIGTERM, "[1/9] starting a private Prosody"),  # while Prosody starts
    (signal.SIGINT, "[3/9]"),  # between the steps, the app server running
], ids=["sigterm-at-start", "ctrl-c-midway"])
async def test_a_signal_before_the_end_interrupts_and_cleans_up(
        demo_tmp: Path, sig: signal.Signals, after: str) -> None:
    demo = await Demo.start(demo_tmp)
    await demo.wait_for_line(after)
    demo.process.send_signal(sig)
    status, out, err = await demo.finish()
    assert status == 128 + sig, out + err  # as a shell reports a process the signal ended
    assert "Demo complete" not in out
    assert f"Stopped ({sig.name})" in out
    demo.assert_nothing_left()


async def test_an_app_server_failure_is_reported_as_itself(demo_tmp: Path) -> None:
    """The issue's case: the app server failed inside the demo, and the demo waited 15 s
    and then blamed Prosody. Here aiohttp's web module is missing (the up-front check
    only looks for the package), so the app server's alert receiver fails to start."""
    demo = await Demo.start(demo_tmp, code="sys.modules['aiohttp.web'] = None")
    status, out, err = await demo.finish()
    assert status == 1, out + err
    assert err.splitlines() == [
        "slixmpp-push demo: the app server failed: the alert receiver needs the 'aiohttp' "
        "package: pip install 'slixmpp-push[notifier]'"]
    assert "[2/9] starting the app server" in out and "[3/9]" not in out
    demo.assert_nothing_left()
