"""Proxy servers under test: one FastAPI app, one route prefix per implementation.

``GET /<impl>/<path>`` fetches ``$BENCH_UPSTREAM/<path>`` and streams it back.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9").rstrip("/")

app = FastAPI()
pooled_client = httpx.AsyncClient(timeout=30)


@app.get("/naive/{path:path}")
async def naive(path: str) -> Response:
    """The naive proxy: ``httpx.AsyncClient().stream(...)`` inside the body generator."""

    async def body() -> AsyncIterator[bytes]:
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("GET", f"{UPSTREAM}/{path}") as response,
        ):
            async for chunk in response.aiter_bytes():
                yield chunk

    return StreamingResponse(body())


@app.get("/pooled/{path:path}")
async def pooled(request: Request, path: str) -> Response:
    """The well-known FastAPI recipe: one shared client, ``send(stream=True)``."""
    upstream_request = pooled_client.build_request("GET", f"{UPSTREAM}/{path}")
    response = await pooled_client.send(upstream_request, stream=True)
    return StreamingResponse(
        response.aiter_raw(),
        status_code=response.status_code,
        headers=response.headers,
        background=BackgroundTask(response.aclose),
    )


@app.get("/h3/{path:path}")
async def h3(request: Request, path: str) -> Response:
    """h3-fastapi ``proxy()``."""
    from h3_fastapi import proxy

    response: Response = await proxy(request, f"{UPSTREAM}/{path}")
    return response
