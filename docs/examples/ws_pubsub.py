"""Topics: peers subscribe, anyone publishes (peers, HTTP endpoints, other threads)."""

from fastapi import FastAPI

from h3_fastapi import H3Router, Message, Peer, publish

app = FastAPI()
router = H3Router()


# --8<-- [start:hooks]
class News:
    def open(self, peer: Peer) -> None:
        peer.subscribe("headlines")

    def message(self, peer: Peer, message: Message) -> None:
        peer.publish("headlines", message.text())  # every subscriber but the sender


news = router.ws("/news", News)
# --8<-- [end:hooks]
app.include_router(router)


# --8<-- [start:http]
@app.post("/headlines")
def post_headline(text: str) -> dict[str, str]:
    # A plain `def` endpoint runs in a worker thread: publishing from there is safe.
    news.publish("headlines", text)
    return {"sent": text}


@app.post("/alerts")
async def post_alert(text: str) -> dict[str, str]:
    # Module-level publish goes through the default pub/sub: every handler, every stream.
    await publish("headlines", {"alert": text})
    return {"sent": text}


# --8<-- [end:http]
