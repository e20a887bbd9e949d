"""Request limits for the HTTP service, applied before any JSON parsing (a pure ASGI middleware).

- Body size: a ``Content-Length`` above the limit is answered 413 at once, without reading the body; a body
  without one (chunked) is read up to the limit and answered 413 as soon as it exceeds it. At most
  ``max_body_bytes`` of a request are ever held in memory.
- Time: reading the body must finish within ``request_timeout_s`` (else 408); the start time is put in the
  ASGI scope (``state["t2diff_start"]``) so the endpoint can answer 503 when its computation would end
  past the same deadline.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

Scope = dict[str, Any]
START_KEY = "t2diff_start"


@dataclass(frozen=True)
class ServiceLimits:
    max_body_bytes: int = 4 * 1024 * 1024  # a 100,000-item history with timestamps is about 2.2 MB of JSON
    request_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")


async def _error(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class LimitMiddleware:
    def __init__(self, app: Any, limits: ServiceLimits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        import anyio  # with the serve extras; this module itself is imported by the CLI without them

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})[START_KEY] = time.monotonic()
        cap = self.limits.max_body_bytes
        too_big = f"request body is larger than the limit of {cap} bytes (serve --max-body-bytes)"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > cap:
            await _error(send, 413, too_big)  # the body is never read
            return
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.limits.request_timeout_s) as scopeguard:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > cap:
                    await _error(send, 413, too_big)
                    return
                chunks.append(chunk)
                if not msg.get("more_body", False):
                    break
        if scopeguard.cancelled_caught:
            await _error(send, 408, f"the request body was not received within {self.limits.request_timeout_s} s")
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: wait for the disconnect, as the server's receive would

        await self.app(scope, replay, send)


def deadline_left(scope: Scope, limits: ServiceLimits) -> float:
    """Seconds left of the request's time limit (its start was recorded by the middleware)."""
    start = scope.get("state", {}).get(START_KEY, time.monotonic())
    return limits.request_timeout_s - (time.monotonic() - start)
