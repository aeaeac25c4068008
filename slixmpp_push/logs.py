"""Logging set-up: levels, optional JSON lines, secrets and tokens redacted.

slixmpp logs every stanza at DEBUG, and registration commands and publishes
carry device tokens and secrets; the redaction filter masks their values
before any handler sees them.
"""

from __future__ import annotations

import json
import logging
import re
import time

_SECRET_FIELDS = re.compile(
    r"""(<field\b[^>]*\bvar=(["'])(?:secret|token|device-token|device-second-token|"""
    r"""password)\2[^>]*>\s*<value>)[^<]*""")
_ENCRYPT_KEY = re.compile(r"(<encrypt\b[^>]*>)[^<]*")
_HANDSHAKE = re.compile(r"(<handshake[^>]*>)[0-9a-fA-F]{20,}")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    text = _SECRET_FIELDS.sub(rf"\1{REDACTED}", text)
    text = _ENCRYPT_KEY.sub(rf"\1{REDACTED}", text)
    return _HANDSHAKE.sub(rf"\1{REDACTED}", text)


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
