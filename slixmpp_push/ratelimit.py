"""A token bucket per key: the app server limits pushes per node with it, the
alert receiver requests per client."""

from __future__ import annotations


class RateLimiter:
    """A token bucket per node."""

    def __init__(self, burst: int, interval: float) -> None:
        self.burst = burst
        self.interval = interval
        self.state: dict[str, tuple[float, float]] = {}  # node → (tokens, at)

    def take(self, node: str, now: float) -> float:
        """Take a token: 0.0 if one was free, else the seconds until one is."""
        if self.interval <= 0:
            return 0.0
        tokens, at = self.state.get(node, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) / self.interval)
        if tokens >= 1.0:
            self.state[node] = (tokens - 1.0, now)
            if len(self.state) > 100_000:
                self._prune(now)
            return 0.0
        self.state[node] = (tokens, now)
        return (1.0 - tokens) * self.interval

    def _prune(self, now: float) -> None:
        full_after = self.burst * self.interval
        self.state = {n: v for n, v in self.state.items() if now - v[1] < full_after}
