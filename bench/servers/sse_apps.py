"""SSE servers under test: one FastAPI app, one route per implementation.

``GET /<impl>?n=N`` sends N events of the same 64-byte payload and ends the
response. Each event is handed over one at a time (an ``await`` per event),
the way an endpoint relaying live events works.

Typed streams (issue 12) yield an ``Item`` model holding that payload, sent as
its JSON (``{"text":"xx..."}``, 75 bytes): ``/h3-typed`` is ``@event_stream``
annotated ``AsyncIterator[Item]``, ``/fastapi-sse`` FastAPI's native
``EventSourceResponse`` as FastAPI documents it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.sse import EventSourceResponse
from pydantic import BaseModel
from starlette.responses import Response, StreamingResponse

from h3_fastapi import create_event_stream, event_stream

PAYLOAD = os.environ.get("BENCH_SSE_PAYLOAD", "x" * 64)
MAX_EVENTS = 10_000_000

app = FastAPI()


class Item(BaseModel):
    """The item of the typed streams."""

    text: str


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
@event_stream
async def h3(n: int = 1) -> AsyncIterator[str]:
    """h3-fastapi ``@event_stream``: an async generator, like the two anchors."""
    for _ in range(min(n, MAX_EVENTS)):
        yield PAYLOAD


@app.get("/h3-push")
async def h3_push(request: Request, n: int = 1) -> Response:
    """h3-fastapi ``create_event_stream`` + a producer task awaiting ``push`` per event."""
    stream = create_event_stream(request)

    async def produce() -> None:
        for _ in range(min(n, MAX_EVENTS)):
            if stream.is_closed:
                break
            await stream.push(PAYLOAD)
        stream.close()

    task = asyncio.create_task(produce())
    stream.on_closed(task.cancel)
    return stream


@app.get("/h3-typed")
@event_stream
async def h3_typed(n: int = 1) -> AsyncIterator[Item]:
    """h3-fastapi typed ``@event_stream``: each ``Item`` validated and sent as JSON."""
    for _ in range(min(n, MAX_EVENTS)):
        yield Item(text=PAYLOAD)


@app.get("/fastapi-sse", response_class=EventSourceResponse)
async def fastapi_sse(n: int = 1) -> AsyncIterable[Item]:
    """FastAPI's native SSE: ``response_class=EventSourceResponse``, a generator of models."""
    for _ in range(min(n, MAX_EVENTS)):
        yield Item(text=PAYLOAD)
