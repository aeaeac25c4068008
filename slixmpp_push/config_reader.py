"""Typed reads of TOML tables, shared by every section's reader.

A :class:`Section` remembers the keys it was asked for, so that
:meth:`Section.finish` can name the first unknown one; every error is a
:class:`~slixmpp_push.errors.ConfigError` naming the key in TOML's dotted form.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from .errors import ConfigError


def table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{key}", "must be a table")
    return value


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+(\[[0-9]+\])?")


def quote_key(name: str) -> str:
    """A key as TOML would write it in a dotted path: bare when it can be, else quoted."""
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "a table"}


class Section:
    """Typed reads of one TOML table; every key read is remembered."""

    def __init__(self, data: dict[str, Any], prefix: str, base: Path) -> None:
        self.data = data
        self.prefix = prefix
        self.base = base
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{quote_key(name)}" if self.prefix else quote_key(name)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None,
            required: bool = False) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if required:
                raise ConfigError(self.key(name), "is required")
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        # bool is an int to Python, but `port = true` is no port.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            kinds = (kind,) if isinstance(kind, type) else kind
            names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise ConfigError(self.key(name), f"must be {names}, not {value!r}")
        return value

    def positive(self, name: str, default: float, *, allow_zero: bool = True) -> float:
        value = self.get(name, float, default)
        if not math.isfinite(value):
            raise ConfigError(self.key(name), f"must be a finite number, not {value}")
        if value < 0 or (value == 0 and not allow_zero):
            bound = "at least 0" if allow_zero else "more than 0"
            raise ConfigError(self.key(name), f"must be {bound}, got {value}")
        return float(value)

    def count(self, name: str, default: int, minimum: int = 1) -> int:
        value = self.get(name, int, default)
        if value < minimum:
            raise ConfigError(self.key(name), f"must be at least {minimum}, got {value}")
        return int(value)

    def strings(self, name: str) -> list[str]:
        values = self.get(name, list, [])
        if not all(isinstance(v, str) and v for v in values):
            raise ConfigError(self.key(name), "must be a list of non-empty strings")
        return list(values)

    def path(self, name: str, must_exist: bool = True) -> str | None:
        value = self.get(name, str)
        if value is None:
            return None
        path = Path(value) if Path(value).is_absolute() else self.base / value
        if must_exist and not path.is_file():
            raise ConfigError(self.key(name), f"file {str(path)!r} does not exist")
        return str(path)

    def secret(self, name: str, required: bool = True) -> str | None:
        """A secret from ``<name>_file`` or ``<name>_env``; inline values are refused."""
        self.seen.update({name, f"{name}_file", f"{name}_env"})
        if name in self.data:
            raise ConfigError(self.key(name), f"inline secrets are not accepted: use "
                              f"{self.key(name + '_file')} or {self.key(name + '_env')}")
        file_key, env_key = f"{name}_file", f"{name}_env"
        if file_key in self.data and env_key in self.data:
            raise ConfigError(self.key(file_key), f"set either {file_key} or {env_key}, not both")
        if file_key in self.data:
            path = self.path(file_key)
            assert path is not None
            try:
                value = Path(path).read_text(encoding="utf-8").strip()
            except (UnicodeDecodeError, OSError) as exc:
                raise ConfigError(self.key(file_key), f"cannot read {path!r}: {exc}") from None
            if not value:
                raise ConfigError(self.key(file_key), f"file {path!r} is empty")
            return value
        if env_key in self.data:
            variable = self.get(env_key, str)
            value = os.environ.get(variable, "")
            if not value:
                raise ConfigError(self.key(env_key),
                                  f"environment variable {variable!r} is not set")
            return value
        if required:
            raise ConfigError(self.key(file_key), f"is required (or {self.key(env_key)})")
        return None

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "is not a known key")


def parse_listen(listen: str, key: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:port``) → (host, port); ConfigError naming ``key``."""
    host, _, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        valid = bool(host) and "[" not in host and "]" not in host
    else:
        valid = bool(host) and not any(c in host for c in ":[]")
    if not valid or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(key, f"must be 'host:port' (IPv6 as '[::1]:port'), not {listen!r}")
    return host, int(port)
