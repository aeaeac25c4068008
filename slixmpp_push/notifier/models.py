"""What the notifier works with: escalation policies and pages."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from ..models import Priority


@dataclass(slots=True, frozen=True)
class Step:
    """Notify these targets, then wait this long for an ack."""

    targets: tuple[str, ...]
    wait: float


@dataclass(slots=True, frozen=True)
class Policy:
    """An escalation policy: steps, repeated ``repeat`` times, then a final notice.

    ``ack_timeout``: an acknowledged page re-opens (and escalates again from
    the first step) when it is neither resolved nor re-acknowledged by then.
    """

    name: str
    steps: tuple[Step, ...]
    repeat: int = 1
    final: tuple[str, ...] = ()
    ack_timeout: float | None = None


class PageState(str, enum.Enum):
    OPEN = "open"  # escalating
    ACKED = "acked"  # a person took it: escalation stopped (until ack_timeout)
    EXHAUSTED = "exhausted"  # every step and repeat ran, the final notice went out
    RESOLVED = "resolved"


@dataclass(slots=True)
class Page:
    """One incident being paged, deduplicated by ``key``."""

    id: str
    key: str
    title: str
    body: str
    priority: Priority
    policy: str
    state: PageState = PageState.OPEN
    step: int = 0
    round: int = 0
    next_at: float = 0.0  # wall clock of the next escalation (or ack expiry)
    created: float = 0.0
    updated: float = 0.0
    acked_by: str | None = None
    resolved_by: str | None = None
    source: str = ""
    paged: list[str] = field(default_factory=list)  # accounts paged so far
    history: list[list[Any]] = field(default_factory=list)  # [time, event, detail]

    @property
    def active(self) -> bool:
        return self.state in (PageState.OPEN, PageState.ACKED, PageState.EXHAUSTED)

    def paging_since(self) -> float:
        """When the current escalation began: opened, or paged again after an ack
        expired (the time to acknowledge is measured from here)."""
        for at, event, *_ in reversed(self.history):
            if event in ("opened", "ack expired"):
                return float(at)
        return self.created  # its history was cut (200 entries): the page's start

    def log(self, at: float, event: str, detail: str = "") -> None:
        self.history.append([round(at, 3), event, detail])
        del self.history[:-200]  # bounded: a flapping alert must not grow forever

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["priority"] = self.priority.value
        doc["state"] = self.state.value
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Page:
        values = dict(doc)
        values["priority"] = Priority(values["priority"])
        values["state"] = PageState(values["state"])
        return cls(**values)
