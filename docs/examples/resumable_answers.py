"""Resumable AI answers over SSE: start in a POST, read (and resume) in a GET, stop in a DELETE."""

import asyncio
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request

from h3_fastapi import (
    EventStream,
    MemoryPubSub,
    cancel_resumable,
    resumable_stream,
    start_resumable,
)

app = FastAPI()
# --8<-- [start:pubsub]
# The answers live in the history: RedisPubSub(url, history=10_000) lets
# every worker and host serve them.
pubsub = MemoryPubSub(history=10_000)
# --8<-- [end:pubsub]


# --8<-- [start:producer]
async def answer(question: str) -> AsyncIterator[str]:
    """Stands in for an LLM call: yield the tokens as they come."""
    for token in ["Resumable ", "streams ", "survive ", "reloads."]:
        await asyncio.sleep(0.05)  # the model thinking
        yield token


# --8<-- [end:producer]


# --8<-- [start:routes]
@app.post("/answers")
async def ask(question: str) -> dict[str, str]:
    key = uuid.uuid4().hex  # unguessable, new for each answer
    await start_resumable(key, answer(question), pubsub=pubsub, idle_timeout=30)
    return {"key": key}


@app.get("/answers/{key}")
async def read(request: Request, key: str) -> EventStream:
    # Resumes after Last-Event-ID (or ?last_event_id=), else from the start.
    return resumable_stream(request, key, pubsub=pubsub)


@app.delete("/answers/{key}")
async def stop(key: str) -> None:
    await cancel_resumable(key, pubsub=pubsub)  # from any worker


# --8<-- [end:routes]
