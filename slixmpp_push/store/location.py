"""Which store a location names: a TinyDB file, or a PostgreSQL database by URL.

``[appserver] store`` and ``slixmpp-push store migrate --from/--to`` take either a
path or a ``postgresql://`` (``postgres://``) URL; :func:`create_store` is the one
place that makes the choice. A URL never holds the password: it comes from a file or
the environment (``password=``), or from libpq's ``PGPASSWORD``/``~/.pgpass``.
"""

from __future__ import annotations

from importlib.util import find_spec

from ..errors import MissingDependency, StoreError
from .base import Store
from .tinydb_store import TinyDBStore
from .urls import database_url_problem, display_url, is_database_url


def create_store(location: str, *, password: str | None = None, read_only: bool = False,
                 journal_limit: int | None = None) -> Store:
    """The store at ``location``, not opened yet.

    ``password`` is the database's (unused for a file); ``journal_limit`` bounds a
    TinyDB journal (unused for a database). Raises :class:`StoreError` for a URL that
    names no database, :class:`MissingDependency` when asyncpg is not installed.
    """
    if not is_database_url(location):
        if password is not None:
            raise StoreError(f"{location}: a password is only used with a postgresql:// store")
        return TinyDBStore(location, read_only=read_only, journal_limit=journal_limit)
    problem = database_url_problem(location)
    if problem is not None:
        raise StoreError(f"{display_url(location)}: {problem}")
    require_driver()
    from .postgresql import PostgresStore

    return PostgresStore(location, password=password, read_only=read_only)


def require_driver() -> None:
    """Raise :class:`MissingDependency` unless asyncpg (the ``postgresql`` extra) is there."""
    if find_spec("asyncpg") is None:
        raise MissingDependency("asyncpg", "postgresql", "a postgresql:// store")
