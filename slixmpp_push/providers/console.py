"""The console provider: logs each request instead of sending it.

The default for the demo and for a first deployment without Apple or Google
credentials: it shows exactly what would be sent (tokens shortened).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, TextIO

from ..errors import DeliveryResult, Outcome
from ..logs import short_token
from .base import ApnsRequest, ProbeResult, ProbeStatus, Provider, PushRequest

if TYPE_CHECKING:
    from ..config import AppConfig

log = logging.getLogger(__name__)


class ConsoleProvider(Provider):
    kind = "console"

    def __init__(self, app: AppConfig, stream: TextIO | None = None) -> None:
        super().__init__(app)
        self.stream = stream if stream is not None else sys.stdout
        self.sent: list[PushRequest] = []
        self._counter = 0

    async def send(self, request: PushRequest) -> DeliveryResult:
        self._counter += 1
        self.sent.append(request)
        fields = asdict(request)
        fields["token"] = short_token(request.token)
        shape = "APNs" if isinstance(request, ApnsRequest) else "FCM"
        line = json.dumps(fields, ensure_ascii=False, sort_keys=True)
        print(f"[push {self.id} as {shape}] {line}", file=self.stream, flush=True)
        return DeliveryResult(Outcome.DELIVERED, status=200, message_id=f"console-{self._counter}")

    async def probe(self, timeout: float) -> ProbeResult:
        shape = "FCM" if self.app.format == "fcm" else "APNs"
        return ProbeResult(ProbeStatus.PASS, f"console app: its {shape} requests are printed, "
                           "never sent to a phone (nothing to check)")
