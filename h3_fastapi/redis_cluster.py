"""Redis Cluster backplane: ``RedisClusterPubSub`` over sharded pub/sub.

Why sharded pub/sub (``SSUBSCRIBE``/``SPUBLISH``, Redis 7+): a classic
``PUBLISH`` in a cluster is broadcast over the cluster bus to every node, so
pub/sub traffic does not scale with shards. A shard channel lives on the slot
of its name; a publish travels only to the primary and replicas of that shard.

Everything but the wire is the single-Redis backplane's (``h3_fastapi.redis``):
the subscriber session (backoff, health checks, resubscribing), the pipelined
publisher (with ``SPUBLISH``) and the history script. This module adds:

- channel names ``prefix + "{" + topic + "}"``: the hash tag makes the slot a
  function of the topic alone, so topics spread over the shards, and the
  history stream of a topic has the channel's own name, so the Lua call that
  ``XADD``\\s and ``SPUBLISH``\\es touches one slot;
- ``ShardedSubscription``: redis-py's ``ClusterPubSub`` (one connection per
  shard that holds wanted channels) seen as one listening connection, with one
  reader task per shard feeding one queue.

A shard going away (a killed primary) ends the whole session: every process
that listened on it reports one outage, refreshes the slot map and
subscribes again, and is back once the replica has taken over (one to two
``cluster-node-timeout``\\s). A slot migrated to another shard is followed
without an outage: Redis ends the shard channel's subscription, the slot map
is refreshed and the channel subscribed on its new owner (again after a
``MOVED`` reply, if the map came from a node that had not heard yet).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ._session import QueuedSession
from ._url_pubsub import UrlPubSub
from .redis import RedisBackplane

__all__ = ["RedisClusterBackplane", "RedisClusterPubSub", "ShardedSubscription", "cluster_options"]

# redis-py's message types for shard channels, as the subscriber session reads them.
_KINDS = {"smessage": "message", "ssubscribe": "subscribe", "sunsubscribe": "unsubscribe"}


def cluster_options(url: str) -> dict[str, Any]:
    """``redis+cluster://[user:pass@]host:port[,host:port...]`` -> ``RedisCluster`` options.

    ``rediss+cluster://`` is the same over TLS. The listed nodes are only the
    first ones asked for the slot map: one live node is enough.
    """
    from redis.asyncio.cluster import ClusterNode

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis+cluster", "rediss+cluster"):
        raise ValueError(f"not a redis+cluster:// URL: {_redacted(url)}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = []
    for address in hosts.split(","):
        host, _, port = address.strip().rpartition(":")
        if not host:
            host, port = port, "6379"
        nodes.append(ClusterNode(host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError("redis+cluster:// needs at least one host:port")
    options: dict[str, Any] = {"startup_nodes": nodes}
    if userinfo:
        user, _, password = userinfo.partition(":")
        options["username"] = unquote(user) or None
        options["password"] = unquote(password) or None
    if scheme == "rediss+cluster":
        options["ssl"] = True
    for key, value in parse_qsl(parts.query):
        if key == "password":
            options["password"] = value
    return options


def _redacted(url: str) -> str:
    """``url`` for log lines: the hosts, without userinfo or query."""
    scheme, _, rest = url.partition("://")
    _, at, hosts = rest.partition("/")[0].rpartition("@")
    return f"{scheme}://{'***@' if at else ''}{hosts}"


class ShardedSubscription(QueuedSession):
    """The subscriber session's view of ``ClusterPubSub``: one stream of messages.

    It offers what ``RedisSubscriber`` uses of a redis-py ``PubSub``
    (``connect``, ``subscribe``, ``unsubscribe``, ``ping``, ``get_message``,
    ``aclose``) over shard channels: a reader task per shard connection puts
    messages, renamed to the classic types, or its failure, in one queue.
    """

    def __init__(self, cluster: Any) -> None:
        super().__init__()
        self.cluster = cluster
        self.pubsub = cluster.pubsub()
        self.readers: dict[str, asyncio.Task[None]] = {}

    async def connect(self) -> None:
        """A fresh slot map, and every primary answers: else this raises (still down)."""
        await self.cluster.initialize()
        await self.cluster.nodes_manager.initialize()
        await self.cluster.execute_command("PING", target_nodes=self.cluster.PRIMARIES)

    async def subscribe(self, *channels: bytes) -> None:
        for channel in channels:  # one slot per SSUBSCRIBE
            await self.pubsub.ssubscribe(channel)
        self._follow()

    async def unsubscribe(self, *channels: bytes) -> None:
        await self.pubsub.sunsubscribe(*channels)

    async def ping(self) -> None:
        for shard in list(self.pubsub.node_pubsub_mapping.values()):
            await shard.ping()

    async def aclose(self) -> None:
        for task in self.readers.values():
            task.cancel()
        if self.readers:
            await asyncio.wait(self.readers.values())
        self.readers.clear()
        await self.pubsub.aclose()

    def _follow(self) -> None:
        """A reader for each shard connection that has none (new after a subscribe)."""
        for name in list(self.pubsub.node_pubsub_mapping):
            task = self.readers.get(name)
            if task is None or task.done():
                node = self.cluster.get_node(node_name=name)
                if node is not None:
                    self.readers[name] = asyncio.ensure_future(self._read(node))

    async def _read(self, node: Any) -> None:
        from redis.exceptions import AskError, MovedError

        mapping = self.pubsub.node_pubsub_mapping
        try:
            while node.name in mapping:
                try:
                    message = await self.pubsub.get_sharded_message(timeout=None, target_node=node)
                except (MovedError, AskError) as moved:
                    await self._moved(moved.slot_id)
                    continue
                if message is None:
                    continue
                kind = message["type"]
                kind = _KINDS.get(kind.decode() if isinstance(kind, bytes) else kind, kind)
                if kind == "unsubscribe" and message["channel"] in self.pubsub.shard_channels:
                    # Not asked for: the slot moved to another shard. Learn
                    # where, before the session subscribes the channel again.
                    await self.cluster.nodes_manager.initialize()
                self.inbox.put_nowait({**message, "type": kind})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if node.name in mapping:  # else redis-py closed it: no channels left there
                self.fail(exc)

    async def _moved(self, slot: int) -> None:
        """An SSUBSCRIBE reached a shard that no longer owns ``slot`` (stale slot map).

        Refresh the map and hand the session an unsubscribe for each channel of
        that slot: it subscribes them again, on the owner this time.
        """
        from redis.crc import key_slot

        await self.cluster.nodes_manager.initialize()
        for channel in list(self.pubsub.shard_channels):
            if key_slot(channel) == slot:
                self.put("unsubscribe", channel)


class _ClusterClient:
    """What ``RedisSubscriber`` expects of a client: ``pubsub()`` and ``aclose()``."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    def pubsub(self) -> ShardedSubscription:
        return ShardedSubscription(self.cluster)

    async def aclose(self) -> None:
        await self.cluster.aclose()


class RedisClusterBackplane(RedisBackplane):
    """The ``Backplane`` over a Redis (or Valkey) Cluster, with sharded pub/sub."""

    publish_command = "SPUBLISH"

    def channel(self, topic: str) -> bytes:
        return (self.prefix + "{" + topic + "}").encode("utf-8", "surrogatepass")

    def _cluster(self, **options: Any) -> Any:
        from redis.asyncio.cluster import RedisCluster

        settings = {**self._options(), **cluster_options(self.url), **options}
        return RedisCluster(**settings)

    def _subscriber_client(self) -> Any:
        return _ClusterClient(self._cluster(socket_timeout=None, client_name=f"h3-sub-{self.tag}"))

    def _publisher_client(self) -> Any:
        return self._cluster(socket_timeout=self.command_timeout, client_name=f"h3-pub-{self.tag}")


class RedisClusterPubSub(UrlPubSub):
    """Pub/sub across processes and hosts through a Redis Cluster's sharded pub/sub.

    ``url`` is ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://``
    for TLS; ``user:password@`` before the hosts). Topic ``t`` is the shard
    channel ``prefix + "{t}"``; with ``history=N`` its last N publishes are in
    a stream of the same name, on the same shard. The options mean what they
    mean for ``RedisPubSub``.

    Each process opens one listening connection per shard that holds channels
    it wants, and publishes through redis-py's ``RedisCluster``. Order is kept
    per publisher and topic (topics on different shards travel separately).
    Needs Redis or Valkey 7 or later and a ``redis`` package whose asyncio
    ``RedisCluster`` has sharded pub/sub (tested with 8.1; older ones are not).
    """

    default_url = "redis+cluster://localhost:6379"
    label = "Redis Cluster backplane"

    def make_backplane(self, url: str, **options: Any) -> RedisClusterBackplane:
        cluster_options(url)  # a bad URL fails here, not on first use
        return RedisClusterBackplane(url, **options)

    def shown(self, url: str) -> str:
        return _redacted(url)
