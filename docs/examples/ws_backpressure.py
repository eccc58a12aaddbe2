"""Backpressure: send a large download at the pace the client can read it."""

from fastapi import FastAPI

from h3_fastapi import H3Router, Message, Peer

CHUNK = b"\0" * 64 * 1024
router = H3Router()


@router.ws("/download")
class Download:
    async def message(self, peer: Peer, message: Message) -> None:
        chunks = int(message.text())
        for _ in range(chunks):
            peer.send(CHUNK)  # queued at once
            if peer.buffered_amount > 1024 * 1024:
                # Over 1 MiB queued: wait until the client has read most of it.
                await peer.wait_for_drain(threshold=256 * 1024, timeout=30)
        await peer.send("done")  # awaiting send waits until this frame is written


# A client that stops reading is closed with 1013 once 4 MiB are queued for it,
# so one slow client never holds memory or slows down the others.
feed = router.ws(
    "/feed", {"open": lambda peer: peer.subscribe("feed")}, send_buffer_limit=4 * 2**20
)

app = FastAPI()
app.include_router(router)
