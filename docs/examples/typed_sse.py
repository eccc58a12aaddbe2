"""Typed Server-Sent Events: each item validated and sent as JSON, documented in OpenAPI."""

from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.sse import ServerSentEvent
from pydantic import BaseModel

from h3_fastapi import EventStream, event_stream

app = FastAPI()


# --8<-- [start:generator]
class Progress(BaseModel):
    step: int
    total: int


@app.get("/jobs/{job_id}/progress")
@event_stream
async def progress(request: Request, job_id: str, total: int = 3) -> AsyncIterator[Progress]:
    for step in range(1, total + 1):
        yield Progress(step=step, total=total)  # data: {"step":1,"total":3}
    # SSE fields of your own: FastAPI's ServerSentEvent passes through as is.
    yield ServerSentEvent(data={"job": job_id}, event="done")


# --8<-- [end:generator]


# --8<-- [start:push]
@app.get("/notices", response_class=EventStream)
async def notices(request: Request) -> EventStream:
    stream = EventStream(request)
    stream.push(Progress(step=1, total=1))  # a model: its JSON
    stream.push(ServerSentEvent(raw_data="plain text", event="note"))
    stream.close()
    return stream


# --8<-- [end:push]
