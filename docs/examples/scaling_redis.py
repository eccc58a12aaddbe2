"""RedisPubSub with its options: a channel prefix, history for SSE replay, on_error."""

import logging
import os

from fastapi import FastAPI, Request

from h3_fastapi import EventStream, H3Router, Message, Peer, RedisPubSub, create_event_stream

log = logging.getLogger("myapp")


# --8<-- [start:pubsub]
def backplane_down(error: Exception) -> None:
    # Called once when an outage begins (h3_fastapi has logged it already).
    log.warning("live updates only reach this process for now: %s", error)


pubsub = RedisPubSub(
    os.environ.get("REDIS_URL", "redis://localhost:6379/0"),
    prefix="myapp:",  # channels and history streams are named myapp:<topic>
    history=100,  # keep the last 100 publishes of each topic for SSE replay
    on_error=backplane_down,
)
router = H3Router(pubsub=pubsub)  # every handler registered here uses it
# --8<-- [end:pubsub]

app = FastAPI()


# --8<-- [start:feed]
class Newsroom:
    def open(self, peer: Peer) -> None:
        peer.subscribe("news")

    def message(self, peer: Peer, message: Message) -> None:
        peer.publish("news", message.text())


router.ws("/newsroom", Newsroom)


@app.get("/news")
async def news(request: Request) -> EventStream:
    stream = create_event_stream(request, pubsub=pubsub)
    # A reconnecting browser sends Last-Event-ID: it first gets the events it
    # missed (from the Redis stream, whichever process served them), then live ones.
    stream.subscribe("news")
    return stream


@app.post("/news")
async def post_news(text: str) -> dict[str, str]:
    await pubsub.publish("news", text)  # resolves once Redis has it
    return {"published": text}


# --8<-- [end:feed]
app.include_router(router)
