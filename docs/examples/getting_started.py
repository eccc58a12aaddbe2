from fastapi import FastAPI

from h3_fastapi import H3Router, Message, Peer

app = FastAPI()
router = H3Router()


@router.ws("/_ws")
class Chat:
    def open(self, peer: Peer) -> None:
        peer.subscribe("chat")
        peer.send("Welcome! Everyone connected here sees what you type.")

    def message(self, peer: Peer, message: Message) -> None:
        peer.publish("chat", f"[{peer.id[:8]}] {message}")  # everyone but the sender
        peer.send(f"[you] {message}")


app.include_router(router)  # after the routes: FastAPI copies them here
