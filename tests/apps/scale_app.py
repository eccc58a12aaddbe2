"""A chat and a live feed on a backplane, run as several processes by the tests.

Environment: ``SCALE_URL`` (required: ``redis://``, ``redis+cluster://``,
``postgresql://`` or ``nats://``, picked by scheme as ``H3_PUBSUB_URL`` is),
``SCALE_PREFIX`` (channel prefix).

- ``/chat`` WebSocket: subscribes to ``chat``, says ``{"ready": pid}`` once the backplane
  has confirmed the subscription, then republishes every message it gets to
  the other subscribers as is (text stays text, binary stays binary).
- ``/feed`` WebSocket: the same on the ``feed`` pub/sub, which keeps history.
- ``GET /events/{topic}`` SSE on the chat pub/sub, ``GET /feed/events/{topic}`` SSE
  with replay on the feed pub/sub. Both send a ``: subscribed`` comment once
  the backplane has confirmed the subscription.
- ``POST /publish/{topic}`` (a plain ``def`` endpoint: it runs in a worker
  thread) publishes ``?data=`` with module-level ``publish``.
- ``GET /status``: this process's pid, the chat backplane's connection state,
  the topics the backplane confirmed, and the chat peer count.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from h3_fastapi import (
    EventStream,
    H3Router,
    Message,
    NatsPubSub,
    Peer,
    PostgresPubSub,
    RedisClusterPubSub,
    RedisPubSub,
    create_event_stream,
    publish,
)
from h3_fastapi.backplane import BackplanePubSub
from h3_fastapi.pubsub import set_default_pubsub

URL = os.environ["SCALE_URL"]
PREFIX = os.environ.get("SCALE_PREFIX", "scale:")
PID = os.getpid()


def make_pubsub(prefix: str, history: int = 0) -> BackplanePubSub:
    """The backplane ``URL`` names, with a prefix and history."""
    scheme = URL.partition("://")[0]
    if scheme.endswith("+cluster"):
        return RedisClusterPubSub(URL, prefix=prefix, history=history)
    if scheme.startswith("postgres"):
        return PostgresPubSub(URL, prefix=prefix, history=history)
    if scheme == "nats":
        return NatsPubSub(URL, prefix=prefix, history=history)
    return RedisPubSub(URL, prefix=prefix, history=history)


chat_pubsub = make_pubsub(PREFIX)
feed_pubsub = make_pubsub(PREFIX + "feed:", history=100)
set_default_pubsub(chat_pubsub)  # module-level publish goes through the backplane too

app = FastAPI()
router = H3Router(pubsub=chat_pubsub)
feed_router = H3Router(pubsub=feed_pubsub)


async def _confirmed(pubsub: BackplanePubSub, topic: str) -> bool:
    try:
        await asyncio.wait_for(pubsub.wait_subscribed(topic), 10)
    except asyncio.TimeoutError:
        return False
    return True


class Room:
    """Join ``topic``; relay what a peer sends to every other subscriber."""

    def __init__(self, topic: str, pubsub: BackplanePubSub) -> None:
        self.topic = topic
        self.pubsub = pubsub

    async def open(self, peer: Peer) -> None:
        peer.subscribe(self.topic)
        ok = await _confirmed(self.pubsub, self.topic)
        peer.send({"ready": PID, "confirmed": ok})

    def message(self, peer: Peer, message: Message) -> None:
        peer.publish(self.topic, message.data)


chat = router.ws("/chat", Room("chat", chat_pubsub))
feed = feed_router.ws("/feed", Room("feed", feed_pubsub))
app.include_router(router)
app.include_router(feed_router)


async def _stream(request: Request, topic: str, pubsub: BackplanePubSub) -> EventStream:
    stream = create_event_stream(request, pubsub=pubsub)
    stream.subscribe(topic)
    if await _confirmed(pubsub, topic):
        stream.push_comment("subscribed")
    return stream


@app.get("/events/{topic}")
async def events(request: Request, topic: str) -> EventStream:
    return await _stream(request, topic, chat_pubsub)


@app.get("/feed/events/{topic}")
async def feed_events(request: Request, topic: str) -> EventStream:
    return await _stream(request, topic, feed_pubsub)


@app.post("/publish/{topic}")
def publish_from_thread(topic: str, data: str, feed: bool = False) -> dict[str, Any]:
    if feed:
        feed_pubsub.publish(topic, data)
    else:
        publish(topic, data)
    return {"published": data, "pid": PID}


@app.get("/status")
async def status() -> dict[str, Any]:
    return {
        "pid": PID,
        "connected": chat_pubsub.connected,
        "confirmed": sorted(chat_pubsub.confirmed_topics | feed_pubsub.confirmed_topics),
        "peers": sum(len(p) for p in chat.peers.values()),
    }


@app.get("/health")
def health() -> Response:
    return Response("ok")
