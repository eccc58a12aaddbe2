from fastapi import FastAPI

from h3_fastapi import H3Router, create_websocket_proxy

CHAT_URL = "ws://127.0.0.1:4000"  # the chat service

app = FastAPI()
h3 = H3Router()

# Every client gets its own upstream connection to the room it asked for.
h3.ws(
    "/rooms/{room}",
    create_websocket_proxy(lambda request: f"{CHAT_URL}/rooms/{request.path_params['room']}"),
)

app.include_router(h3)
