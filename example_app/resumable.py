"""Resumable AI answers over SSE, with a fake token producer (no model needed).

``/answer`` is a page that asks a question: ``POST /answer/start`` starts the
producer in this worker and returns its key; the page reads
``/answer/{key}/events`` and keeps the text and the last event id in
``localStorage``, so a reload (or another worker: ``?server=<origin>``) carries
on exactly where it stopped. ``DELETE /answer/{key}`` stops it from any worker.

The answers live in the pub/sub's history: ``RedisPubSub`` when ``H3_PUBSUB_URL``
names a Redis (several workers share them), else ``MemoryPubSub``.
"""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse

from h3_fastapi import (
    EventStream,
    EventStreamMessage,
    MemoryPubSub,
    PubSub,
    RedisPubSub,
    cancel_resumable,
    resumable_stream,
    start_resumable,
)

router = APIRouter()

answer_page = (Path(__file__).parent / "static" / "answer.html").read_text(encoding="utf-8")

ANSWER = (
    "h3-fastapi keeps the answer in the pub/sub history, so a reload asks for what came "
    "after the last event id it saw, and any worker can serve it: nothing is lost, "
    "nothing is sent twice, and the producer runs on while nobody is watching for a while."
)


def _pubsub() -> PubSub:
    url = os.environ.get("H3_PUBSUB_URL", "")
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisPubSub(url, prefix="h3demo:", history=10_000)
    return MemoryPubSub(history=10_000)


pubsub = _pubsub()


async def fake_tokens(question: str, delay: float) -> AsyncIterator[str]:
    """Stands in for an LLM: the answer word by word, ``delay`` seconds apart."""
    for word in ANSWER.split(" "):
        await asyncio.sleep(delay)  # the "model" thinking
        yield word + " "


@router.get("/answer", response_class=HTMLResponse)
async def page() -> str:
    return answer_page


@router.post("/answer/start")
async def start(request: Request, delay: float = 0.08) -> dict[str, str]:
    question = (await request.body()).decode() or "How do resumable streams work?"
    key = uuid.uuid4().hex
    await start_resumable(key, fake_tokens(question, delay), pubsub=pubsub, idle_timeout=30)
    return {"key": key, "worker": str(os.getpid())}


@router.get("/answer/{key}/events")
async def events(request: Request, key: str) -> EventStream:
    # CORS: the demo page may read the stream from another worker's origin.
    headers = {"access-control-allow-origin": "*"}
    stream = resumable_stream(request, key, pubsub=pubsub, headers=headers)
    stream.push(EventStreamMessage(str(os.getpid()), event="worker"))
    return stream


@router.delete("/answer/{key}")
async def cancel(key: str) -> dict[str, str]:
    await cancel_resumable(key, pubsub=pubsub)
    return {"cancelled": key}
