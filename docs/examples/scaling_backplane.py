"""A third-party backplane on the seam: everything but the wire is done for it."""

from __future__ import annotations

from collections.abc import Sequence

from h3_fastapi.backplane import BackplanePubSub
from h3_fastapi.pubsub import BackplaneReceiver


# --8<-- [start:backplane]
class Bus:
    """Stands in for a broker: delivers every envelope to every connected backplane."""

    def __init__(self) -> None:
        self.backplanes: list[BusBackplane] = []
        self.log: list[tuple[str, bytes]] = []  # history, for replay


class BusBackplane:
    """``Backplane``: start, subscribe, unsubscribe, publish, read_history, close."""

    def __init__(self, bus: Bus, history: int = 0) -> None:
        self.bus = bus
        self.history = history
        self.topics: set[str] = set()
        self.receiver: BackplaneReceiver | None = None

    def start(self, receiver: BackplaneReceiver) -> None:
        self.receiver = receiver
        self.bus.backplanes.append(self)
        receiver.connection_made()

    def subscribe(self, topic: str) -> None:
        self.topics.add(topic)
        if self.receiver is not None:
            self.receiver.subscribed(topic)

    def unsubscribe(self, topic: str) -> None:
        self.topics.discard(topic)

    async def publish(self, batch: Sequence[tuple[str, bytes]]) -> list[str | None]:
        ids: list[str | None] = []
        for topic, envelope in batch:
            self.bus.log.append((topic, envelope))
            event_id = f"{len(self.bus.log)}-0" if self.history else None
            for backplane in self.bus.backplanes:
                if topic in backplane.topics and backplane.receiver is not None:
                    backplane.receiver.received(topic, envelope, event_id)
            ids.append(event_id)
        return ids

    async def read_history(self, topic: str, after: str) -> list[tuple[str, bytes]]:
        first = int(after.partition("-")[0])
        kept = [(f"{n}-0", e) for n, (t, e) in enumerate(self.bus.log, 1) if t == topic]
        return [(event_id, e) for event_id, e in kept if int(event_id[:-2]) > first]

    async def close(self) -> None:
        if self in self.bus.backplanes:
            self.bus.backplanes.remove(self)


bus = Bus()
pubsub = BackplanePubSub(BusBackplane(bus, history=100), name="bus")
# --8<-- [end:backplane]
