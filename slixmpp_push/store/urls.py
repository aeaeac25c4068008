"""``postgresql://`` URLs: recognising one, checking it without connecting, showing it.

A URL names the database, never its password: one in it is refused (it comes from a file
or the environment) and, should one get this far all the same, masked in every message.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

DATABASE_SCHEMES = ("postgresql", "postgres")


def is_database_url(location: str) -> bool:
    """Whether ``location`` is a ``postgresql://`` (or ``postgres://``) URL."""
    scheme, separator, _ = location.partition("://")
    return bool(separator) and scheme.lower() in DATABASE_SCHEMES


def database_url_problem(url: str) -> str | None:
    """What keeps ``url`` from naming a database (None: nothing), checked without
    connecting. A password in it is refused: secrets are never inline."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is no number)
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    query = parse_qs(parts.query, keep_blank_values=True)
    if parts.password is not None or "password" in query:
        return "holds a password: inline secrets are not accepted (give it from a file or " \
               "the environment)"
    if parts.fragment:
        return "must not have a #fragment"
    database = unquote(parts.path.lstrip("/")) or (query.get("dbname") or [""])[0]
    if not database:
        return "names no database: postgresql://USER@HOST:PORT/DATABASE"
    return None


def display_url(url: str) -> str:
    """``url`` fit for messages and logs: a password in it replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url.split("://", 1)[0] + "://…"  # unparsable: nothing of it is safe to show
    query = parse_qs(parts.query, keep_blank_values=True)
    if password is None and "password" not in query:
        return url
    user, _, host = parts.netloc.rpartition("@")
    netloc = f"{user.partition(':')[0]}:***@{host}" if password is not None else parts.netloc
    safe_query = "&".join(f"{k}=***" if k == "password" else f"{k}={v}"
                          for k, values in query.items() for v in values)
    return urlunsplit(parts._replace(netloc=netloc, query=safe_query))
