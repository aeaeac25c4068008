"""A provider double whose answers a test scripts (the delivery engine is under test)."""

from __future__ import annotations

import asyncio
import time

from slixmpp_push import AppConfig, DeliveryResult, Outcome
from slixmpp_push.providers.base import Provider, PushRequest


class ScriptedProvider(Provider):
    """Answers each request with the next scripted result, then DELIVERED.

    ``delay`` holds every answer back that many seconds; ``always`` answers
    every request with one result (an outage); ``sent`` records requests
    with their time.monotonic().
    """

    kind = "scripted"

    def __init__(self, app: AppConfig) -> None:
        super().__init__(app)
        self.script: list[DeliveryResult | Exception] = []
        self.always: DeliveryResult | None = None
        self.delay = 0.0
        self.sent: list[PushRequest] = []
        self.times: list[float] = []

    async def send(self, request: PushRequest) -> DeliveryResult:
        self.sent.append(request)
        self.times.append(time.monotonic())
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.script:
            answer = self.script.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        if self.always is not None:
            return self.always
        return DeliveryResult(Outcome.DELIVERED, status=200)
