"""What every doctor check returns, and the report they add up to.

A check is one verdict, :class:`CheckResult` (name, PASS/WARN/FAIL, a one-line
detail and, when it did not pass, the fix). :class:`Report` keeps them in the
order they are shown, prints them as text or JSON and turns them into the
command's exit status. The vocabulary every check shares lives here too: the
:func:`passed`/:func:`warned`/:func:`failed` shorthands, the name of a per-app
check and the default network timeout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..config import AppConfig, quote_key
from ..providers.base import ProbeStatus

#: PASS / WARN / FAIL (the providers' probe verdicts are the same values).
Status = ProbeStatus

#: Seconds each network check (the XMPP server, a provider) may take.
DEFAULT_TIMEOUT = 10.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


@dataclass(slots=True, frozen=True)
class CheckResult:
    """The verdict of one check: ``fix`` says what to change when it is not PASS."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status.value, "detail": self.detail,
                "fix": self.fix}


@dataclass(slots=True)
class Report:
    """Every check's result, in a fixed order; renders as text or JSON."""

    config: str
    checks: list[CheckResult] = field(default_factory=list)
    config_loaded: bool = True

    @property
    def exit_status(self) -> int:
        if not self.config_loaded:
            return EXIT_CONFIG
        if any(check.status is Status.FAIL for check in self.checks):
            return EXIT_FAILED
        return EXIT_OK

    def counts(self) -> dict[str, int]:
        return {status.value: sum(c.status is status for c in self.checks) for status in Status}

    def text(self) -> str:
        lines = []
        for check in self.checks:
            lines.append(f"{check.status.value:<4}  {check.name}: {check.detail}")
            if check.fix and check.status is not Status.PASS:
                lines.append(f"      fix: {check.fix}")
        counts = self.counts()
        lines.append(f"slixmpp-push doctor: {counts['PASS']} passed, {counts['WARN']} "
                     f"warning(s), {counts['FAIL']} failed")
        return "\n".join(lines)

    def json(self) -> str:
        return json.dumps({"config": self.config, "exit_status": self.exit_status,
                           "summary": self.counts(),
                           "checks": [check.as_dict() for check in self.checks]},
                          ensure_ascii=False, indent=2)


def passed(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.PASS, detail)


def warned(name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name, Status.WARN, detail, fix)


def failed(name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name, Status.FAIL, detail, fix)


def app_check_name(kind: str, app: AppConfig) -> str:
    """The name of one app's check, such as ``credentials "tigase:messenger:apns:1"``."""
    return f"{kind} {quote_key(app.id)}"
