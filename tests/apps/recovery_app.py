"""Recovery and presence, run in this process (memory) or as several processes (Redis).

Environment: ``RECOVERY_REDIS_URL`` (unset: ``MemoryPubSub``), ``RECOVERY_PREFIX``.

- ``GET /feed/{topic}``: SSE; with ``Last-Event-ID`` it resumes (or says ``resync``).
  A ``: subscribed`` comment once the subscription is confirmed.
- ``POST /publish/{topic}?count=N``: publishes ``m0`` .. ``m<N-1>`` and waits for the last.
- ``/ws`` WebSocket: a text ``{"subscribe": topic, "since": ..., "presence": {...}}``
  subscribes with positions (and presence); ``{"ready": topic}`` answers once done.
- ``GET /presence/{topic}``: the members across processes; ``GET /pid``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import FastAPI, Request

from h3_fastapi import (
    EventStream,
    H3Router,
    MemoryPubSub,
    Message,
    Peer,
    Presence,
    PubSub,
    RedisPubSub,
    create_event_stream,
)

HISTORY = 20_000


def make_pubsub() -> PubSub:
    url = os.environ.get("RECOVERY_REDIS_URL")
    if not url:
        return MemoryPubSub(history=HISTORY)
    prefix = os.environ.get("RECOVERY_PREFIX", "recovery:")
    return RedisPubSub(url, prefix=prefix, history=HISTORY)


async def _confirmed(pubsub: PubSub, topic: str) -> None:
    wait = getattr(pubsub, "wait_subscribed", None)
    if wait is not None:
        await asyncio.wait_for(wait(topic), 10)


def make_app(pubsub: PubSub) -> FastAPI:
    app = FastAPI()
    router = H3Router(pubsub=pubsub)
    Presence(pubsub, heartbeat=0.5, ttl=2.0)

    @app.get("/feed/{topic}")
    async def feed(request: Request, topic: str) -> EventStream:
        stream = create_event_stream(request, pubsub=pubsub)
        stream.subscribe(topic)
        await _confirmed(pubsub, topic)
        stream.push_comment("subscribed")
        return stream

    @app.post("/publish/{topic}")
    async def publish(topic: str, count: int = 1) -> dict[str, int]:
        last: Any = None
        for i in range(count):
            last = pubsub.publish(topic, f"m{i}")
        await last
        return {"published": count}

    class Room:
        async def message(self, peer: Peer, message: Message) -> None:
            asked = message.json()
            topic = asked["subscribe"]
            recovery = await peer.subscribe(
                topic, since=asked.get("since"), positions=True, presence=asked.get("presence")
            )
            await _confirmed(pubsub, topic)
            peer.send({"ready": topic, "recovered": recovery and recovery.recovered})

    handler = router.ws("/ws", Room)

    @app.get("/presence/{topic}")
    async def members(topic: str) -> list[dict[str, Any]]:
        return await handler.presence(topic)

    @app.get("/pid")
    def pid() -> int:
        return os.getpid()

    app.include_router(router)
    return app


app = make_app(make_pubsub())
