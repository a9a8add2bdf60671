"""The OpenAI-compatible HTTP server: POST /v1/chat/completions (streamed as server-sent
events with `stream: true`), GET /v1/models, GET /health, and the web page at /. Built on
starlette (the `serve` extra); requests are checked by protocol.py and batched by
batcher.py."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tinyvlm.infer import Engine
from tinyvlm.serve.batcher import Batcher, Job
from tinyvlm.serve.protocol import Limits, RequestError, parse_request


def error(e: RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def create_app(model: Any, name: str, api_key: str | None = None, limits: Limits | None = None,
               max_batch: int = 16, window_s: float = 0.01) -> Starlette:
    limits = limits or Limits()
    # A model run by another library (the transformers adapter) brings its own engine.
    engine = model.engine(max_batch) if hasattr(model, "engine") else Engine(model, max_batch)
    batcher = Batcher(engine, max_batch, window_s)
    created = int(time.time())

    def authorised(request: Request) -> bool:
        if api_key is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode())

    async def body_of(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise RequestError(f"the body exceeds {limits.max_body_bytes} bytes", status=413)
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    raise RequestError(f"the body exceeds {limits.max_body_bytes} bytes",
                                       status=413)
                chunks.append(chunk)
        except ClientDisconnect:
            raise RequestError("the client went away") from None
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError):
            raise RequestError("the body is not valid JSON") from None

    async def completions(request: Request) -> Response:
        if not authorised(request):
            return error(RequestError("missing or wrong API key", status=401,
                                      kind="authentication_error"))
        try:
            req = parse_request(await body_of(request), limits)
            prompt = batcher.prompt(req.conversation)
            engine.check_length(prompt, req.sampling.max_new_tokens)
        except RequestError as e:
            return error(e)
        except Exception as e:  # a prompt the model cannot take (too long, ...)
            return error(RequestError(str(e)))
        loop = asyncio.get_running_loop()
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        usage = {"prompt_tokens": len(prompt.ids)}
        if not req.stream:
            done: asyncio.Future = loop.create_future()

            def finish(text: str, tokens: int, err: BaseException | None) -> None:
                loop.call_soon_threadsafe(_settle, done, (text, tokens, err))

            job = Job(prompt, req.sampling, req.seed, None, finish)
            batcher.submit(job)
            try:
                text, tokens, err = await done
            except asyncio.CancelledError:
                job.cancelled.set()
                raise
            if err is not None:
                return error(RequestError(str(err), status=500, kind="server_error"))
            reason = "length" if tokens >= req.sampling.max_new_tokens else "stop"
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": int(time.time()),
                "model": name, "choices": [{"index": 0, "finish_reason": reason,
                                            "message": {"role": "assistant", "content": text}}],
                "usage": {**usage, "completion_tokens": tokens,
                          "total_tokens": usage["prompt_tokens"] + tokens}})
        updates: asyncio.Queue = asyncio.Queue()

        def on_text(text: str) -> None:
            loop.call_soon_threadsafe(updates.put_nowait, ("text", text))

        def on_done(text: str, tokens: int, err: BaseException | None) -> None:
            loop.call_soon_threadsafe(updates.put_nowait, ("done", (text, tokens, err)))

        job = Job(prompt, req.sampling, req.seed, on_text, on_done)
        batcher.submit(job)

        def chunk(delta: dict[str, Any], reason: str | None = None,
                  extra: dict[str, Any] | None = None) -> str:
            body = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": name, "choices": [{"index": 0, "delta": delta,
                                                "finish_reason": reason}], **(extra or {})}
            return f"data: {json.dumps(body)}\n\n"

        async def events() -> Any:
            sent = ""
            try:
                yield chunk({"role": "assistant", "content": ""})
                while True:
                    kind, value = await updates.get()
                    if kind == "text":
                        if value.startswith(sent) and len(value) > len(sent):
                            yield chunk({"content": value[len(sent):]})
                            sent = value
                        continue
                    text, tokens, err = value
                    if err is not None:
                        failure = RequestError(str(err), 500, None, "server_error")
                        yield f"data: {json.dumps(failure.body())}\n\n"
                        break
                    if text.startswith(sent) and len(text) > len(sent):
                        yield chunk({"content": text[len(sent):]})
                    reason = "length" if tokens >= req.sampling.max_new_tokens else "stop"
                    yield chunk({}, reason, {"usage": {
                        **usage, "completion_tokens": tokens,
                        "total_tokens": usage["prompt_tokens"] + tokens}})
                    break
                yield "data: [DONE]\n\n"
            finally:
                job.cancelled.set()  # a client that left frees its row at the next step

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def models(request: Request) -> Response:
        if not authorised(request):
            return error(RequestError("missing or wrong API key", status=401,
                                      kind="authentication_error"))
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "tinyvlm"}]})

    async def health(request: Request) -> Response:
        alive = batcher.thread.is_alive()
        return JSONResponse({"status": "ok" if alive else "down", "model": name,
                             "queued": batcher.jobs.qsize(), "batches": batcher.batches},
                            status_code=200 if alive else 503)

    async def page(request: Request) -> Response:
        html = resources.files("tinyvlm.serve").joinpath("page.html").read_text()
        return HTMLResponse(html.replace("{{MODEL}}", name))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        batcher.close()

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"]),
                            Route("/v1/models", models), Route("/health", health),
                            Route("/", page)],
                    lifespan=lifespan)
    app.state.batcher = batcher
    return app


def _settle(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


@contextlib.contextmanager
def running(app: Starlette, host: str = "127.0.0.1", port: int = 0) -> Any:
    """The app served by uvicorn in a background thread (port 0: a free one) for the
    duration of a `with` block; yields the base URL. For tests, benchmarks and notebooks."""
    import socket
    import threading

    import uvicorn

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="error"))
    thread = threading.Thread(target=server.run, name="tinyvlm-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
