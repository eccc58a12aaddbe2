from fastapi import FastAPI

from h3_fastapi import H3Router, create_websocket_proxy

CHAT_URL = "ws://127.0.0.1:4000"  # the chat service

app = FastAPI()
h3 = H3Router()


# Every client gets its own upstream connection to the room it asked for.
# `target` and `headers` are called with the Peer, as in crossws.
def room_url(peer):
    return f"{CHAT_URL}/rooms/{peer.request.path_params['room']}"


h3.ws(
    "/rooms/{room}",
    create_websocket_proxy(
        room_url,
        headers=lambda peer: {"x-user": peer.request.query_params.get("user", "guest")},
        forward_protocol={"chat": "chat.v2"},  # the client's "chat" is "chat.v2" upstream
        max_buffer_size=64 * 1024,  # bytes the client may send before the upstream is open
        connect_timeout=5,  # seconds (crossws: connectTimeout in milliseconds)
    ),
)

app.include_router(h3)
