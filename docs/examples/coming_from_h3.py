"""h3 and crossws APIs in Python: one app, one section per API (see coming-from-h3.md)."""

import asyncio
import os
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from h3_fastapi import (
    H3,
    CloseDetails,
    EventStream,
    EventStreamMessage,
    Message,
    Peer,
    WSError,
    create_websocket_proxy,
    define_websocket_handler,
    fetch_with_event,
    get_proxy_request_headers,
    proxy,
    proxy_request,
    publish,
    serve,
)

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:8080")  # the proxies forward here
UPSTREAM_WS = UPSTREAM.replace("http", "ws", 1) + "/_ws"

# --8<-- [start:app]
app = H3()

app.get("/", lambda event: "Hello world")
app.get("/users/{id}", lambda event: {"id": event.path_params["id"]})


async def echo(event):  # one unannotated argument: an h3-style handler
    return await event.json()


app.post("/echo", echo)
# --8<-- [end:app]


# --8<-- [start:hooks]
class Hooks:
    def upgrade(self, request: Request) -> Response | dict[str, Any]:
        if request.headers.get("authorization") != "Bearer s3cret":
            return PlainTextResponse("Unauthorized", status_code=401)
        return {"headers": {"x-powered-by": "h3-fastapi"}, "context": {"user": "ada"}}

    def open(self, peer: Peer) -> None:
        print("[ws] open", peer, peer.context["user"])

    def message(self, peer: Peer, message: Message) -> None:
        if "ping" in message.text():
            peer.send("pong")

    def close(self, peer: Peer, details: CloseDetails) -> None:
        print("[ws] close", peer, details.code, details.reason)

    def error(self, peer: Peer, error: WSError) -> None:
        print("[ws] error", peer, error)


app.get("/_ws", define_websocket_handler(Hooks))
# --8<-- [end:hooks]


# --8<-- [start:peer]
async def inspect_peer(peer: Peer, message: Message) -> None:
    peer.context["count"] = peer.context.get("count", 0) + 1
    await peer.send(
        {
            "id": peer.id,
            "remote_address": peer.remote_address,
            "path": peer.request.url.path,
            "namespace": peer.namespace,
            "topics": sorted(peer.topics),
            "online": len(peer.peers),
            "count": peer.context["count"],
            "buffered_amount": peer.buffered_amount,
        }
    )
    if message.text() == "bye":
        peer.close(4000, "bye")  # or peer.terminate()


app.get("/peer", define_websocket_handler(message=inspect_peer))
# --8<-- [end:peer]


# --8<-- [start:message]
def describe(peer: Peer, message: Message) -> None:
    peer.send(
        {
            "id": message.id,
            "text": message.text(),
            "bytes": len(message.bytes()),  # crossws: uint8Array(), arrayBuffer()
            "binary": message.is_binary,
            "raw_type": type(message.raw_data).__name__,  # crossws: rawData
        }
    )


app.get("/message", define_websocket_handler(message=describe))
# --8<-- [end:message]


# --8<-- [start:pubsub]
def join(peer: Peer) -> None:
    peer.subscribe("chat")
    peer.publish("chat", f"[system] {peer} joined!")  # everyone else in the namespace


chat = define_websocket_handler(open=join, message=lambda p, m: p.publish("chat", m.text()))
app.get("/chat", chat)


async def announce(event):
    chat.publish("chat", "from the handler")  # crossws: ws.publish(topic, message)
    await publish("chat", "from anywhere")  # every handler and event stream
    return {"ok": True}


app.post("/announce", announce)
# --8<-- [end:pubsub]


# --8<-- [start:sse]
async def events(event):
    stream = EventStream(event)  # or create_event_stream(event)
    await stream.push("one message")
    await stream.push(["two", "messages"])
    await stream.push(EventStreamMessage("hi", id="1", event="greeting", retry=1000))
    await stream.push_comment("a comment, ignored by browsers")
    stream.on_closed(lambda: print("Connection closed"))
    asyncio.get_running_loop().call_later(0.1, stream.close)  # the stream ends here
    return stream


app.get("/events", events)
# --8<-- [end:sse]


# --8<-- [start:proxy]
app.get("/proxy", lambda event: proxy(event, UPSTREAM + "/hello", headers={"x-via": "h3"}))
app.all("/api/{path:path}", lambda event: proxy_request(event, UPSTREAM + event.url.path))


def forwarded_headers(event):
    return get_proxy_request_headers(event)


async def fetched(event):
    response = await fetch_with_event(event, UPSTREAM + "/hello")
    return response.text  # a str: sent as text/plain, as in h3


app.get("/headers", forwarded_headers)
app.get("/fetch", fetched)
# --8<-- [end:proxy]

# --8<-- [start:ws-proxy]
app.get("/upstream-ws", define_websocket_handler(create_websocket_proxy(UPSTREAM_WS)))
# --8<-- [end:ws-proxy]

# --8<-- [start:serve]
if __name__ == "__main__":
    serve(app, port=3000)  # blocks, like h3's serve(app, { port: 3000 })
# --8<-- [end:serve]
