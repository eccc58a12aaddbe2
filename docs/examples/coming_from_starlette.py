"""The same chat and the same event feed, before (raw Starlette, sse-starlette) and after."""

import asyncio
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from sse_starlette import EventSourceResponse, ServerSentEvent

from h3_fastapi import CloseDetails, EventStreamMessage, H3Router, Message, Peer, event_stream

app = FastAPI()


# --8<-- [start:ws-before]
class ConnectionManager:
    def __init__(self) -> None:
        self.active: list[WebSocket] = []

    async def connect(self, websocket: WebSocket) -> None:
        await websocket.accept()
        self.active.append(websocket)

    def disconnect(self, websocket: WebSocket) -> None:
        self.active.remove(websocket)

    async def broadcast(self, text: str) -> None:
        for connection in self.active:  # one slow or dead client stalls everyone
            await connection.send_text(text)


manager = ConnectionManager()


@app.websocket("/raw/{client_id}")
async def raw_chat(websocket: WebSocket, client_id: str) -> None:
    await manager.connect(websocket)
    try:
        while True:
            text = await websocket.receive_text()
            await manager.broadcast(f"Client #{client_id} says: {text}")
    except WebSocketDisconnect:
        manager.disconnect(websocket)
        await manager.broadcast(f"Client #{client_id} left the chat")


# --8<-- [end:ws-before]

# --8<-- [start:ws-after]
router = H3Router()


@router.ws("/ws/{client_id}", namespace="chat")  # one namespace for every client_id
class Chat:
    def open(self, peer: Peer) -> None:
        peer.subscribe("chat")

    def message(self, peer: Peer, message: Message) -> None:
        text = f"Client #{peer.request.path_params['client_id']} says: {message}"
        peer.send(text)
        peer.publish("chat", text)

    def close(self, peer: Peer, details: CloseDetails) -> None:
        peer.publish("chat", f"Client #{peer.request.path_params['client_id']} left the chat")


app.include_router(router)
# --8<-- [end:ws-after]


# --8<-- [start:sse-before]
@app.get("/legacy-feed")
async def legacy_feed(request: Request) -> EventSourceResponse:
    async def events() -> AsyncIterator[ServerSentEvent]:
        for n in range(3):
            if await request.is_disconnected():
                break
            yield ServerSentEvent(data=f"update {n}", event="update", id=str(n))
            await asyncio.sleep(0.1)

    return EventSourceResponse(events(), ping=15, sep="\n")


# --8<-- [end:sse-before]


# --8<-- [start:sse-after]
@app.get("/feed")
@event_stream(ping_interval=15)
async def feed(request: Request) -> AsyncIterator[EventStreamMessage]:
    for n in range(3):  # no disconnect polling: the generator is closed when the client leaves
        yield EventStreamMessage(f"update {n}", id=n, event="update")
        await asyncio.sleep(0.1)


# --8<-- [end:sse-after]
