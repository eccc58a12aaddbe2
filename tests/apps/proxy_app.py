"""Upstream and proxy apps for the proxy tests.

``make_upstream()`` is a real HTTP server's app (run it with ``live_server``):
it echoes what reached it, answers with any status, sets cookies and
hop-by-hop headers, streams slowly, hangs, and tells the test when a client
went away. ``upstream`` / ``app`` are the same for a child process: ``app``
forwards every request to ``$PROXY_UPSTREAM`` (the memory test).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from h3_fastapi import proxy_request

CHUNK = b"\0" * (256 * 1024)


class Signals:
    """Named thread-safe events an upstream sets and a test waits on."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(name, threading.Event())


class HangUntilDisconnect:
    """Raw ASGI: never answer; set ``signals[id]`` when the client disconnects."""

    def __init__(self, signals: Signals) -> None:
        self.signals = signals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope["query_string"].decode().partition("=")[2]
        self.signals[name + ":request"].set()
        while (await receive())["type"] != "http.disconnect":
            pass
        self.signals[name].set()


def make_upstream() -> tuple[FastAPI, Signals]:
    """The upstream app and the signals its endpoints set."""
    app = FastAPI()
    signals = Signals()
    app.router.routes.append(Route("/hang", HangUntilDisconnect(signals)))

    @app.api_route(
        "/echo/{rest:path}",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "REPORT"],
    )
    async def echo(request: Request) -> Response:
        body = await request.body()
        data = {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers.raw],
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_text": body.decode("utf-8", "replace") if len(body) < 4096 else None,
            "client_port": request.client.port if request.client else None,
        }
        return Response(json.dumps(data), media_type="application/json")

    @app.get("/echo")
    async def echo_root(request: Request) -> Response:
        return await echo(request)

    @app.api_route("/status/{code}", methods=["GET", "POST", "HEAD"])
    async def status(code: int, request: Request) -> Response:
        headers = {}
        if 300 <= code < 400:
            headers["location"] = request.query_params.get("to", "/echo")
        return Response(f"status {code}", status_code=code, headers=headers)

    @app.get("/page")
    async def page() -> Response:
        return Response("<!doctype html><h1>upstream page</h1>", media_type="text/html")

    @app.get("/cookies")
    async def cookies() -> Response:
        response = Response("cookies")
        response.raw_headers.append(
            (b"set-cookie", b"a=1; Domain=upstream.test; Path=/api; HttpOnly")
        )
        response.raw_headers.append(
            (
                b"set-cookie",
                b"b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Domain=other.test; Path=/",
            )
        )
        return response

    @app.get("/hop")
    async def hop() -> Response:
        body = gzip.compress(b"decoded body")
        response = Response(body, media_type="text/plain")
        for name, value in [
            ("content-encoding", "gzip"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2"),
            ("trailer", "x-trailer"),
            ("te", "trailers"),
            ("connection", "x-hop-secret"),
            ("x-hop-secret", "do not relay"),
            ("x-kept", "yes"),
        ]:
            response.raw_headers.append((name.encode(), value.encode()))
        return response

    @app.get("/redirect")
    async def redirect(request: Request) -> Response:
        origin = f"{request.url.scheme}://{request.url.netloc}"
        kind = request.query_params.get("kind", "absolute")
        location = {
            "absolute": f"{origin}/echo?x=1#frag",
            "relative": "/echo?x=2",
            "other": "http://elsewhere.test/x",
            "protocol-relative": f"//{request.url.netloc}/echo",
        }[kind]
        return Response(
            status_code=302,
            headers={"location": location, "refresh": f"5; url={origin}/later"},
        )

    @app.get("/slow-body")
    async def slow_body(request: Request) -> StreamingResponse:
        pause = float(request.query_params.get("pause", "0.5"))

        async def body() -> AsyncIterator[bytes]:
            yield b"first,"
            await asyncio.sleep(pause)  # the scenario: a body slower than the timeout
            yield b"second"

        return StreamingResponse(body(), media_type="text/plain")

    @app.get("/sse")
    async def sse(request: Request) -> StreamingResponse:
        name = request.query_params["id"]

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b"data: first\n\n"
                await asyncio.Event().wait()  # an idle stream: nothing more until cancelled
                yield b"data: never\n\n"
            finally:
                signals[name].set()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/download")
    async def download(request: Request) -> StreamingResponse:
        mib = int(request.query_params.get("mib", "1"))

        async def body() -> AsyncIterator[bytes]:
            for _ in range(mib * 4):
                yield CHUNK

        return StreamingResponse(body(), media_type="application/octet-stream")

    @app.post("/upload")
    async def upload(request: Request) -> Response:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
        return Response(str(total))

    return app, signals


upstream, upstream_signals = make_upstream()

UPSTREAM = os.environ.get("PROXY_UPSTREAM", "http://127.0.0.1:1")
app = FastAPI()


@app.api_route("/{path:path}", methods=["GET", "POST", "PUT"])
async def forward(request: Request, path: str) -> Any:
    query = f"?{request.url.query}" if request.url.query else ""
    return await proxy_request(request, f"{UPSTREAM}/{path}{query}")
