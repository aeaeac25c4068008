"""The ``[notifier]`` and ``[ingest]`` sections of the TOML config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config_reader import Section, parse_listen
from ..errors import ConfigError
from .models import Policy, Step
from .publisher import RemoteTarget


@dataclass(slots=True)
class OmemoSettings:
    btbv: bool = True  # blind trust before verification
    fallback_plaintext: bool = False
    trusted: dict[str, list[str]] = field(default_factory=dict)  # jid → fingerprints


@dataclass(slots=True)
class MucSettings:
    room: str
    nick: str = "pager"
    password: str | None = None
    window: float = 30.0


@dataclass(slots=True)
class ReceiverConfig:
    """``[ingest]``: where the alert receiver listens, whom it lets in, how much."""

    host: str = "127.0.0.1"
    port: int = 9095
    token: str | None = None  # None: no auth (only sensible on loopback)
    max_body: int = 256 * 1024
    rate_burst: int = 30  # requests per client ...
    rate_interval: float = 2.0  # ... then one per interval
    policy: str | None = None  # default escalation policy for pages


@dataclass(slots=True)
class NotifierSettings:
    policies: dict[str, Policy]
    default_policy: str | None
    groups: dict[str, list[str]]
    remotes: dict[str, RemoteTarget]
    responders: list[str] = field(default_factory=list)
    chat: bool = True
    omemo: OmemoSettings | None = None
    muc: MucSettings | None = None
    echo_window: float = 15.0

    def plugin_config(self) -> dict[str, Any]:
        return {"policies": self.policies, "default_policy": self.default_policy,
                "groups": self.groups, "remotes": self.remotes,
                "responders": tuple(self.responders), "chat": self.chat,
                "echo_window": self.echo_window}


def _targets(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(t, str) and t for t in value):
        raise ConfigError(key, "must be a non-empty list of targets "
                               "(JIDs, group:NAME, node:NODE, remote:NAME)")
    return tuple(value)


def read_notifier(section: Any, base: Path) -> NotifierSettings:
    notifier = Section(section, "notifier", base)
    policies: dict[str, Policy] = {}
    for name, raw in notifier.get("policies", dict, {}).items():
        where = f"notifier.policies.{name}"
        policy = Section(raw if isinstance(raw, dict) else {}, where, base)
        if not isinstance(raw, dict):
            raise ConfigError(where, "must be a table")
        steps = []
        for index, step in enumerate(policy.get("steps", list, required=True)):
            step_key = f"{where}.steps[{index}]"
            if not isinstance(step, dict):
                raise ConfigError(step_key, "must be a table {targets = [...], wait = seconds}")
            reader = Section(step, step_key, base)
            targets = _targets(reader.get("targets", list, required=True),
                               f"{step_key}.targets")
            wait = reader.positive("wait", 300.0, allow_zero=False)
            reader.finish()
            steps.append(Step(targets, wait))
        if not steps:
            raise ConfigError(f"{where}.steps", "needs at least one step")
        final = policy.get("final", list, [])
        ack_timeout = policy.get("ack_timeout", float)
        if ack_timeout is not None and ack_timeout <= 0:
            raise ConfigError(f"{where}.ack_timeout", "must be more than 0")
        policies[name] = Policy(name=name, steps=tuple(steps),
                                repeat=policy.count("repeat", 1),
                                final=_targets(final, f"{where}.final") if final else (),
                                ack_timeout=ack_timeout)
        policy.finish()
    default = notifier.get("default_policy", str)
    if default is not None and default not in policies:
        raise ConfigError("notifier.default_policy", f"names no policy ({default!r})")
    groups = {}
    for name, members in notifier.get("groups", dict, {}).items():
        groups[name] = list(_targets(members, f"notifier.groups.{name}"))
    remotes = {}
    for name, raw in notifier.get("remotes", dict, {}).items():
        where = f"notifier.remotes.{name}"
        if not isinstance(raw, dict):
            raise ConfigError(where, "must be a table")
        remote = Section(raw, where, base)
        remotes[name] = RemoteTarget(jid=remote.get("jid", str, required=True),
                                     node=remote.get("node", str, required=True),
                                     secret=remote.secret("secret", required=False))
        remote.finish()
    responders = notifier.strings("responders")
    chat = notifier.get("chat", bool, True)
    echo_window = notifier.positive("echo_window", 15.0)
    omemo = muc = None
    if "omemo" in section:
        reader = Section(notifier.get("omemo", dict), "notifier.omemo", base)
        trusted = reader.get("trusted", dict, {})
        for jid, prints in trusted.items():
            if not isinstance(prints, list) or not all(isinstance(p, str) for p in prints):
                raise ConfigError(f"notifier.omemo.trusted.{jid}",
                                  "must be a list of fingerprints")
        omemo = OmemoSettings(btbv=reader.get("btbv", bool, True),
                              fallback_plaintext=reader.get("fallback_plaintext", bool, False),
                              trusted=trusted)
        reader.finish()
    if "muc" in section:
        reader = Section(notifier.get("muc", dict), "notifier.muc", base)
        muc = MucSettings(room=reader.get("room", str, required=True),
                          nick=reader.get("nick", str, "pager"),
                          password=reader.secret("password", required=False),
                          window=reader.positive("window", 30.0))
        reader.finish()
    notifier.finish()
    return NotifierSettings(policies, default, groups, remotes, responders, chat, omemo, muc,
                            echo_window)


def read_ingest(section: Any, base: Path) -> ReceiverConfig:
    ingest = Section(section, "ingest", base)
    host, port = parse_listen(ingest.get("listen", str, "127.0.0.1:9095"), "ingest.listen")
    token = ingest.secret("token", required=host not in ("127.0.0.1", "::1", "localhost"))
    config = ReceiverConfig(host=host, port=port, token=token,
                            max_body=ingest.count("max_body", 256 * 1024, minimum=1024),
                            rate_burst=ingest.count("rate_burst", 30),
                            rate_interval=ingest.positive("rate_interval", 2.0,
                                                          allow_zero=False),
                            policy=ingest.get("policy", str))
    ingest.finish()
    return config
