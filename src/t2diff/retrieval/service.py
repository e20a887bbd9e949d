"""HTTP matching service: ``POST /recommend`` (history -> top-K items), ``GET /health``, OpenAPI at ``/docs``.

One process holds the model (eval mode) and the item index. Requests are validated in the event loop, then
answered by a runner (``t2diff.retrieval.batching``): by default a micro-batcher gathers concurrent requests
into one user-tower batch (bounded batch, bounded wait) computed in a worker thread while the event loop
keeps reading; with ``max_batch = 1`` each request is computed alone, ``threads`` at once. Either way the
answer is the one the request would get alone. The server pins PyTorch / FAISS to one thread each.

Limits (``t2diff.retrieval.limits``): an over-size body is a 413 before any parsing; a request that cannot be
read within the time limit is a 408, one that cannot be answered within it a 503.

Errors never take the process down: invalid input -> 422 with ``{"error": "<what is wrong>", ...}``;
anything the model or index raises -> 500 with the exception's message.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from t2diff.retrieval.batching import BatchingConfig, DirectRunner, Job, MicroBatcher
from t2diff.retrieval.limits import LimitMiddleware, ServiceLimits, deadline_left
from t2diff.retrieval.requests import InputError, validate_history
from t2diff.retrieval.user_tower import Retriever

log = logging.getLogger("t2diff.serve")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"history": ["1193", 661, 914], "k": 10, "exclude_seen": True}]})

    history: list[StrictInt | StrictStr] = Field(
        description="original item ids (strings or integers, compared as strings), oldest first; "
                    "only the last max_len reach the model")
    timestamps: list[StrictInt] | None = Field(
        None, description="unix seconds of each history item (same length as history); used by time-aware "
                          "models on datasets with timestamps, ignored otherwise")
    k: StrictInt = Field(10, description="number of items to return, 1..num_items")
    exclude_seen: StrictBool = Field(False, description="never return items in the history (may then return "
                                                        "fewer than k when fewer unseen items remain)")
    request_time: StrictInt | None = Field(
        None, description="unix seconds the recommendation is for (time-aware models); default: now if "
                          "timestamps are given")


class ScoredItem(BaseModel):
    item_id: int | str
    score: float


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    model: str


class Health(BaseModel):
    status: str
    model: str
    num_items: int
    index: str
    dim: int
    max_len: int
    uses_time: bool
    checkpoint: str
    export: str | None
    max_batch: int
    max_body_bytes: int
    request_timeout_s: float


class ErrorBody(BaseModel):
    error: str
    unknown_item_ids: list[int | str] | None = None
    detail: list[dict[str, Any]] | None = None


_EXAMPLE = '{"history": ["id1", "id2"], "k": 10}'


def _short(x: Any, n: int = 60) -> str:
    r = repr(x)
    return r if len(r) <= n else r[: n - 3] + "..."


def _describe(errors: list[dict[str, Any]]) -> str:
    """Pydantic errors -> one readable sentence per problem ("history[2]: must be a string or an integer")."""
    out: list[str] = []
    for e in errors:
        if e.get("type") == "json_invalid":
            ctx = e.get("ctx", {}).get("error", "")
            out.append(f"request body is not valid JSON ({ctx})" if ctx else "request body is not valid JSON")
            continue
        loc = [x for x in e.get("loc", ()) if x != "body"]
        if not loc:  # the body itself: missing, or not an object
            out.append(f"request body must be a JSON object such as {_EXAMPLE}")
            continue
        if loc[-1] in ("int", "str"):  # the two branches of `StrictInt | StrictStr`: say it once
            loc = loc[:-1]
            msg = f"must be a string or an integer, got {_short(e.get('input'))}"
        elif e.get("type") == "extra_forbidden":
            msg = "is not a known field (known: history, timestamps, k, exclude_seen, request_time)"
        else:
            msg = e.get("msg", "invalid")
            if e.get("type", "").endswith("_type"):  # a wrong JSON type: show what was sent
                msg += f", got {_short(e.get('input'))}"
        where = "".join(f"[{x}]" if isinstance(x, int) else (f".{x}" if i else str(x)) for i, x in enumerate(loc))
        line = f"{where}: {msg}"
        if line not in out:
            out.append(line)
    return "; ".join(out)


def create_app(retriever: Retriever, threads: int | None = None, limits: ServiceLimits | None = None,
               batching: BatchingConfig | None = None) -> FastAPI:
    """threads: without micro-batching, at most this many requests compute at once (default: the CPU count,
    >= 2); beyond the core count, extra threads only time-slice the same cores and raise every latency."""
    tower, index = retriever.tower, retriever.index
    limits = limits or ServiceLimits()
    batching = batching or BatchingConfig()
    # internal id -> the original id to answer with (row 0: padding, never returned)
    answer_ids = [None] + [tower.original_item(i) for i in range(1, tower.num_items + 1)]
    runner: MicroBatcher | DirectRunner = (MicroBatcher(retriever, batching) if batching.enabled else
                                           DirectRunner(retriever, threads or max(2, os.cpu_count() or 1)))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        runner.close()

    app = FastAPI(lifespan=lifespan, title="t2diff matching service",
                  description=f"Top-K retrieval with the {tower.model_name} user tower and a {index.kind} "
                              f"inner-product index over {index.size} items.")
    app.add_middleware(LimitMiddleware, limits=limits)
    app.state.runner = runner
    health = Health(status="ok", model=tower.model_name, num_items=index.size, index=index.kind, dim=index.dim,
                    max_len=tower.max_len, uses_time=tower.uses_time, checkpoint=retriever.meta["checkpoint"],
                    export=retriever.meta.get("export"), max_batch=batching.max_batch,
                    max_body_bytes=limits.max_body_bytes, request_timeout_s=limits.request_timeout_s)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"error": _describe(list(exc.errors())), "detail": errors})

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:  # last resort; the process lives on
        log.error("unhandled error on %s: %s", request.url.path, traceback.format_exc())
        return JSONResponse(status_code=500, content={"error": f"internal error: {type(exc).__name__}: {exc}"})

    @app.get("/health", response_model=Health)
    async def get_health() -> Health:  # answers even while the model is busy
        return health

    @app.post("/recommend", response_model=RecommendResponse,
              responses={413: {"model": ErrorBody, "description": "request body over the size limit"},
                         422: {"model": ErrorBody, "description": "invalid request (the error says what)"},
                         500: {"model": ErrorBody, "description": "model or index failure"},
                         503: {"model": ErrorBody, "description": "not answered within the time limit"}})
    async def recommend(req: RecommendRequest, request: Request) -> Any:
        runner.arrived()
        try:
            return await _recommend(req, request)
        finally:
            runner.left()

    async def _recommend(req: RecommendRequest, request: Request) -> Any:
        try:
            k = retriever.check_k(req.k)
            internal, ts = validate_history(tower, req.history, req.timestamps)
        except InputError as e:
            body: dict[str, Any] = {"error": e.message}
            if e.unknown_ids:
                body["unknown_item_ids"] = e.unknown_ids
            return JSONResponse(status_code=422, content=body)
        job = Job(internal, ts, req.request_time, k, req.exclude_seen)
        try:
            scores, ids = await asyncio.wait_for(runner.submit(job), max(0.0, deadline_left(request.scope, limits)))
        except TimeoutError:
            return JSONResponse(status_code=503, content={
                "error": f"no answer within the time limit of {limits.request_timeout_s} s "
                         "(serve --request-timeout); the service is overloaded"})
        except Exception as e:  # a model/index failure must answer, not kill the worker
            log.error("recommend failed: %s", "".join(traceback.format_exception(e)))
            return JSONResponse(status_code=500, content={"error": f"model error: {type(e).__name__}: {e}"})
        items = [{"item_id": answer_ids[i], "score": s}  # plain Python lists: 100 items cost ~0.1 ms, not 0.3
                 for s, i in zip(scores.tolist(), ids.tolist(), strict=True) if i >= 0]
        # a Response skips FastAPI's re-validation of 100 items against RecommendResponse (docs keep it)
        return JSONResponse({"items": items, "model": tower.model_name})

    return app


def make_server(retriever: Retriever, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                access_log: bool = False, threads: int | None = None, limits: ServiceLimits | None = None,
                batching: BatchingConfig | None = None) -> uvicorn.Server:
    """A uvicorn server for the app (``.run()`` blocks; ``.should_exit = True`` stops it from another thread)."""
    config = uvicorn.Config(create_app(retriever, threads, limits, batching), host=host, port=port,
                            log_level=log_level, access_log=access_log)
    return uvicorn.Server(config)


def serve(retriever: Retriever, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          access_log: bool = False, threads: int | None = None, faiss_threads: int = 1,
          limits: ServiceLimits | None = None, batching: BatchingConfig | None = None) -> None:
    """Run the service until interrupted: one process, one PyTorch thread per computation and
    ``faiss_threads`` FAISS threads per search (module doc)."""
    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(faiss_threads)
    retriever.topk([[1]], 1)  # warm-up: the first forward pays one-off allocations; do it before traffic
    # the model, index and libraries are long-lived: keep them out of the cyclic GC's full passes, which
    # otherwise stall every in-flight request for tens of milliseconds now and then
    gc.collect()
    gc.freeze()
    make_server(retriever, host, port, log_level, access_log, threads, limits, batching).run()
