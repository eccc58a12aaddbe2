"""SSE servers under test: one FastAPI app, one route per implementation.

``GET /<impl>?n=N`` sends N events of the same 64-byte payload and ends the
response. Each event is handed over one at a time (an ``await`` per event),
the way an endpoint relaying live events works.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse

PAYLOAD = os.environ.get("BENCH_SSE_PAYLOAD", "x" * 64)
MAX_EVENTS = 10_000_000

app = FastAPI()


@app.get("/raw")
async def raw(n: int = 1) -> Response:
    """A ``StreamingResponse`` of preformatted event bytes."""
    event = f"data: {PAYLOAD}\n\n".encode()

    async def events() -> AsyncIterator[bytes]:
        for _ in range(min(n, MAX_EVENTS)):
            yield event

    return StreamingResponse(events(), media_type="text/event-stream")


@app.get("/sse-starlette")
async def sse_starlette(n: int = 1) -> Response:
    """sse-starlette's ``EventSourceResponse`` over an async generator of dicts."""
    from sse_starlette import EventSourceResponse

    async def events() -> AsyncIterator[dict[str, Any]]:
        for _ in range(min(n, MAX_EVENTS)):
            yield {"data": PAYLOAD}

    return EventSourceResponse(events())


@app.get("/h3")
async def h3(request: Request, n: int = 1) -> Response:
    """h3-fastapi ``EventStream``: a producer task awaits ``push`` per event."""
    raise NotImplementedError  # filled in once h3_fastapi.event_stream lands
