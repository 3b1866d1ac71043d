"""`ff-jax serve --bundle=DIR`: the bundle behind FastAPI + uvicorn.

    POST /v1/recommend   member (profile, recent items) + k + exclusions -> top-k items
    POST /v1/items       fresh items -> embedded, logged (fsync), indexed; bearer token required
    GET  /healthz        the process answers
    GET  /readyz         200 once every served shape is compiled and the items log replayed
    GET  /metrics        Prometheus text (ff_jax.serving.metrics)

Requests are checked by the models of ff_jax.serving.api (bounds from ServerConfig); every 4xx
body is {"detail": [{"field": ..., "message": ...}]} naming the field at fault ("body" for a body
that is not JSON or too large). Recommendations are micro-batched (ff_jax.serving.batching) into
ff_jax.serving.engine, whose work runs in one worker thread.
"""

import asyncio
import concurrent.futures
import hmac
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

import uvicorn
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from ff_jax.serving.api import ServerConfig, models
from ff_jax.serving.batching import MicroBatcher
from ff_jax.serving.engine import ConflictError, Engine, Query
from ff_jax.serving.metrics import ServingMetrics
from ff_jax.serving.prompting import FieldError, HistoryItem


REPLICA = f"{socket.gethostname()}:{os.getpid()}"
KNOWN_PATHS = {"/v1/recommend", "/v1/items", "/healthz", "/readyz", "/metrics"}  # metric labels stay bounded


def problem(status: int, field: str, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"detail": [{"field": field, "message": message}]}, status_code=status, headers=headers)


def field_path(loc) -> str:
    """('body', 'member', 'history', 2, 'item_id') -> 'member.history[2].item_id'."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


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


def create_app(bundle_dir: str | Path, state_dir: str | Path, config: ServerConfig = ServerConfig()) -> FastAPI:
    metrics = ServingMetrics()
    engine = Engine(bundle_dir, state_dir, config, metrics)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ff-jax-engine")
    batcher = MicroBatcher(engine.recommend, config.max_batch, config.max_queue_delay_ms / 1000, executor,
                           metrics.observe_batch)
    state = {"warm_up_error": None}
    M = models(config)

    def warm_up():
        try:
            engine.start()
        except Exception as err:  # noqa: BLE001  (reported by /readyz and on stderr; the process stays up)
            state["warm_up_error"] = f"{type(err).__name__}: {err}"
            print(f"ff-jax serve: warm-up failed, /readyz answers 503: {state['warm_up_error']}", file=sys.stderr)
            raise

    async def lifespan(app):
        batcher.start()
        executor.submit(warm_up)  # first in the worker's queue: no request is served before it
        yield
        await batcher.stop()
        executor.shutdown(wait=True)
        engine.close()

    app = FastAPI(title="ff_jax recommendations", version=engine.bundle.manifest["created"], lifespan=lifespan)
    app.state.engine = engine

    app.add_middleware(BodyLimit, limit=config.max_body_bytes)

    @app.middleware("http")
    async def count(request: Request, call_next):
        started = time.perf_counter()
        endpoint = request.url.path if request.url.path in KNOWN_PATHS else "other"
        response = await call_next(request)
        response.headers["x-served-by"] = REPLICA  # which replica answered, behind a load balancer
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)
        if response.status_code >= 400:
            metrics.errors.labels(endpoint, str(response.status_code)).inc()
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        detail = [{"field": "body", "message": f"not valid JSON ({e['ctx']['error']} at character {e['loc'][-1]})"}
                  if e["type"] == "json_invalid" else {"field": field_path(e["loc"]), "message": e["msg"].removeprefix("Value error, ")}
                  for e in err.errors()]
        return JSONResponse(jsonable_encoder({"detail": detail}), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        # Starlette's own refusals in the same form: a body JSON cannot parse (e.g. nested 100,000
        # deep: FastAPI answers 400 "There was an error parsing the body"), an unknown path or method.
        if err.status_code == 400:
            return problem(400, "body", "could not be parsed as JSON (nested too deeply, or unreadable)")
        field = {404: "path", 405: "method"}.get(err.status_code, "request")
        return problem(err.status_code, field, str(err.detail), headers=getattr(err, "headers", None))

    @app.exception_handler(FieldError)
    async def field_error(request: Request, err: FieldError):
        return problem(422, err.field, str(err).split(": ", 1)[-1])

    @app.exception_handler(ConflictError)
    async def conflict(request: Request, err: ConflictError):
        return problem(409, err.field, str(err).split(": ", 1)[-1])

    def not_ready() -> Optional[JSONResponse]:
        if engine.ready:
            return None
        why = state["warm_up_error"] or "warming up (compiling every served shape, replaying the items log)"
        return problem(503, "server", why, headers={"Retry-After": "1"})

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "still warming up"}})
    async def readyz():
        return not_ready() or {"status": "ready", "index_size": engine.index.count,
                               "shapes": len(engine.shapes())}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/recommend", response_model=M["RecommendResponse"],
              responses={422: {"description": "a field is out of bounds or unknown"}, 503: {"description": "warming up"}})
    async def recommend(body: M["RecommendRequest"]):
        if (refusal := not_ready()) is not None:
            return refusal
        history = [HistoryItem(item_id=h.item_id) if h.item_id is not None
                   else HistoryItem(fields=h.fields if h.fields is not None else {"text": h.text})
                   for h in body.member.history]
        record = engine.prompts.member_record(body.member.profile, history, engine.prompt_of)
        context = None if engine.ranker_prompts is None else engine.ranker_prompts.context.member(record)
        query = Query(engine.prompts.tokens.member(record), body.k, list(body.exclude_items),
                      list(body.blocked_authors), context)
        found = await batcher.submit(query)
        return {"items": [{"item_id": i, "retrieval_score": s, "ranker_score": r, "author": a}
                          for i, s, r, a in found]}

    @app.post("/v1/items", response_model=M["ItemsResponse"],
              responses={401: {"description": "no or wrong bearer token"}, 403: {"description": "writes disabled"},
                         409: {"description": "an item id is already in the catalogue"}})
    async def add_items(body: M["ItemsRequest"], request: Request):
        token = os.environ.get(config.token_env)
        if not token:
            return problem(403, "authorization", f"writes are disabled: set {config.token_env} to enable them")
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
            return problem(401, "authorization", "a valid bearer token is required",
                           headers={"WWW-Authenticate": "Bearer"})
        if (refusal := not_ready()) is not None:
            return refusal
        prompts = engine.prompts.item_prompts([item.fields for item in body.items])
        engine.check_item_prompts(prompts)
        records = [{"item_id": item.item_id, "prompt": prompt, "author": item.author,
                    "created_at": item.created_at if item.created_at is not None else int(time.time())}
                   for item, prompt in zip(body.items, prompts)]
        size = await asyncio.get_running_loop().run_in_executor(executor, engine.add_items, records)
        return {"added": len(records), "index_size": size}

    return app


class PortUnavailable(OSError):
    """The address `ff-jax serve` was asked to listen on is taken (or not ours to take)."""

    label = "port unavailable"


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, for uvicorn to listen on; refuses one in use in one line
    (uvicorn itself logs [Errno 98] and exits with status 3)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart reuses the port at once
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise PortUnavailable(f"{host}:{port}: {err.strerror} (is another server listening there? choose another "
                              "--port)") from None
    sock.set_inheritable(True)
    return sock


def serve(bundle_dir: str, state_dir: str, host: str, port: int, config: ServerConfig = ServerConfig()) -> None:
    """Runs the server until interrupted. The port is taken first: one in use is said before the
    bundle is loaded."""
    sock = listening_socket(host, port)
    try:
        app = create_app(bundle_dir, state_dir, config)
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run(sockets=[sock])
    finally:
        sock.close()

