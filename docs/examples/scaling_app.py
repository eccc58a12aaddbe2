"""Scaling out: the same chat in every worker, joined through Redis.

H3_PUBSUB_URL=redis://localhost:6379/0 uvicorn scaling_app:app --workers 4
"""

# --8<-- [start:app]
from fastapi import FastAPI, Request

from h3_fastapi import EventStream, H3Router, Message, Peer, create_event_stream, publish

app = FastAPI()
router = H3Router()  # no pubsub= here: H3_PUBSUB_URL picks Redis (memory when unset)


class Chat:
    def open(self, peer: Peer) -> None:
        peer.subscribe("chat")

    def message(self, peer: Peer, message: Message) -> None:
        # Every other member, in every worker and on every host.
        # message.data keeps the frame type: text stays text, binary stays binary.
        peer.publish("chat", message.data)


router.ws("/chat", Chat)
app.include_router(router)


@app.get("/chat/events")
async def chat_events(request: Request) -> EventStream:
    stream = create_event_stream(request)
    stream.subscribe("chat")  # SSE readers get the same messages
    return stream


@app.post("/chat/announce")
async def announce(text: str) -> dict[str, str]:
    await publish("chat", text)  # any worker -> every worker's peers and streams
    return {"sent": text}


# --8<-- [end:app]
