"""What the new backplanes share around the subscriber session (``RedisSubscriber``).

``RedisSubscriber`` keeps one listening connection up (backoff, health checks,
resubscribing) by driving an object shaped like a redis-py ``PubSub``. Redis
Cluster, PostgreSQL and NATS each give it such an object over their own
client; ``QueuedSession`` is the part those have in common (a queue of
messages and failures that ``get_message`` reads), ``SessionBackplane`` the
part of a ``Backplane`` that only hands topics to the session.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

from ._redis_subscriber import RedisSubscriber
from .pubsub import BackplaneReceiver

__all__ = ["QueuedSession", "SessionBackplane", "import_optional"]


def import_optional(module: str, hint: str) -> Any:
    """``module``, or an ``ImportError`` that says how to install it (``hint``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(hint) from exc


class QueuedSession:
    """A listening session whose client calls back: messages wait in ``inbox``.

    ``put`` queues a message in the form ``RedisSubscriber`` reads
    (``type``, ``channel``, ``data``); ``fail`` queues an exception, which ends
    the session when ``get_message`` reaches it.
    """

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[dict[str, Any] | Exception] = asyncio.Queue()

    def put(self, kind: str, channel: bytes | None, data: Any = None) -> None:
        self.inbox.put_nowait({"type": kind, "channel": channel, "data": data})

    def fail(self, error: Exception) -> None:
        self.inbox.put_nowait(error)

    async def get_message(self, timeout: float | None = None) -> dict[str, Any]:
        item = await self.inbox.get()
        if isinstance(item, Exception):
            raise item
        return item


class SessionBackplane:
    """The topic half of a ``Backplane``: ``start``, ``subscribe``, ``unsubscribe``.

    A subclass gives ``channel(topic)`` (bytes), ``session()`` (a new listening
    session, like redis-py's ``client.pubsub()``) and ``replace()`` (drop the
    publishing connection, called when the listening one is lost).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "h3:",
        history: int = 0,
        history_ttl: float | None = None,
        command_timeout: float = 5.0,
        **session: Any,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.history = history
        self.history_ttl = history_ttl
        self.command_timeout = command_timeout
        # ``session``: ``health_check_interval`` and ``reconnect_backoff``. The
        # session asks its "client" (this object) for ``pubsub()`` per connection.
        self.subscriber = RedisSubscriber(
            lambda: self, self.channel, on_lost=self.replace, **session
        )

    def channel(self, topic: str) -> bytes:
        raise NotImplementedError

    def session(self) -> Any:
        raise NotImplementedError

    def replace(self) -> None:
        raise NotImplementedError

    def pubsub(self) -> Any:
        return self.session()

    async def aclose(self) -> None:
        return None

    def start(self, receiver: BackplaneReceiver) -> None:
        self.subscriber.start(receiver)

    def subscribe(self, topic: str) -> None:
        self.subscriber.subscribe(topic)

    def unsubscribe(self, topic: str) -> None:
        self.subscriber.unsubscribe(topic)
