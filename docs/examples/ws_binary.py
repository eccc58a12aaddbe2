"""Binary frames: ``bytes`` in, ``bytes`` out; text and JSON side by side."""

import hashlib

from fastapi import FastAPI

from h3_fastapi import H3Router, Message, Peer

router = H3Router()


@router.ws("/files")
class Files:
    def message(self, peer: Peer, message: Message) -> None:
        if message.is_binary:
            data = message.bytes()
            peer.send({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            return
        request = message.json()  # ValueError for text that is not JSON
        if request.get("want") == "bytes":
            peer.send(bytes(range(256)) * request.get("times", 1))  # a binary frame


app = FastAPI()
app.include_router(router)
