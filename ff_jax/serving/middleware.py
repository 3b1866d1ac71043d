"""What wraps every request: the body size limit, and the request metrics and replica header."""

import os
import socket
import time

from starlette.middleware.base import BaseHTTPMiddleware

from ff_jax.serving.metrics import ServingMetrics
from ff_jax.serving.problems import problem

REPLICA = f"{socket.gethostname()}:{os.getpid()}"
KNOWN_PATHS = {"/v1/recommend", "/v1/items", "/healthz", "/readyz", "/metrics"}  # metric labels stay bounded


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is a 413 naming "body", whether it announces its
    length or arrives in chunks (read whole first, then handed on: bodies are small by design)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = problem(413, "body", f"larger than {self.limit} bytes")
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await too_large(scope, receive, send)
        replay = [{"type": "http.request", "body": body, "more_body": False}]

        async def again():
            return replay.pop() if replay else await receive()

        await self.app(scope, again, send)


class RequestMetrics(BaseHTTPMiddleware):
    """Counts and times every response by endpoint and status (errors apart too), and says which
    replica answered (x-served-by), for behind a load balancer."""

    def __init__(self, app, metrics: ServingMetrics):
        super().__init__(app)
        self.metrics = metrics

    async def dispatch(self, request, call_next):
        started = time.perf_counter()
        endpoint = request.url.path if request.url.path in KNOWN_PATHS else "other"
        response = await call_next(request)
        response.headers["x-served-by"] = REPLICA
        self.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)
        if response.status_code >= 400:
            self.metrics.errors.labels(endpoint, str(response.status_code)).inc()
        return response
