"""Limits: who may connect, how big a message may be, how many peers at once."""

from fastapi import FastAPI

from h3_fastapi import H3Router, define_websocket_handler

router = H3Router()

limited = router.ws(
    "/limited",
    define_websocket_handler(
        message=lambda peer, message: peer.send(f"{len(message.bytes())} bytes"),
        allowed_origins=["https://example.com", "http://127.0.0.1:3000"],  # 403 otherwise
        max_message_size=64 * 1024,  # bigger messages close the peer with 1009
        max_peers=10_000,  # one more upgrade gets 503
        send_buffer_limit=1024 * 1024,  # a peer with 1 MiB unsent is closed with 1013
    ),
)

app = FastAPI()
app.include_router(router)
