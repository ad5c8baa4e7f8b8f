"""`mebot serve`: the bot over HTTP (Starlette + uvicorn): the web page, `/api`, the OpenAI-compatible
`/v1/chat/completions` (streaming too), feedback, `/v1/models` and `/healthz`; endpoints and limits in
docs/serving.md and docs/running-in-public.md. This module holds the server's state, limits and endpoints; the
request and reply formats and the JSON errors are in protocol.py, the models answered with in models.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import json
import logging
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mebot.assets.index.rag import ModelOutputError, QuestionError
from mebot.pipeline.server.limits import ClientIdentity, DailyAnswers, SecurityHeaders, TokenBuckets
from mebot.pipeline.server.models import (
    BEST_FINETUNE,
    BEST_MODEL,
    EXTRACTIVE_MODEL,
    FT_PREFIX,
    RAG_MODEL,
    ModelRegistry,
    NotReadyError,
    Reply,
    UnknownModelError,
)
from mebot.pipeline.server.protocol import (
    ApiError,
    StreamedText,
    check_text,
    completion,
    completion_chunk,
    error_body,
    error_response,
    last_user_message,
    read_json,
    source_document,
    source_json,
    usage,
)
from mebot.pipeline.server.release import served_release_id
from mebot.pipeline.server.visitor import VisitorRecorder
from mebot.resources.chat import BudgetExceeded, ChatProviderError
from mebot.resources.settings import Settings

log = logging.getLogger("mebot.serve")

STATIC_DIR = Path(__file__).with_name("static")
KEEPALIVE_S = 10.0
PERSONA_PLACEHOLDER = "{{persona_name}}"


class GenerationCancelled(Exception):
    """Raised in the generation worker by the streaming callback once the client has gone: it stops the model."""


# -------------------------------------------------------------------------------------------------- limits


class GenerationQueue:
    """One generation at a time in a worker thread; at most `max_waiting` more wait, the rest get 503."""

    def __init__(self, max_waiting: int):
        self.capacity = 1 + max_waiting
        self.pending = 0  # running + waiting; only touched on the event loop
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")

    def reserve(self) -> None:
        if self.pending >= self.capacity:
            raise ApiError(
                503,
                f"the server is busy: {self.pending} answers are being generated or waiting (limit "
                f"{self.capacity}); try again shortly",
                "queue_full",
                {"Retry-After": "5"},
            )
        self.pending += 1

    def release(self) -> None:
        self.pending -= 1

    def submit(self, fn, *args) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------------------------ the app


class Server:
    """State of one running server: the model registry, limits and the generation worker."""

    def __init__(self, settings: Settings, registry: ModelRegistry):
        self.settings = settings
        self.registry = registry
        serve = settings.serve
        self.identity = ClientIdentity(serve.trusted_proxies)
        self.buckets = TokenBuckets(serve.rate_limit_per_minute, serve.rate_limit_burst)
        self.daily_answers = DailyAnswers(serve.max_answers_per_client_per_day)
        self.queue = GenerationQueue(serve.max_queued_generations)
        self.retrieval_slots = asyncio.Semaphore(4)
        self.started_at = time.time()
        self.visitors = VisitorRecorder(settings, registry.data_dir)  # the visitor log (no address)

    # --------------------------------------------------------------------------------------- helpers

    def client(self, request: Request) -> str:
        """Who is asking: the connecting address, or what a trusted proxy says (limits.ClientIdentity)."""
        return self.identity.key(request.client.host if request.client else None, request.headers)

    def rate_limit(self, request: Request) -> None:
        wait = self.buckets.take(self.client(request))
        if wait > 0:
            raise ApiError(
                429,
                f"too many requests: the limit is {self.settings.serve.rate_limit_per_minute:g} per minute "
                f"(bursts of {self.settings.serve.rate_limit_burst}); retry in {math.ceil(wait)} s",
                "rate_limited",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )

    def count_answer(self, request: Request, model: str) -> None:
        """One more generated answer for this client today; 429 past serve.max_answers_per_client_per_day."""
        if model == EXTRACTIVE_MODEL:  # quotes, no model call: nothing spent
            return
        if not self.daily_answers.take(self.client(request)):
            cap = self.settings.serve.max_answers_per_client_per_day
            raise ApiError(
                429,
                f"you have had the {cap} answers one visitor may have per day; ask again tomorrow (UTC), or ask "
                "with retrieval_only=1 for the pages alone",
                "daily_cap",
            )

    def check_question(self, question: Any) -> str:
        if not isinstance(question, str) or not question.strip():
            raise ApiError(400, 'the question is empty; ask something, e.g. "What telescope do you own?"', "empty")
        check_text(question, "the question")
        limit = self.settings.serve.max_query_chars
        if len(question) > limit:
            raise ApiError(
                413, f"the question is {len(question)} characters long; the limit is {limit}", "query_too_long"
            )
        return question

    def check_ready(self) -> None:
        if not self.registry.ready:
            raise ApiError(503, self.registry.not_ready_reason or "no index yet: run `make run` first", "not_ready")

    async def generate(self, model: str, question: str, on_token: Callable[[str], None] | None = None) -> Reply:
        """`model`'s answer, computed in the generation worker; the queue slot must be reserved already.
        `on_token` (called in the worker) gets the answer's pieces as the model generates them."""
        answer = self.registry.answer
        if on_token is not None:
            answer = functools.partial(self.registry.answer, on_token=on_token)
        try:
            return await self.queue.submit(answer, model, question)
        except QuestionError as exc:
            raise ApiError(400, str(exc), "bad_question") from None
        except NotReadyError as exc:
            raise ApiError(503, str(exc), "not_ready") from None
        except ModelOutputError:
            raise ApiError(502, f"the model {model} returned no usable answer; ask again", "model_output") from None
        except BudgetExceeded as exc:
            log.error("generation refused: %s", exc)
            raise ApiError(
                503,
                "the answer budget is spent (budget.max_usd): no more answers until the owner raises it; "
                "retrieval_only=1 still finds the pages",
                "budget_exhausted",
            ) from None
        except ChatProviderError as exc:
            log.error("generation failed: %s", exc)
            raise ApiError(502, f"the model {model} is unavailable (see the server log)", "model_error") from None

    # ------------------------------------------------------------------------------------- endpoints

    async def index_page(self, request: Request) -> Response:
        """The page, titled with the person's name (persona.name, HTML-escaped)."""
        page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        page = page.replace(PERSONA_PLACEHOLDER, html.escape(self.settings.persona.name))
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    async def widget_script(self, request: Request) -> Response:
        """/widget.js: the "Ask <name>" button and panel for the person's own site, with persona.name as a JSON
        string (a script, not HTML: json.dumps escapes it, and `<` too so it cannot end a script element)."""
        script = (STATIC_DIR / "widget.js").read_text(encoding="utf-8")
        name = json.dumps(self.settings.persona.name).replace("<", "\\u003c")
        script = script.replace(f'"{PERSONA_PLACEHOLDER}"', name)
        return Response(script, media_type="text/javascript; charset=utf-8", headers={"Cache-Control": "no-cache"})

    async def healthz(self, request: Request) -> Response:
        ready = self.registry.ready
        body = {
            "status": "ok" if ready else "not_ready",
            "ready": ready,
            "index_version": self.registry.index_version(),
            "release": served_release_id(self.registry.data_dir),  # data/releases/CURRENT; None before the first
            "models": self.registry.names() if ready else [],
            "queued_generations": self.queue.pending,
            "uptime_s": round(time.time() - self.started_at, 1),
        }
        if not ready:
            body["reason"] = self.registry.not_ready_reason
        return JSONResponse(body, status_code=200 if ready else 503)

    async def models(self, request: Request) -> Response:
        created = int(self.registry.loaded_at or self.started_at)
        names = self.registry.names() if self.registry.ready else []
        data = [{"id": name, "object": "model", "created": created, "owned_by": "mebot"} for name in names]
        best, default = self.registry.best, self.registry.default
        for entry in data:
            if entry["id"] == BEST_FINETUNE and best is not None:  # which model `finetune` is, and why
                entry.update(resolves_to=best.model, chosen_by=best.reason)
            if entry["id"] == default.model:  # what the page preselects and /api answers with, and why
                entry.update(default=True, default_chosen_by=default.reason)
        return JSONResponse({"object": "list", "data": data})

    def api_model(self, value: str) -> str:
        """None -> serve.default_model resolved, `best` -> the best served model (serve.default_metric), `qa` -> rag,
        `finetune` -> the best fine-tuned model (serve.finetune_metric), `finetune:<key>` -> ft-<key>; rag/ft-<key>
        as they are."""
        names = self.registry.names()
        value = value.strip()
        if not value:  # serve.default_model, resolved (never `best` itself)
            return self.registry.default.model
        if value == BEST_MODEL:  # the best served model by serve.default_metric
            return self.registry.check(BEST_MODEL)
        if value in ("qa", RAG_MODEL):
            return RAG_MODEL
        if value == EXTRACTIVE_MODEL:  # the best sentences quoted, no LLM
            return value
        finetuned = [n for n in names if n.startswith(FT_PREFIX)]
        if value == BEST_FINETUNE:
            if self.registry.best is None:
                raise ApiError(400, "no fine-tuned model is available; the valid models are: qa (rag)", "unknown_model")
            return self.registry.best.model
        if value.startswith("finetune:"):
            value = "ft-" + value.split(":", 1)[1]
        if value in finetuned:
            return value
        valid = [BEST_MODEL, "qa", EXTRACTIVE_MODEL, *(["finetune"] if finetuned else [])]
        valid += ["finetune:" + n[3:] for n in finetuned]
        raise ApiError(400, f"unknown model {value!r}; the valid models are: {', '.join(valid)}", "unknown_model")

    async def api(self, request: Request) -> Response:
        self.rate_limit(request)
        params = request.query_params
        question = self.check_question(params.get("query", params.get("question", "")))
        self.check_ready()
        retrieval_only = params.get("retrieval_only", "").lower() in ("1", "true", "yes")
        model = self.api_model(params.get("model", "") or ("qa" if retrieval_only else ""))  # retrieval: rag's
        if retrieval_only:
            if model != RAG_MODEL:
                raise ApiError(400, "retrieval_only applies to the qa (rag) model only", "bad_request")
            started = time.monotonic()
            async with self.retrieval_slots:
                try:
                    sources = await asyncio.to_thread(self.registry.retrieve, question)
                except QuestionError as exc:
                    raise ApiError(400, str(exc), "bad_question") from None
            reply = Reply(model=model, text="", sources=sources, latency_s=round(time.monotonic() - started, 3))
        else:
            self.queue.reserve()
            try:
                self.count_answer(request, model)
                reply = await self.generate(model, question)
            finally:
                self.queue.release()
        answer_id = None if retrieval_only else await self.visitors.record("api", question, reply)
        return JSONResponse(
            {
                "id": answer_id,
                "text": reply.text,
                "sourceDocuments": [source_document(s) for s in reply.sources],
                "model": reply.model,
                "retrieval_only": retrieval_only,
                "cached": reply.cached,
                "latency_s": reply.latency_s,
            }
        )

    async def feedback(self, request: Request) -> Response:
        """POST /api/feedback {"id", "rating": "up"|"down", "comment"} (pipeline/server/visitor.py)."""
        self.rate_limit(request)
        return await self.visitors.feedback(request)

    async def chat_completions(self, request: Request) -> Response:
        self.rate_limit(request)
        body = await read_json(request)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(
                400, f"'model' is required; the valid models are: {', '.join(self.registry.names())}", "missing_model"
            )
        serve = self.settings.serve
        messages = last_user_message(body.get("messages"), serve.max_messages, serve.max_messages_chars)
        question = self.check_question(messages)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, "'stream' must be true or false", "bad_request")
        self.check_ready()
        try:
            model = self.registry.check(model)  # `finetune`: the best fine-tuned model, named in the reply
        except UnknownModelError as exc:
            raise ApiError(400, str(exc), "model_not_found") from None
        self.queue.reserve()
        try:
            self.count_answer(request, model)
        except ApiError:
            self.queue.release()
            raise
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if not stream:
            try:
                reply = await self.generate(model, question)
            finally:
                self.queue.release()
            await self.visitors.record("v1", question, reply, completion_id)
            return JSONResponse(completion(completion_id, created, model, reply))
        return StreamingResponse(
            self.stream_completion(completion_id, created, model, question),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def stream_completion(
        self, completion_id: str, created: int, model: str, question: str
    ) -> AsyncIterator[str]:
        """SSE: a role chunk at once; then the answer piece by piece as the model generates it (llama.cpp token
        by token, or an OpenAI-compatible endpoint's own stream), with keep-alive comments while nothing comes;
        a finish chunk with usage, sources (with their text) and the whole answer as `text`; then `data: [DONE]`.
        The pieces add up to the non-streaming reply's answer. A client that goes away stops the generation at
        its next token. The queue slot is ours."""

        chunk = functools.partial(completion_chunk, completion_id, created, model)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str] = asyncio.Queue()
        gone = threading.Event()

        def on_token(piece: str) -> None:  # in the generation worker
            if gone.is_set():
                raise GenerationCancelled("the client went away")
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        streamed = StreamedText()
        released = False
        task: asyncio.Future | None = None
        try:
            yield chunk({"role": "assistant", "content": ""})
            task = asyncio.ensure_future(self.generate(model, question, on_token))
            while not task.done():
                getter = asyncio.ensure_future(pieces.get())
                done, _ = await asyncio.wait({task, getter}, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    if text := streamed.add(getter.result()):
                        yield chunk({"content": text})
                    continue
                getter.cancel()
                if not done:
                    yield ": keep-alive\n\n"
            while not pieces.empty():  # pieces queued before the answer was returned
                if text := streamed.add(pieces.get_nowait()):
                    yield chunk({"content": text})
            self.queue.release()
            released = True
            try:
                reply = task.result()
            except ApiError as exc:
                yield f"data: {json.dumps(error_body(exc.status, exc.message, exc.code))}\n\n"
                yield "data: [DONE]\n\n"
                return
            if rest := streamed.rest(reply.text):
                yield chunk({"content": rest})
            await self.visitors.record("v1-stream", question, reply, completion_id)  # the page asks this way
            sources = [source_json(s, with_text=True) for s in reply.sources]
            yield chunk({}, "stop", usage=usage(reply), sources=sources, text=reply.text)
            yield "data: [DONE]\n\n"
        except Exception:  # noqa: BLE001 - the status line is sent; report in-band
            log.exception("streaming failed")
            yield f"data: {json.dumps(error_body(500, 'the answer failed (see the server log)', 'internal_error'))}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            gone.set()  # a generation still running stops at its next token
            if task is not None and not task.done():
                task.add_done_callback(lambda t: t.cancelled() or t.exception())  # its error is expected
            if not released:
                self.queue.release()


# --------------------------------------------------------------------------------------------- assembly


def create_app(settings: Settings, registry: ModelRegistry) -> Starlette:
    server: Server | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal server
        server = Server(settings, registry)
        app.state.server = server
        await asyncio.to_thread(registry.refresh)
        watcher = asyncio.create_task(watch(registry, settings.serve.reload_check_s))
        try:
            yield
        finally:
            watcher.cancel()
            server.queue.shutdown()

    def endpoint(name: str):
        async def handle(request: Request) -> Response:
            try:
                return await getattr(request.app.state.server, name)(request)
            except ApiError as exc:
                return error_response(exc.status, exc.message, exc.code, exc.headers)
            except Exception:  # noqa: BLE001 - never leak a trace
                log.exception("%s %s failed", request.method, request.url.path)
                return error_response(500, "internal error (see the server log)", "internal_error")

        return handle

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "http")

    async def server_error(request: Request, exc: Exception) -> Response:
        return error_response(500, "internal error (see the server log)", "internal_error")

    routes = [
        Route("/", endpoint("index_page")),
        Route("/widget.js", endpoint("widget_script")),
        Route("/healthz", endpoint("healthz")),
        Route("/api", endpoint("api")),
        Route("/v1/models", endpoint("models")),
        Route("/v1/chat/completions", endpoint("chat_completions"), methods=["POST"]),
        Route("/api/feedback", endpoint("feedback"), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.serve.allowed_origins),  # the widget's sites (docs/serving.md)
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        ),
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )


async def watch(registry: ModelRegistry, every_s: float) -> None:
    """Look for a newer materialization (and new adapters) every `every_s` seconds; load it off the loop."""
    while True:
        await asyncio.sleep(max(0.2, every_s))
        try:
            await asyncio.to_thread(registry.refresh)
        except Exception:  # noqa: BLE001 - keep serving the old bot
            log.exception("reloading the index failed")


def warm_up(registry: ModelRegistry) -> None:
    """Load the chat model's weights now rather than on the first question (llama.cpp only)."""
    try:
        chat = registry.bot.chat
    except NotReadyError:
        return
    chat.warm_up()


def uvicorn_options() -> dict[str, Any]:
    """How `mebot serve` runs uvicorn. Forwarded headers are read by the app alone, from serve.trusted_proxies only
    (limits.ClientIdentity): uvicorn's own reading would believe any X-Forwarded-For sent from 127.0.0.1."""
    return {
        "log_level": "info",
        "access_log": False,
        "proxy_headers": False,
        "forwarded_allow_ips": [],
        "server_header": False,
        "timeout_graceful_shutdown": 3,
    }


def serve(config: Path, host: str | None = None, port: int | None = None) -> int:
    """Load the settings, resources and models, then run uvicorn until interrupted."""
    import uvicorn

    from mebot.pipeline.definitions import build_definitions, data_dir_from_env
    from mebot.resources.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(config)
    data_dir = data_dir_from_env()
    registry = ModelRegistry(settings, build_definitions(config, data_dir=data_dir).resources, data_dir)
    registry.refresh()
    if registry.ready:
        warm_up(registry)
        log.info("mebot serve: models %s", ", ".join(registry.names()))
    else:
        log.warning("mebot serve: not ready: %s", registry.not_ready_reason)
    host = host or settings.serve.host
    port = settings.serve.port if port is None else port
    print(f"mebot: serving on http://{host}:{port}/", flush=True)
    uvicorn.run(create_app(settings, registry), host=host, port=port, **uvicorn_options())
    # An answer still generating in the worker thread has no one waiting for it; don't wait for it to finish.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)
