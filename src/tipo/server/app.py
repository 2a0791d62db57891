"""``create_app(settings)``: the HTTP service (FastAPI on uvicorn).

FastAPI because it gives the OpenAPI page from the same pydantic models that check requests,
and Starlette underneath is plain ASGI (our middleware is too); uvicorn is the ASGI server
FastAPI documents. Handlers only parse, check and wait: the engine loop (engine_loop.py) runs
the model for everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import BackendError, InvalidRequestError, TipoError
from ..pipeline import TIPO
from ..protocol import ModelRequest, build_prompt
from ..templates import TEMPLATES
from .engine_loop import EngineLoop, Job, QueueFullError, RequestTimeoutError, deliver_now
from .errors import (
    ApiError,
    BodyTimeoutError,
    InvalidJSONError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    error_body,
    status_and_kind,
    validation_message,
)
from .limits import expand_requests
from .metrics import ServerMetrics
from .schemas import ExpandBody, ProtocolBody
from .security import ApiKeyCheck, SecurityHeaders
from .settings import ServerSettings

PING_SECONDS = 15.0  # an SSE comment this often keeps proxies from closing a quiet stream
TERMINAL_EVENTS = ("result", "error", "cancelled")


@dataclass
class ServerState:
    settings: ServerSettings
    tipo: TIPO
    loop: EngineLoop
    metrics: ServerMetrics
    owns_model: bool  # loaded by create_app: closed at shutdown


def load_tipo(settings: ServerSettings) -> TIPO:
    """The model, as the settings say; TipoError (with a hint) when it cannot be loaded."""
    from ..backends import auto_backend
    from ..checkpoints import resolve

    checkpoint = resolve(settings.model, offline=settings.offline)
    backend = settings.backend
    if backend == "auto":
        backend = "openai" if settings.url else auto_backend(checkpoint.format)
    options: dict[str, Any] = {}
    if backend == "torch":
        options["max_batch"] = settings.max_batch
        if settings.compile_attention:
            options["compile_attention"] = True
    elif settings.compile_attention:
        raise BackendError(
            f"--compile-attention is an option of the torch backend, not of {backend}",
            hint="use --backend torch, or drop --compile-attention",
        )
    if backend == "openai":
        options.update(url=list(settings.url), timeout=settings.timeout)
        options.update(dialect=settings.remote_dialect, llguidance=settings.remote_llguidance)
        if settings.remote_api_key is not None:
            options["api_key"] = settings.remote_api_key.get_secret_value()
    return TIPO.load(checkpoint, backend=backend, device=settings.device, dtype=settings.dtype,
                     tag_csv=settings.tag_csv, **options)  # fmt: skip


def create_app(settings: ServerSettings | None = None, *, tipo: TIPO | None = None) -> FastAPI:
    """The app; the model is loaded now (errors surface before serving) unless given."""
    settings = settings if settings is not None else ServerSettings()
    owns_model = tipo is None
    tipo = tipo if tipo is not None else load_tipo(settings)
    metrics = ServerMetrics()
    loop = EngineLoop(tipo, max_batch=settings.max_batch, max_queue=settings.max_queue)
    loop.on_tokens = metrics.count_tokens
    metrics.watch(lambda: loop.queue_depth, lambda: loop.batch_size, lambda: loop.admitted)
    state = ServerState(settings, tipo, loop, metrics, owns_model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop.deliver = _deliver_on(asyncio.get_running_loop())
        loop.start()
        try:
            yield
        finally:
            loop.stop()
            if state.owns_model:
                tipo.close()

    app = FastAPI(
        title="TIPO", version=__version__, lifespan=lifespan, redoc_url=None,
        description="Expand Stable Diffusion prompts with a TIPO model. Errors are "
        '`{"error": {"kind", "message", "hint"}}`.',
    )  # fmt: skip
    app.state.tipo_server = state
    _add_error_handlers(app, metrics)
    _add_routes(app, state)
    static = resources.files("tipo.server") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    _add_middleware(app, settings, metrics)
    return app


def _add_middleware(app: FastAPI, settings: ServerSettings, metrics: ServerMetrics) -> None:
    # Added last = outermost: CORS answers preflights before the key check sees them.
    key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
    if key:
        reject = metrics.errors.labels("unauthorized").inc
        app.add_middleware(ApiKeyCheck, key=key, on_reject=reject)
    if settings.cors_origin:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origin),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(SecurityHeaders)


def error_response(
    error: TipoError, metrics: ServerMetrics, path: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    status, kind = status_and_kind(error)
    metrics.errors.labels(kind).inc()
    if path == "/v1/expand":
        metrics.requests.labels(str(status)).inc()
    return JSONResponse(error_body(error), status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    @app.exception_handler(TipoError)
    async def tipo_error(request: Request, error: TipoError) -> JSONResponse:
        return error_response(error, metrics, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        message = validation_message(error.errors())
        return error_response(InvalidRequestError(message), metrics, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        if error.status_code == 404:
            return error_response(
                NotFoundError(f"no route {path}", hint="see /docs"), metrics, path
            )
        if error.status_code == 405:
            not_allowed = MethodNotAllowedError(f"{request.method} is not allowed on {path}")
            return error_response(not_allowed, metrics, path)
        api = ApiError(str(error.detail))
        api.status = error.status_code
        return error_response(api, metrics, path)


# -- routes ----------------------------------------------------------------------------------


def _add_routes(app: FastAPI, state: ServerState) -> None:
    settings, tipo, metrics = state.settings, state.tipo, state.metrics
    static = resources.files("tipo.server") / "static"

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(str(static / "index.html"), media_type="text/html")

    @app.get("/health", tags=["service"])
    async def health() -> JSONResponse:
        """200 while the engine loop runs, 503 otherwise."""
        if state.loop.alive:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "engine loop stopped"}, status_code=503)

    @app.get("/metrics", tags=["service"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus text format: queue depth, batch size, tokens/s, latency, errors."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", tags=["v1"])
    async def models() -> dict[str, Any]:
        backend = tipo.backend
        engine = getattr(backend, "engine", None)
        entry = {
            "id": public_model_id(tipo.model_name),
            "object": "model",
            "backend": backend.name,
            "format": getattr(engine, "format", None) or settings.dtype,
            "context_length": backend.context_length,
            "max_batch": settings.max_batch,
            "capabilities": vars(backend.capabilities),
        }
        return {"object": "list", "data": [entry]}

    @app.get("/v1/templates", tags=["v1"])
    async def templates() -> dict[str, Any]:
        rows = [{"name": n, "description": t.description, "text": t.text}
                for n, t in TEMPLATES.items() if " " not in n]  # fmt: skip
        return {"templates": rows}

    @app.post("/v1/protocol", tags=["v1"], openapi_extra=_body_schema(ProtocolBody))
    async def protocol(request: Request) -> dict[str, Any]:
        """The exact model-facing prompt of a request, and its token ids."""
        body = _parse(ProtocolBody, await read_body(request, settings))
        try:
            prompt = build_prompt(ModelRequest.create(**body.model_dump()))
        except TypeError as error:
            raise InvalidRequestError(str(error)) from None
        return {"prompt": prompt, "token_ids": tipo.tokenizer.encode(prompt)}

    @app.post("/v1/expand", tags=["v1"], openapi_extra=_body_schema(ExpandBody))
    async def expand(request: Request) -> Response:
        """Expand a prompt: the result of ``tipo expand --json`` (a list for variants > 1),
        or with ``"stream": true`` Server-Sent Events (see the README)."""
        started = time.perf_counter()
        body = _parse(ExpandBody, await read_body(request, settings))
        requests = expand_requests(body, settings)
        events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        job = Job(requests, _put(events), time.monotonic() + settings.timeout)
        try:
            state.loop.submit(job)
        except QueueFullError as error:
            retry = {"Retry-After": str(_retry_after(metrics))}
            return error_response(error, metrics, request.url.path, retry)
        seeds = [r.seed for r in requests]
        if body.stream:
            stream = _sse(job, events, seeds, started, metrics)
            return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)
        outcome = await _collect(request, job, events, started, metrics)
        metrics.requests.labels("200").inc()
        metrics.latency.observe(time.perf_counter() - started)
        return JSONResponse(outcome if body.variants > 1 else outcome[0])


def public_model_id(name: str) -> str:
    """A Hub id as it is; a local path by its last part (clients need not see server paths)."""
    path = Path(name)
    return path.name if path.is_absolute() or path.exists() else name


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _body_schema(model: type[Any]) -> dict[str, Any]:
    """The request body for the OpenAPI page; handlers read the body themselves (with a size
    and time limit) instead of letting FastAPI read it unbounded."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


async def read_body(request: Request, settings: ServerSettings) -> bytes:
    """The body, at most ``max_body_bytes``, received within ``body_timeout`` seconds."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaTypeError(
            f"expected a JSON body, got content type {content_type or 'none'!r}",
            hint="send the header 'Content-Type: application/json'",
        )
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise PayloadTooLargeError(f"the body is over {limit:,} bytes")

    async def receive() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"the body is over {limit:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(receive(), settings.body_timeout)
    except asyncio.TimeoutError:
        raise BodyTimeoutError(
            f"the body did not arrive within {settings.body_timeout:g} s"
        ) from None


def _parse(model: type[Any], raw: bytes) -> Any:
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        problems = error.errors(include_url=False)
        if any(p["type"] == "json_invalid" for p in problems):
            raise InvalidJSONError(
                f"the body is not valid JSON: {problems[0]['msg']}",
                hint="send one JSON object",
            ) from None
        raise InvalidRequestError(
            validation_message(problems), hint="the request fields are listed at /docs"
        ) from None


def _retry_after(metrics: ServerMetrics) -> int:
    """Seconds until a place is likely free: the mean request time so far, at least 1."""
    count = _sample_value(metrics, "tipo_request_duration_seconds_count")
    total = _sample_value(metrics, "tipo_request_duration_seconds_sum")
    return max(1, math.ceil(total / count)) if count else 1


def _sample_value(metrics: ServerMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def _deliver_on(event_loop: asyncio.AbstractEventLoop) -> Any:
    """The engine loop's ``deliver``: one hop to the event loop per engine turn, whatever the
    number of events (a per-event hop costs a wake-up each, on cores the model needs)."""

    def deliver(batch: list[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is closing: nobody listens
            event_loop.call_soon_threadsafe(deliver_now, batch)

    return deliver


def _put(events: asyncio.Queue[Any]) -> Any:
    return lambda name, data: events.put_nowait((name, data))


async def _events(
    job: Job, events: asyncio.Queue[tuple[str, dict[str, Any]]]
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The job's events until every variant has ended; ("ping", {}) when quiet for a while.
    The engine loop enforces the deadline; this is the backstop when it is stuck in a long
    round (a remote server): past the deadline plus a grace second, the job times out here."""
    remaining = len(job.requests)
    while remaining:
        left = job.deadline + 1.0 - time.monotonic()
        if left <= 0:
            job.cancel("timeout")
            raise RequestTimeoutError("the request ran out of time")
        try:
            name, data = await asyncio.wait_for(events.get(), min(left, PING_SECONDS))
        except asyncio.TimeoutError:
            yield "ping", {}
            continue
        remaining -= name in TERMINAL_EVENTS
        yield name, data


async def _collect(
    request: Request,
    job: Job,
    events: asyncio.Queue[tuple[str, dict[str, Any]]],
    started: float,
    metrics: ServerMetrics,
) -> list[dict[str, Any]]:
    """Every variant's result, or the first error; a client that hangs up cancels the job."""
    results: dict[int, dict[str, Any]] = {}
    first = True
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        async for name, data in _race(_events(job, events), gone):
            if name == "token" and first:
                first = False
                metrics.time_to_first_token.observe(time.perf_counter() - started)
            elif name == "error":
                job.cancel("failed")
                raise data["error"]
            elif name == "result":
                results[data["variant"]] = data["result"]
    finally:
        gone.cancel()
        if len(results) < len(job.requests):
            job.cancel("client")
    return [results[i] for i in range(len(job.requests))]


async def _race(
    events: AsyncIterator[tuple[str, dict[str, Any]]], gone: asyncio.Future[None]
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """``events``, stopped early (CancelledError) when ``gone`` completes first."""
    iterator = events.__aiter__()
    while True:
        following = asyncio.ensure_future(iterator.__anext__())
        done, _ = await asyncio.wait({following, gone}, return_when=asyncio.FIRST_COMPLETED)
        if following not in done:
            following.cancel()
            raise asyncio.CancelledError("client disconnected")
        try:
            yield following.result()
        except StopAsyncIteration:
            return


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _sse(
    job: Job,
    events: asyncio.Queue[tuple[str, dict[str, Any]]],
    seeds: list[int],
    started: float,
    metrics: ServerMetrics,
) -> AsyncIterator[str]:
    """The event stream. Starlette cancels this generator when the client disconnects: the
    ``finally`` then cancels the job, and the engine frees its sequences at its next step.
    Events waiting together go out in one write (one engine step's tokens of all variants)."""
    status, first, finished = 200, True, False
    try:
        chunk = [_sse_event("start", {"variants": len(seeds), "seeds": seeds})]
        try:
            async for name, data in _events(job, events):
                if name == "token" and first:
                    first = False
                    metrics.time_to_first_token.observe(time.perf_counter() - started)
                if name == "error":
                    error: TipoError = data["error"]
                    status, kind = status_and_kind(error)
                    metrics.errors.labels(kind).inc()
                    data = {"variant": data["variant"], **error_body(error)}
                if name == "ping":
                    chunk.append(": ping\n\n")
                elif name != "cancelled":
                    chunk.append(_sse_event(name, data))
                if events.empty():
                    yield "".join(chunk)
                    chunk = []
        except TipoError as error:  # the backstop timeout
            status, kind = status_and_kind(error)
            metrics.errors.labels(kind).inc()
            chunk.append(_sse_event("error", {"variant": None, **error_body(error)}))
        yield "".join([*chunk, _sse_event("done", {})])
        finished = True
    finally:
        job.cancel("client")  # no-op once every variant has ended
        # 499: the client closed the stream first (nginx's code for it)
        metrics.requests.labels(str(status) if finished else "499").inc()
        metrics.latency.observe(time.perf_counter() - started)


def _sse_event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(settings: ServerSettings) -> None:
    """Load the model, then serve until interrupted (``tipo serve``)."""
    import uvicorn

    app = create_app(settings)
    url = f"http://{settings.host}:{settings.port}"
    print(f"tipo serve: {settings.model or 'the default model'} at {url}/ (API: {url}/docs)",
          file=sys.stderr)  # fmt: skip
    if settings.host not in LOOPBACK and settings.api_key is None:
        print(f"tipo serve: warning: listening on {settings.host} without --api-key: anyone "
              "who can reach this port can use the model", file=sys.stderr)  # fmt: skip
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=5)  # fmt: skip


__all__ = ["ServerState", "create_app", "load_tipo", "read_body", "serve"]
