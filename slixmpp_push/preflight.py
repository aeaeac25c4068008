"""Pre-flight checks: what ``serve`` would refuse at start-up, found without connecting.

``check-config`` runs them once the file has parsed: build each configured
provider (which imports the SDK it needs), read its credentials, try the
store's folder and the listen addresses. They live above
:mod:`slixmpp_push.config` because building providers is not describing them:
config never imports the providers it configures.
"""

from __future__ import annotations

import errno
import os
import socket
from importlib.util import find_spec
from pathlib import Path

from .config import Config, check_credentials, listen_error
from .errors import ConfigError, MissingDependency
from .providers import create_provider
from .store.location import require_driver
from .store.urls import is_database_url


def check_startup(config: Config) -> list[str]:
    """What ``serve`` would refuse at start-up, checked without connecting anywhere.

    Raises :class:`ConfigError` naming the key, or :class:`MissingDependency`
    for an extra a configured feature needs; returns notes worth printing (a
    listen port held by a running slixmpp-push, as it is while the service runs).
    The store's content is not read here (``check-config`` opens it read-only).
    """
    for app in config.apps:
        create_provider(app)  # imports the SDKs each app needs
        check_credentials(app)
    if config.ingest is not None and find_spec("aiohttp") is None:
        raise MissingDependency("aiohttp", "notifier", "the alert receiver ([ingest])")
    if (config.notifier is not None and config.notifier.omemo is not None
            and find_spec("slixmpp_omemo") is None):
        raise MissingDependency("slixmpp-omemo", "omemo", "[notifier.omemo]")
    if is_database_url(config.store):
        require_driver()  # names the postgresql extra; the URL was checked by the config
    else:
        _check_store_folder(config.store)
    notes = []
    listens = [("metrics.listen", config.metrics_listen)]
    if config.ingest is not None:
        listens.append(("ingest.listen", (config.ingest.host, config.ingest.port)))
    for key, address in listens:
        if address is not None:
            note = _check_listen(key, *address)
            if note:
                notes.append(note)
    return notes


def _check_listen(key: str, host: str, port: int) -> str | None:
    """Bind ``host:port`` as asyncio's servers will (every address the name has,
    SO_REUSEADDR); a port held by a running slixmpp-push is a note, not an error."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(key, f"cannot resolve {host!r}: {exc.strerror}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and _serves_our_health(host, port):
                    return (f"{key}: {host}:{port} is in use by a running slixmpp-push "
                            "(fine if that is this service)")
                raise listen_error(key, host, port, exc) from None
    return None


def _serves_our_health(host: str, port: int) -> bool:
    """Whether ``host:port`` answers ``GET /health`` as our status server or alert
    receiver does: the running service holds its own ports."""
    try:
        with socket.create_connection((host, port), timeout=2.0) as sock:
            sock.sendall(b"GET /health HTTP/1.0\r\nHost: slixmpp-push\r\n\r\n")
            answer = b""
            while len(answer) < 65536:
                data = sock.recv(4096)
                if not data:
                    break
                answer += data
    except OSError:
        return False
    _, _, body = answer.partition(b"\r\n\r\n")
    return b'"live": true' in body or b'"open_pages"' in body


def _check_store_folder(store: str) -> None:
    """The store's folder exists or can be created, this user may write there, and may
    read and write each of the store's files that exists."""
    path = Path(store)
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError("appserver.store", f"{str(existing)!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("appserver.store", f"the folder {str(existing)!r} is not writable "
                          "by this user (run as the service's user)")
    # serve reads and writes all three: the snapshot, the journal it appends to and the
    # lock it takes (a command run with sudo may have left any of them to root).
    for file in (path, *(path.with_name(path.name + suffix) for suffix in (".journal", ".lock"))):
        if file.exists() and (not file.is_file() or not os.access(file, os.R_OK | os.W_OK)):
            raise ConfigError("appserver.store", f"{str(file)!r} is not a file this user can "
                              "read and write")
