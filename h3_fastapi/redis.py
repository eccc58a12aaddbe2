"""Redis backplane: ``RedisPubSub`` carries publishes between processes and hosts.

``RedisPubSub(url)`` is a ``BackplanePubSub`` (local fan-out, one ordered
publisher, catch-up for SSE replay; see ``h3_fastapi.backplane``) over a
``RedisBackplane``, which is three small parts:

- ``_redis_subscriber.RedisSubscriber``: one SUBSCRIBEd connection per process
  that follows the local topics, health-checks and reconnects.
- ``_redis_publisher.RedisPublisher``: one publishing connection, pipelined.
- ``_redis_history``: with ``history=N``, a stream per topic written in the same
  Lua call as the PUBLISH; its ids are the event ids.

Topics map to channels ``prefix + topic``. When Redis cannot be reached,
connections to clients stay open and publishes keep reaching this process's
subscribers; what would have crossed Redis is dropped, not queued
(at-most-once). The error is logged once per outage, both connections come
back with backoff, and every topic is subscribed again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._redis_publisher import RedisPublisher
from ._redis_subscriber import RedisSubscriber
from ._url_pubsub import UrlPubSub, redacted
from .pubsub import BackplaneReceiver

__all__ = ["INSTALL_HINT", "RedisBackplane", "RedisPubSub", "redacted"]

INSTALL_HINT = "RedisPubSub needs the Redis client: pip install 'h3-fastapi[redis]'"


def load_redis() -> Any:
    """``redis.asyncio`` or an ``ImportError`` that says how to install it."""
    try:
        import redis.asyncio as redis_asyncio
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return redis_asyncio


class RedisBackplane:
    """The ``Backplane`` over one Redis (or Valkey) server."""

    #: The command that sends a message (``SPUBLISH`` for sharded pub/sub).
    publish_command = "PUBLISH"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "h3:",
        history: int = 0,
        history_ttl: float | None = None,
        reconnect_backoff: tuple[float, float] = (0.1, 2.0),
        health_check_interval: float = 15.0,
        command_timeout: float = 5.0,
    ) -> None:
        self._redis = load_redis()
        self.url = url
        self.prefix = prefix
        self.history = history
        self.command_timeout = command_timeout
        self.tag = "h3"
        self.publisher = RedisPublisher(
            self._publisher_client,
            self.channel,
            history=history,
            history_ttl=history_ttl,
            command=self.publish_command,
        )
        self.subscriber = RedisSubscriber(
            self._subscriber_client,
            self.channel,
            health_check_interval=health_check_interval,
            reconnect_backoff=reconnect_backoff,
            # Redis went away: the publisher's connection is dead too.
            on_lost=self.publisher.replace,
        )

    def channel(self, topic: str) -> bytes:
        return (self.prefix + topic).encode("utf-8", "surrogatepass")

    def start(self, receiver: BackplaneReceiver) -> None:
        self.tag = getattr(receiver, "origin", "h3")[:12]
        self.publisher.client = None  # a client of an earlier loop or process is not ours
        self.subscriber.start(receiver)

    def subscribe(self, topic: str) -> None:
        self.subscriber.subscribe(topic)

    def unsubscribe(self, topic: str) -> None:
        self.subscriber.unsubscribe(topic)

    async def publish(self, batch: Sequence[tuple[str, bytes]]) -> Sequence[str | Exception | None]:
        return await self.publisher.publish(batch)

    async def read_history(self, topic: str, after: str) -> list[tuple[str, bytes]]:
        return await self.publisher.read_history(topic, after)

    async def close(self) -> None:
        await self.subscriber.close()
        await self.publisher.close()

    def _options(self) -> dict[str, Any]:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        return {
            "retry": Retry(NoBackoff(), 0),
            "socket_connect_timeout": self.command_timeout,
            "socket_keepalive": True,
        }

    def _subscriber_client(self) -> Any:
        return self._redis.Redis.from_url(
            self.url, socket_timeout=None, client_name=f"h3-sub-{self.tag}", **self._options()
        )

    def _publisher_client(self) -> Any:
        return self._redis.Redis.from_url(
            self.url,
            socket_timeout=self.command_timeout,
            client_name=f"h3-pub-{self.tag}",
            **self._options(),
        )


class RedisPubSub(UrlPubSub):
    """Pub/sub across processes and hosts through Redis PUBLISH/SUBSCRIBE.

    ``url`` is a ``redis://`` (or ``rediss://``, ``unix://``) URL. Topics map to
    channels ``prefix + topic``; give unrelated apps sharing a Redis different
    prefixes. ``history=N`` keeps the last N publishes of each topic in a Redis
    stream for SSE ``Last-Event-ID`` replay (``subscribe_from``);
    ``history_ttl`` (seconds) lets a topic's stream expire that long after its
    last publish, so finished resumable streams and dead topics do not stay
    in Redis (``None``: kept, at most ``history`` entries per topic).

    ``on_error(exc)`` (sync or async) is called when an outage begins, at the
    moment the error is logged: once per outage, not once per message.
    ``reconnect_backoff`` is the first and the longest wait between reconnect
    attempts (seconds, doubling with jitter). A Redis that stops answering
    without closing the connection is noticed within two to three
    ``health_check_interval``. ``command_timeout`` bounds one publish round
    trip; ``max_pending`` bounds the publishes waiting for Redis.

    Each process opens one connection for subscriptions and one for
    publishing, on the event loop that first uses the pub/sub. Nothing
    connects until then, so the object can be built at import time; without
    the ``redis`` package installed it raises ``ImportError`` here.
    """

    default_url = "redis://localhost:6379/0"
    label = "Redis backplane"

    def make_backplane(self, url: str, **options: Any) -> RedisBackplane:
        return RedisBackplane(url, **options)
