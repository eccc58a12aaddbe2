"""Operations: metrics at /metrics, Kubernetes probes, rate limits (docs/operations.md)."""

from __future__ import annotations

# --8<-- [start:app]
from fastapi import FastAPI

from h3_fastapi import H3Router, Message, Peer, RateLimit, health_router, metrics_app

app = FastAPI()
app.mount("/metrics", metrics_app())  # Prometheus text format; counting starts here
app.include_router(health_router())  # /livez and /readyz

h3 = H3Router()


@h3.ws(
    "/chat",
    rate_limit=RateLimit(
        messages_per_second=20,  # per peer, refilled continuously
        message_burst=40,  # what a peer may send at once
        bytes_per_second=64_000,
        byte_burst=256_000,
        on_exceed="drop",  # or "close": close 1008
        notice={"error": "rate limited"},  # sent once per run of drops
        connections_per_minute=30,  # per client address, on the upgrade (429)
    ),
)
class Chat:
    def open(self, peer: Peer) -> None:
        peer.subscribe("chat")

    def message(self, peer: Peer, message: Message) -> None:
        peer.publish("chat", message.text())


app.include_router(h3)
# --8<-- [end:app]
