"""Redis backplane (placeholder until issue 5 lands)."""

from __future__ import annotations

from .pubsub import MemoryPubSub

__all__ = ["RedisPubSub"]


class RedisPubSub(MemoryPubSub):
    """Placeholder."""

    def __init__(self, url: str = "redis://localhost:6379/0") -> None:
        super().__init__()
        self.url = url
