"""A minimal HTTP endpoint on the app server's event loop: /metrics and /health.

    GET /metrics        Prometheus text exposition
    GET /health         JSON details; 200 when ready, 503 when not
    GET /health/live    200 while the process runs
    GET /health/ready   200 when the XMPP stream answers pings and the store is writable (its
                        journal within bound: see StoreStatus.problem), and no provider
                        fails every request or has its credentials refused
                        (ProviderHealth.problem); 503 "not ready: standby" while another
                        instance is the active one (active_lock)

Deliberately tiny (no framework): one request per connection, GET/HEAD only,
bounded request size and time, so a scraper or a port scanner cannot hurt
the push path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from .metrics import Metrics

log = logging.getLogger(__name__)

MAX_REQUEST = 8192
READ_TIMEOUT = 5.0


class StatusServer:
    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 9108) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                  limit=MAX_REQUEST)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics and health on http://%s:%d/", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            status, content_type, body = self._route(method, path.split("?", 1)[0])
            if method == "HEAD":
                body_out = b""
            else:
                body_out = body
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body_out)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ValueError, ConnectionError):
            pass  # malformed, oversized or slow request: just close
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET and HEAD\n"
        if path == "/metrics":
            return ("200 OK", "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.exposition())
        if path in ("/health", "/health/ready"):
            ready, details = self.metrics.health()
            status = "200 OK" if ready else "503 Service Unavailable"
            if path == "/health/ready":
                # A standby is healthy but must not get traffic: say so, for whoever
                # looks at a load balancer's view or curls it.
                if ready:
                    body = b"ready\n"
                elif details["role"] == "standby":
                    body = b"not ready: standby\n"
                else:
                    body = b"not ready\n"
                return status, "text/plain", body
            return status, "application/json", json.dumps(details).encode() + b"\n"
        if path == "/health/live":
            return "200 OK", "text/plain", b"live\n"
        return "404 Not Found", "text/plain", b"not found\n"
