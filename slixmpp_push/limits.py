"""Bounds on what clients and servers send us: token shapes and field sizes.

Checked once at the edge (the registration commands, Monal's stateless node,
the publish parser), so that nothing unbounded or ill-shaped reaches the
store, the pending queue, a provider or a log line. Each check returns the
problem as text, and the caller names the field in its error.

Why these bounds:

- **APNs device tokens** are hex. Apple issues 32 bytes (64 hex digits) today,
  but its documentation says tokens are of variable length and must not be
  hard-coded; a longer token from a future iOS must keep working, so 32 to 100
  bytes are accepted (64 to 200 hex digits, an even count: they are bytes). A
  non-hex token or a truncated one is refused instead of being retried
  against Apple for a day, a connection each time.
- **FCM registration tokens** are URL-safe base64 with ``:`` (today
  ``<22 characters>:APA91b<134 characters>``, 163 in all; older GCM ones 119
  to 162). Google documents no format and only an upper bound, "the size of a
  cookie": 4096 bytes. The shortest seen is 119, so 100 leaves room without
  taking a device id or a word for a token.
- **Any registration field** at most 4096 bytes (the longest token there is):
  a field is stored with the registration for as long as it lives.
- **Values quoted back** in an error text or a log line are cut to 64
  characters: the sender chose them, and a reply or log line must not cost
  more because they are long.
"""

from __future__ import annotations

import re

APNS_TOKEN_HEX = (64, 200)
FCM_TOKEN_CHARS = (100, 4096)
MAX_FIELD_BYTES = 4096
QUOTE_CHARS = 64

_APNS_TOKEN = re.compile(
    rf"(?:[0-9a-fA-F]{{2}}){{{APNS_TOKEN_HEX[0] // 2},{APNS_TOKEN_HEX[1] // 2}}}")
_FCM_TOKEN = re.compile(rf"[A-Za-z0-9_:-]{{{FCM_TOKEN_CHARS[0]},{FCM_TOKEN_CHARS[1]}}}")

APNS_TOKEN_SHAPE = f"hex, {APNS_TOKEN_HEX[0]} to {APNS_TOKEN_HEX[1]} characters"
FCM_TOKEN_SHAPE = (f"letters, digits, '-', '_' and ':', {FCM_TOKEN_CHARS[0]} to "
                   f"{FCM_TOKEN_CHARS[1]} characters")


def token_problem(fmt: str, token: str) -> str | None:
    """Why ``token`` cannot be a device token of ``fmt`` ("apns" or "fcm"), or None."""
    if fmt == "fcm":
        if _FCM_TOKEN.fullmatch(token):
            return None
        return f"not an FCM token ({FCM_TOKEN_SHAPE})"
    if _APNS_TOKEN.fullmatch(token):
        return None
    return f"not an APNs token ({APNS_TOKEN_SHAPE})"


def too_long(value: str, limit: int = MAX_FIELD_BYTES) -> bool:
    """Is ``value`` more than ``limit`` bytes of UTF-8? (Cheap for short values.)"""
    return len(value) * 4 > limit and len(value.encode()) > limit


def quoted(value: str, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with "…" when longer."""
    return repr(value if len(value) <= limit else value[:limit] + "…")
