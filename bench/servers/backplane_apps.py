"""The server of the ``backplanes`` workload: one broadcast route on the default pub/sub.

The backplane comes from ``H3_PUBSUB_URL`` (unset: memory), exactly as a user
deploys it; the bench runs this app in 4 uvicorn processes sharing one
backplane. ``/broadcast`` subscribes the connection to ``bench`` and sends
``r`` once the backplane has confirmed the subscription (publishes from other
processes reach it from then on); with ``?pub=1`` the connection is a
publisher instead: each message it sends is published to ``bench``.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from h3_fastapi import H3Router, Message, Peer
from h3_fastapi.pubsub import get_default_pubsub

TOPIC = "bench"


class Broadcast:
    """``async def`` hooks, as in the one-process broadcast workload."""

    async def open(self, peer: Peer) -> None:
        if peer.request.query_params.get("pub") == "1":
            return
        peer.subscribe(TOPIC)
        wait = getattr(get_default_pubsub(), "wait_subscribed", None)
        if wait is not None:  # a backplane: wait for its confirmation
            await asyncio.wait_for(wait(TOPIC), 30)
        await peer.send("r")

    async def message(self, peer: Peer, message: Message) -> None:
        peer.publish(TOPIC, message.text())


router = H3Router()
router.ws("/broadcast", Broadcast)

app = FastAPI()
app.include_router(router)
