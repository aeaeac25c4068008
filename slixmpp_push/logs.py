"""Logging set-up: levels, optional JSON lines, secrets and tokens redacted.

slixmpp logs every stanza at DEBUG, and registration commands and publishes
carry device tokens and secrets; the redaction filter masks their values
before any handler sees them.

A node can be a device token too: Monal enables push with its hex APNs token
as the node. Our own log lines pass every node through :func:`loggable_node`,
and :func:`redact` shortens a token-shaped ``node='…'`` attribute (``<publish>``,
``<enable>``, ``<item>``, ``<pubsub>``…) or ``node`` field value in stanza logs,
the way the providers shorten tokens: the first 8 characters and "…".
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable

# Inside a tag the patterns skip [^<>]*, never [^>]*: a start tag holds no '<', and
# with [^>]* a text of many "<field " and no '>' (bad input quoted in a log line)
# costs quadratic time, 150 ms for 14 kB, on the event loop.
_SECRET_FIELDS = re.compile(
    r"""(<field\b[^<>]*\bvar=(["'])(?:secret|token|device-token|device-second-token|"""
    r"""password)\2[^<>]*>\s*<value>)[^<]*""")
_ENCRYPT_KEY = re.compile(r"(<encrypt\b[^<>]*>)[^<]*")
_HANDSHAKE = re.compile(r"(<handshake[^<>]*>)[0-9a-fA-F]{20,}")
REDACTED = "[redacted]"

#: Characters of a token kept in logs: enough to correlate, useless to push with.
LOG_TOKEN_CHARS = 8
#: A node this long and all hex is a device token (APNs tokens are 64 hex digits).
TOKEN_NODE_MIN = 32
_TOKEN_NODE = re.compile(rf"[0-9a-fA-F]{{{TOKEN_NODE_MIN},}}")
_NODE_ATTRIBUTE = re.compile(
    rf"""(\bnode\s*=\s*(["']))([0-9a-fA-F]{{{LOG_TOKEN_CHARS}}})"""
    rf"""[0-9a-fA-F]{{{TOKEN_NODE_MIN - LOG_TOKEN_CHARS},}}(?=\2)""")
_NODE_FIELD = re.compile(
    rf"""(<field\b[^<>]*\bvar=(["'])node\2[^<>]*>\s*<value>)([0-9a-fA-F]{{{LOG_TOKEN_CHARS}}})"""
    rf"""[0-9a-fA-F]{{{TOKEN_NODE_MIN - LOG_TOKEN_CHARS},}}(?=<)""")


def short_token(token: str) -> str:
    """A device token as logs show it: its first characters and "…"."""
    return token[:LOG_TOKEN_CHARS] + "…"


def loggable_node(node: str) -> str:
    """``node`` for a log line: shortened like a token when it is one (Monal)."""
    if len(node) >= TOKEN_NODE_MIN and _TOKEN_NODE.fullmatch(node):
        return short_token(node)
    return node


def redact(text: str) -> str:
    text = _SECRET_FIELDS.sub(rf"\1{REDACTED}", text)
    text = _ENCRYPT_KEY.sub(rf"\1{REDACTED}", text)
    if "node" in text:
        text = _NODE_ATTRIBUTE.sub("\\1\\3…", text)
        text = _NODE_FIELD.sub("\\1\\3…", text)
    return _HANDSHAKE.sub(rf"\1{REDACTED}", text)


class LogSampler:
    """Log lines that bad input can cause at any rate, sampled per kind.

    The first line of a kind is logged at once; further ones within ``interval``
    seconds are only counted, and the next line logged says how many were left
    out. A flood of malformed stanzas then costs a dict lookup per stanza instead
    of a formatted, redacted, written line (the counts belong in metrics).
    ``kind`` must come from a small fixed set (an error condition, a command).
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._quiet_until: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def log(self, level: int, kind: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``kind`` was logged within ``interval``; say whether."""
        now = self.clock()
        if now < self._quiet_until.get(kind, 0.0):
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return False
        self._quiet_until[kind] = now + self.interval
        skipped = self._skipped.pop(kind, 0)
        if skipped:
            msg += f" (and {skipped} more like it in the last {self.interval:g} s)"
        self.logger.log(level, msg, *args, stacklevel=2)  # the caller's line, not ours
        return True


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        if isinstance(record.msg, str) and "<" in record.msg:
            record.msg = redact(record.msg)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    # slixmpp logs every stanza at DEBUG: keep it quiet unless DEBUG is asked for.
    logging.getLogger("slixmpp").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
