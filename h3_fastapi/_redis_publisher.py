"""The Redis publisher connection: sends one batch of envelopes, in order.

Batches come from the ordered publisher above (one at a time), so a pipeline
keeps their order. After a failure the connection is replaced on the next
batch; nothing is retried (at-most-once across processes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from ._compat import spawn
from ._redis_history import HISTORY_SCRIPT, history_entries

__all__ = ["RedisPublisher"]


class RedisPublisher:
    """One publishing connection (made lazily) for a Redis backplane."""

    def __init__(
        self,
        make_client: Callable[[], Any],
        channel: Callable[[str], bytes],
        *,
        history: int,
        history_ttl: float | None = None,
        command: str = "PUBLISH",
    ) -> None:
        self.make_client = make_client
        self.channel = channel
        self.history = history
        # Milliseconds for PEXPIRE on the history stream after each publish; 0: none.
        self.history_ttl_ms = int(history_ttl * 1000) if history_ttl else 0
        self.command = command
        self.client: Any = None

    async def publish(self, batch: Sequence[tuple[str, bytes]]) -> list[str | Exception | None]:
        client = self._client()
        try:
            if len(batch) == 1 and not self.history:
                topic, envelope = batch[0]
                await client.execute_command(self.command, self.channel(topic), b"\n" + envelope)
                return [None]
            pipe = client.pipeline(transaction=False)
            for topic, envelope in batch:
                channel = self.channel(topic)
                if self.history:
                    args = (self.history, channel, envelope, self.command, self.history_ttl_ms)
                    pipe.eval(HISTORY_SCRIPT, 1, channel, *args)
                else:
                    pipe.execute_command(self.command, channel, b"\n" + envelope)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        except Exception:
            self.replace()
            raise
        if not self.history:
            return [r if isinstance(r, Exception) else None for r in results]
        return [r if isinstance(r, Exception) else _text(r) for r in results]

    async def read_history(self, topic: str, after: str) -> list[tuple[str, bytes]]:
        client = self._client()
        key = self.channel(topic)
        try:
            entries = await client.xrevrange(key, "+", "(" + after, count=self.history)
        except Exception:
            self.replace()
            raise
        return history_entries(entries)

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.aclose()

    def _client(self) -> Any:
        if self.client is None:
            self.client = self.make_client()
        return self.client

    def replace(self) -> None:
        """Drop a connection that failed; the next batch opens a new one."""
        old, self.client = self.client, None
        if old is not None:
            spawn(_close_quietly(old), what="closing a Redis connection")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _close_quietly(client: Any) -> None:
    with contextlib.suppress(Exception):
        await client.aclose()
