"""Store files this user may not open: one line that says so, from every command.

The usual cause is a command run with ``sudo`` beside the service: the files it
created then belong to root, and the service's user may not open them. Here the
commands run as a real user would meet it. Run as root (as on the test machine), a file is
given to another uid and the command runs as root without the capabilities that
let root open anyone's file (``setpriv`` drops them from its bounding set: the
kernel then checks the file's mode as for any user). Run as another user, the
file stays ours with mode 000, which that user cannot open either.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from test_startup_errors import one_line, run_cli, write_config
from test_store import reg

from slixmpp_push import TinyDBStore

OTHER_UID = 65534  # nobody's: any uid but ours, with or without a passwd entry
# What lets root open, read and chmod a file that is not its own.
ROOT_OVERRIDES = ("dac_override", "dac_read_search", "fowner")


def foreign(path: Path) -> None:
    """Make ``path`` a file the commands below may not open, read or write."""
    if os.geteuid() == 0:
        os.chown(path, OTHER_UID, OTHER_UID)
        path.chmod(0o600)
    else:
        path.chmod(0)


def as_a_user() -> list[str]:
    """The prefix that runs a command bound by file modes, as a service's user is."""
    if os.geteuid() != 0:
        return []
    drop = ",".join(f"-{capability}" for capability in ROOT_OVERRIDES)
    return ["setpriv", f"--bounding-set={drop}", "--inh-caps=-all"]


def a_store(folder: Path) -> Path:
    """A store with a registration: ``store.json``, its ``.journal`` and ``.lock``."""
    path = folder / "store.json"

    async def fill() -> None:
        store = TinyDBStore(path)
        await store.open()
        await store.put(reg("n1"))
        await store.close()  # writes the snapshot

    asyncio.run(fill())
    assert all(path.with_name(name).exists()
               for name in ("store.json", "store.json.journal", "store.json.lock"))
    return path


def test_devices_list_names_a_store_file_it_may_not_read(tmp_path: Path) -> None:
    store = a_store(tmp_path)
    config = write_config(tmp_path)
    foreign(store)
    listed = run_cli("devices", "list", "--config", str(config), prefix=as_a_user())
    assert listed.returncode == 1
    # Not "is not a readable store": the file is fine, this user may not read it.
    assert one_line(listed.stderr) == (f"slixmpp-push: store error: {store}: permission "
                                       "denied (the store needs read access to its folder "
                                       "and files)")


@pytest.mark.parametrize("name", ["store.json.lock", "store.json.journal"])
def test_check_config_finds_a_lock_or_journal_it_may_not_use(tmp_path: Path,
                                                             name: str) -> None:
    file = a_store(tmp_path).with_name(name)
    config = write_config(tmp_path)
    foreign(file)
    checked = run_cli("check-config", str(config), prefix=as_a_user())
    assert checked.returncode == 2
    assert one_line(checked.stderr) == (f"slixmpp-push: configuration error: appserver.store: "
                                        f"{str(file)!r} is not a file this user can read "
                                        "and write")
    # What serve would have met: check-config said so first.
    served = run_cli("serve", "--config", str(config), prefix=as_a_user())
    assert served.returncode == 1
    assert one_line(served.stderr) == (f"slixmpp-push: store error: {file}: permission denied "
                                       "(the store needs read and write access to its folder "
                                       "and files)")
