"""A room with presence, and recovery for WebSocket and SSE clients that reconnect."""

from typing import Any

from fastapi import Request

from h3_fastapi import H3, EventStream, MemoryPubSub, Message, Peer, create_event_stream

# --8<-- [start:pubsub]
# history=N keeps the last N publishes of each topic, each with a position
# (its event id): what reconnecting clients are given. RedisPubSub(url,
# history=N) does the same across workers and hosts.
pubsub = MemoryPubSub(history=1000)
app = H3(pubsub=pubsub)
# --8<-- [end:pubsub]


# --8<-- [start:ws]
class Room:
    async def message(self, peer: Peer, message: Message) -> None:
        asked = message.json()
        if "join" in asked:
            # since: the position of the last message this client got, if any.
            recovery = await peer.subscribe(
                "room",
                since=asked.get("since"),
                positions=True,  # each publish comes as {"topic", "position", "data"}
                presence={"name": asked["join"]},  # public info, shown to everyone
            )
            if recovery is not None and not recovery.recovered:
                peer.send({"reload": True})  # too old: load the room from the database
        else:
            peer.publish("room", asked["say"])


room = app.ws("/room", Room)  # the WebSocketHandler
# --8<-- [end:ws]


# --8<-- [start:who]
@app.get("/room/members")
async def members() -> list[dict[str, Any]]:
    # Every member of "room" in every process: [{"id": ..., "info": {"name": ...}}]
    return await room.presence("room")


# --8<-- [end:who]


# --8<-- [start:sse]
@app.get("/room/events")
async def events(request: Request) -> EventStream:
    stream = create_event_stream(request, pubsub=pubsub)
    # With a Last-Event-ID: what was missed first, or an "event: resync".
    stream.subscribe("room")
    return stream


# --8<-- [end:sse]
