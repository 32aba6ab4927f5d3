"""The HTTP side of `saesteer serve`: an OpenAI-compatible API and the side-by-side page.

    GET  /health                    liveness (no auth)
    GET  /v1/models                 the served model names (unsteered, steered, registered specs)
    POST /v1/chat/completions       OpenAI chat completions, streamed (SSE) or not; `steering` extra
    GET  /v1/saesteer/info          registered specs and SAEs, limits (for the page)
    GET  /v1/saesteer/stats         batching counters
    POST /v1/saesteer/compare       unsteered and steered answers with per-token feature activations
    GET  /                          the side-by-side page (static files, no auth: it holds no secret)

Every error is OpenAI's JSON shape `{"error": {"message", "type", "param", "code"}}`, and none shows
a file path (`Registry.redact`). The request bodies and their checks are in `schemas.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from saesteer.errors import SaesteerError
from saesteer.generate import encode_prompt
from saesteer.judge import get_judge
from saesteer.judge.coherence import coherence_fields
from saesteer.models import ChatModel, Conversation
from saesteer.serve.batching import Batcher, Finished, Job, QueueFull, Sampling, ShuttingDown
from saesteer.serve.config import ServeSettings
from saesteer.serve.probe import probe_for, token_activations
from saesteer.serve.registry import InvalidSteering, LookupFailed, Registry, Resolved
from saesteer.serve.schemas import (ApiError, BodyLimit, ChatRequest, CompareRequest, MessageIn, error_response,
                                    read_json, validated)

log = logging.getLogger("saesteer.serve")
STATIC = resources.files("saesteer.serve") / "static"
MAX_STOP = 4
MAX_STOP_CHARS = 64


# --- the app --------------------------------------------------------------------------------

def create_app(lm: ChatModel, registry: Registry, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app; its lifespan starts and stops the model worker."""
    settings = settings or ServeSettings()
    batcher = Batcher(lm, max_queue=settings.max_queue, max_batch_size=settings.max_batch_size,
                      batch_wait_s=settings.batch_wait_ms / 1000)
    max_prompt = min(settings.max_prompt_tokens or lm.context_length - 1, lm.context_length - 1)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.close)

    app = FastAPI(title="saesteer", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.registry, app.state.settings = batcher, registry, settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, e: ApiError) -> JSONResponse:
        # a steering error may name an SAE's folder: the client sees its registered name instead
        return error_response(e.status, registry.redact(e.message), e.code, type_=e.type, param=e.param,
                              headers=e.headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _e: ClientDisconnect) -> Response:
        log.info("client %s left before sending its whole body (%s %s)",
                 request.client.host if request.client else "?", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(e.status_code, str(e.detail), code, headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(422, str(e.errors()[0].get("msg", "invalid request")), "invalid_value")

    @app.exception_handler(Exception)
    async def _internal(_request: Request, e: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(e).__name__}", "internal_error", type_="server_error")

    def require_key(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": registry.model_name, "auth": settings.api_key is not None}

    @v1.get("/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(registry, m) for m in registry.model_ids()]}

    @v1.get("/models/{model_id}")
    async def model(model_id: str) -> dict[str, Any]:
        try:
            registry.resolve_model(model_id)
        except LookupFailed as e:
            raise ApiError(404, str(e), e.code) from e
        return _model_card(registry, model_id)

    @v1.get("/saesteer/info")
    async def info() -> dict[str, Any]:
        limits = {k: getattr(settings, k) for k in ("max_body_bytes", "max_messages", "max_tokens",
                                                     "default_max_tokens", "max_n", "max_queue", "max_batch_size")}
        return {**registry.describe(), "limits": {**limits, "max_prompt_tokens": max_prompt},
                "model_id": lm.model_id, "context_length": lm.context_length}

    @v1.get("/saesteer/stats")
    async def stats() -> dict[str, Any]:
        return {"waiting": batcher.waiting, "running_rows": batcher.running_rows, **batcher.stats.as_dict()}

    # --- chat completions -------------------------------------------------------------------

    def conversation(messages: list[MessageIn]) -> tuple[Conversation, int]:
        if len(messages) > settings.max_messages:
            raise ApiError(413, f"{len(messages)} messages; this server takes at most {settings.max_messages}",
                           "too_many_messages", param="messages")
        conv = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
        try:
            n_prompt = len(encode_prompt(lm, conv, chat=True))
        except SaesteerError as e:
            raise ApiError(422, str(e), "invalid_value", param="messages") from e
        except Exception as e:  # the chat template itself refused the conversation
            raise ApiError(422, f"the model's chat template cannot render these messages: {e}", "invalid_value",
                           param="messages") from e
        if n_prompt > max_prompt:
            raise ApiError(413, f"the prompt has {n_prompt} tokens; this server takes at most {max_prompt}",
                           "context_length_exceeded", param="messages")
        return conv, n_prompt

    def budget(asked: int | None, n_prompt: int) -> int:
        room = lm.context_length - n_prompt
        if asked is None:
            return max(1, min(settings.default_max_tokens, room))
        if asked > settings.max_tokens:
            raise ApiError(422, f"max_tokens {asked} is over this server's limit of {settings.max_tokens}",
                           "invalid_value", param="max_tokens")
        if asked > room:
            raise ApiError(413, f"the prompt ({n_prompt} tokens) plus max_tokens ({asked}) exceeds the model's "
                           f"{lm.context_length}-token context", "context_length_exceeded", param="max_tokens")
        return asked

    def resolve(model_name: str | None, steering: Any) -> Resolved:
        try:
            if steering is not None:
                if model_name is not None:
                    registry.resolve_model(model_name)  # the model must still be one we serve
                return registry.resolve_request(steering)
            return registry.resolve_model(registry.model_name if model_name is None else model_name)
        except LookupFailed as e:
            raise ApiError(404, str(e), e.code, param="model" if e.code == "model_not_found" else "steering") from e
        except InvalidSteering as e:
            raise ApiError(422, str(e), "invalid_steering", param="steering") from e

    def submit(job: Job) -> None:
        try:
            batcher.submit(job)
        except QueueFull as e:
            raise ApiError(429, f"the server is busy ({settings.max_queue} requests waiting); retry shortly",
                           "queue_full", type_="rate_limit_error",
                           headers={"Retry-After": str(settings.retry_after_s)}) from e
        except ShuttingDown as e:
            raise ApiError(503, "the server is shutting down", "unavailable", type_="server_error") from e

    async def collect(job: Job, request: Request) -> list[Finished]:
        """Wait for every choice of a job; cancel it if the client goes away."""
        results: list[Finished | None] = [None] * job.n
        remaining = job.n
        while remaining:
            try:
                event = await asyncio.wait_for(job.events.get(), timeout=0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    batcher.cancel(job)
                    raise ClientGone() from None
                continue
            if event[0] == "error":
                raise ApiError(event[1], event[2], "generation_failed" if event[1] >= 500 else "invalid_value",
                               type_="server_error" if event[1] >= 500 else "invalid_request_error")
            if event[0] == "done":
                results[event[1]] = event[2]
                remaining -= 1
        return [r for r in results if r is not None]

    @v1.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req: ChatRequest = validated(ChatRequest, await read_json(request))
        if req.tools:
            raise ApiError(422, "tools are not supported by this server", "unsupported_parameter", param="tools")
        if req.logprobs:
            raise ApiError(422, "logprobs are not supported by this server", "unsupported_parameter",
                           param="logprobs")
        if req.n > settings.max_n:
            raise ApiError(422, f"n = {req.n} is over this server's limit of {settings.max_n}", "invalid_value",
                           param="n")
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        if len(stop) > MAX_STOP or any(not s or len(s) > MAX_STOP_CHARS for s in stop):
            raise ApiError(422, f"stop takes at most {MAX_STOP} non-empty strings of at most {MAX_STOP_CHARS} "
                           "characters", "invalid_value", param="stop")
        resolved = resolve(req.model, req.steering)
        conv, n_prompt = conversation(req.messages)
        max_tokens = budget(req.max_completion_tokens or req.max_tokens, n_prompt)
        temperature = float(req.temperature if req.temperature is not None else settings.default_temperature)
        sampling = Sampling(temperature=temperature, top_p=float(req.top_p or 1.0), stop=stop,
                            seed=req.seed if temperature > 0 else None)
        job = Job(conversation=conv, max_tokens=max_tokens, sampling=sampling, steering=resolved.steering,
                  loop=asyncio.get_running_loop(), n=req.n, stream=req.stream, n_prompt_tokens=n_prompt)
        submit(job)
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_sse(batcher, job, ident, created, req.model, resolved, include_usage,
                                          registry.redact),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            done = await collect(job, request)
        except ClientGone:
            return Response(status_code=499)
        completion = sum(f.n_new_tokens for f in done)
        return JSONResponse({
            "id": ident, "object": "chat.completion", "created": created, "model": req.model,
            "system_fingerprint": None,
            "choices": [{"index": i, "message": {"role": "assistant", "content": f.text},
                         "logprobs": None, "finish_reason": f.finish_reason} for i, f in enumerate(done)],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": completion,
                      "total_tokens": n_prompt + completion},
            "saesteer": _steering_info(resolved, done),
        })

    # --- the page's endpoint ----------------------------------------------------------------

    judge = get_judge("auto")

    def verdict(conv: Conversation, text: str) -> dict[str, Any]:
        """The offline judge's reading of an answer: refusal, coherent, and so refusal / compliance / broken."""
        users = [m["content"] for m in conv if m["role"] == "user"]
        refusal = judge.judge([users[-1] if users else ""], [text])[0].refusal
        return {"refusal": refusal, **coherence_fields(text, refusal)}

    @v1.post("/saesteer/compare")
    async def compare(request: Request) -> Response:
        req: CompareRequest = validated(CompareRequest, await read_json(request))
        resolved = resolve(req.model, req.steering)
        if resolved.steering is None:
            raise ApiError(422, "nothing to compare: this deployment has no --steer spec; choose a registered "
                           "spec or send a steering object", "invalid_steering", param="steering")
        try:
            probe = probe_for(registry, resolved.steering, *(
                (req.probe.sae, req.probe.feature, req.probe.hook) if req.probe else ()))
        except LookupFailed as e:
            raise ApiError(404, str(e), e.code, param="probe") from e
        except SaesteerError as e:
            raise ApiError(422, str(e), "invalid_value", param="probe") from e
        conv_u, n_u = conversation(req.messages)
        conv_s, n_s = conversation(req.steered_messages) if req.steered_messages else (conv_u, n_u)
        temperature = float(req.temperature if req.temperature is not None else settings.default_temperature)
        loop = asyncio.get_running_loop()
        jobs = [Job(conversation=c, max_tokens=budget(req.max_tokens, n), sampling=Sampling(temperature=temperature),
                    steering=st, loop=loop, n_prompt_tokens=n)
                for c, n, st in ((conv_u, n_u, None), (conv_s, n_s, resolved.steering))]
        submitted: list[Job] = []
        try:
            for job in jobs:
                submit(job)
                submitted.append(job)
            unsteered, steered = [(await collect(job, request))[0] for job in jobs]
            tokens_u, tokens_s = await batcher.call(lambda: (
                token_activations(lm, conv_u, unsteered.token_ids, None, probe),
                token_activations(lm, conv_s, steered.token_ids, resolved.steering, probe)))
        except ClientGone:
            return Response(status_code=499)
        finally:
            for job in submitted:
                batcher.cancel(job)
        spec = resolved.steering.spec
        return JSONResponse({
            "model": registry.model_name,
            "steering": {"label": resolved.label, "hash": resolved.key, "positions": spec.positions,
                         "conditional": resolved.steering.gate is not None},
            "probe": probe.info,
            "unsteered": {"text": unsteered.text, "finish_reason": unsteered.finish_reason, "tokens": tokens_u,
                          "verdict": verdict(conv_u, unsteered.text)},
            "steered": {"text": steered.text, "finish_reason": steered.finish_reason, "tokens": tokens_s,
                        "steered": steered.steered, "detector_score": steered.detector_score,
                        "verdict": verdict(conv_s, steered.text)},
        })

    app.include_router(v1)

    if settings.page:
        page_headers = {"Content-Security-Policy": "default-src 'self'; style-src 'self'; script-src 'self'; "
                        "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

        @app.get("/", include_in_schema=False)
        async def page() -> FileResponse:
            return FileResponse(str(STATIC / "index.html"), headers=page_headers)

        app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def _model_card(registry: Registry, model_id: str) -> dict[str, Any]:
    resolved = registry.resolve_model(model_id)
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "saesteer",
            "saesteer": {"steering": resolved.label, "spec_hash": resolved.key,
                         "conditional": resolved.steering is not None and resolved.steering.gate is not None}}


def _steering_info(resolved: Resolved, done: list[Finished]) -> dict[str, Any]:
    return {"steering": resolved.label, "spec_hash": resolved.key, "steered": [f.steered for f in done],
            "detector_scores": [f.detector_score for f in done]}


def _chunk(ident: str, created: int, model: str, choices: list[dict[str, Any]], **extra: Any) -> str:
    body = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None, "choices": choices, **extra}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _sse(batcher: Batcher, job: Job, ident: str, created: int, model: str, resolved: Resolved,
               include_usage: bool, redact: Callable[[str], str]) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    complete = False
    try:
        for i in range(job.n):
            yield _chunk(ident, created, model, [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                  "logprobs": None, "finish_reason": None}])
        remaining, completion, done = job.n, 0, []
        while remaining:
            event = await job.events.get()
            if event[0] == "delta":
                yield _chunk(ident, created, model, [{"index": event[1], "delta": {"content": event[2]},
                                                      "logprobs": None, "finish_reason": None}])
            elif event[0] == "done":
                f: Finished = event[2]
                remaining -= 1
                completion += f.n_new_tokens
                done.append(f)
                yield _chunk(ident, created, model, [{"index": event[1], "delta": {}, "logprobs": None,
                                                      "finish_reason": f.finish_reason}],
                             saesteer={"steering": resolved.label, "spec_hash": resolved.key,
                                       "steered": f.steered, "detector_score": f.detector_score})
            else:
                err = {"message": redact(event[2]), "param": None, "code": "generation_failed",
                       "type": "server_error" if event[1] >= 500 else "invalid_request_error"}
                yield f"data: {json.dumps({'error': err})}\n\n"
                complete = True
                return
        if include_usage:
            usage = {"prompt_tokens": job.n_prompt_tokens, "completion_tokens": completion,
                     "total_tokens": job.n_prompt_tokens + completion}
            yield _chunk(ident, created, model, [], usage=usage)
        yield "data: [DONE]\n\n"
        complete = True
    finally:
        if not complete:  # the client went away mid-stream: free its rows at the next token
            batcher.cancel(job)
