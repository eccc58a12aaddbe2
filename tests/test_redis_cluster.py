"""RedisClusterPubSub against a real 3-primary, 3-replica Redis Cluster.

Several ``RedisClusterPubSub`` objects on one loop stand for several processes
(each has its own origin and connections). The cluster here is this module's
own (``cluster-node-timeout`` 500 ms): the failover test kills a primary.

- Topics spread over the three shards (hash tags: the slot is the topic's).
- A primary killed during a publish stream: its replica takes over, every
  subscriber resumes within 5 s, per-publisher order holds for what arrives,
  nothing twice, and each process reports the outage through ``on_error`` once.
- A slot moved to another shard: its channel is followed there, no outage.
- SSE history lives in a stream on the channel's own slot.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from h3_fastapi import RedisClusterPubSub
from h3_fastapi.pubsub import Outgoing, pubsub_from_url
from tests.services import RedisClusterService, need_binaries

pytestmark = pytest.mark.backplanes

TIMEOUT = 10
TOPICS = [f"room{i}" for i in range(24)]


class Recorder:
    """Keeps ``(topic, seq)`` of what it gets, with the arrival time."""

    namespace = None

    def __init__(self, topic: str, into: list[tuple[str, int, float]]) -> None:
        self.topic = topic
        self.into = into

    def deliver(self, outgoing: Outgoing) -> None:
        self.into.append((self.topic, int(outgoing.data), time.monotonic()))


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterService]:
    need_binaries("redis-server", "redis-cli")
    service = RedisClusterService(node_timeout_ms=500)
    try:
        yield service.start()
    finally:
        service.stop()


@pytest.fixture
async def processes(cluster: RedisClusterService) -> AsyncIterator[list[Any]]:
    """Three pub/subs, each with its list of ``on_error`` calls as ``.errors``."""
    made = []
    for _ in range(3):
        errors: list[Exception] = []
        pubsub = RedisClusterPubSub(
            cluster.url, on_error=errors.append, reconnect_backoff=(0.05, 0.5)
        )
        pubsub.errors = errors  # type: ignore[attr-defined]
        made.append(pubsub)
    yield made
    for pubsub in made:
        await pubsub.close()


async def until(check: Any, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def shard_counts(cluster: RedisClusterService) -> Counter[int]:
    return Counter(cluster.owner("h3:{" + topic + "}") for topic in TOPICS)


def test_url_scheme_and_channels_spread_over_the_three_shards(
    cluster: RedisClusterService,
) -> None:
    pubsub = pubsub_from_url(cluster.url)
    assert type(pubsub) is RedisClusterPubSub
    counts = shard_counts(cluster)
    print(f"\n{len(TOPICS)} topics per shard (primary port: topics): {dict(counts)}")
    assert len(counts) == 3 and min(counts.values()) >= 3
    with pytest.raises(ValueError):
        RedisClusterPubSub("redis://127.0.0.1:1")


async def test_history_stream_on_the_channel_slot_and_replay(
    cluster: RedisClusterService,
) -> None:
    a, b = (RedisClusterPubSub(cluster.url, history=10) for _ in range(2))
    try:
        got: list[tuple[str, int, float]] = []
        b.subscribe("feed", Recorder("feed", got))
        await asyncio.wait_for(b.wait_subscribed("feed"), TIMEOUT)
        for i in range(5):
            await a.publish("feed", i)
        await until(lambda: len(got) == 5, "5 publishes")
        owner = cluster.owner("h3:{feed}")
        assert cluster.command(owner, "XLEN", "h3:{feed}") == "5"  # on the shard of the channel
        later = await b.fetch_history("feed", "0-0")
        assert [o.data for o in later] == ["0", "1", "2", "3", "4"]
    finally:
        await a.close()
        await b.close()


async def test_a_slot_moved_to_another_shard_is_followed_without_an_outage(
    cluster: RedisClusterService, processes: list[Any]
) -> None:
    publisher, listener, _ = processes
    got: list[tuple[str, int, float]] = []
    listener.subscribe("moving", Recorder("moving", got))
    await asyncio.wait_for(listener.wait_subscribed("moving"), TIMEOUT)
    await publisher.publish("moving", 1)
    await until(lambda: len(got) == 1, "the first publish")

    key = "h3:{moving}"
    source = cluster.owner(key)
    slot = cluster.command(source, "CLUSTER", "KEYSLOT", key)
    target = next(port for port in cluster.primaries() if port != source)
    ids = {n["port"]: n["id"] for n in cluster.nodes()}
    # Resharding an empty slot (no history here), as redis-cli does: importing
    # on the target, migrating on the source, then the owner on every node,
    # target first (which bumps its config epoch, so the move sticks).
    cluster.command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
    cluster.command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
    for port in [target, source, *[p for p in cluster.primaries() if p not in (source, target)]]:
        cluster.command(port, "CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    await until(lambda: cluster.owner(key) == target, "the slot on its new shard")

    # Redis ended the subscription on the old shard; it is made on the new one.
    # Probe until a publish gets through (those before may go nowhere).
    deadline = time.monotonic() + 5
    probe = 1
    while len(got) < 2:
        assert time.monotonic() < deadline, "the channel was not followed to its new shard"
        probe += 1
        await publisher.publish("moving", probe)
        await asyncio.sleep(0.05)  # pacing between probes, not synchronisation
    assert got[-1][1] <= probe and listener.confirmed_topics == {"moving"}
    assert [p.errors for p in processes] == [[], [], []]  # no outage reported


async def test_a_primary_killed_during_a_publish_stream(
    cluster: RedisClusterService, processes: list[Any]
) -> None:
    publisher, *listeners = processes
    received: list[list[tuple[str, int, float]]] = [[] for _ in listeners]
    for pubsub, got in zip(listeners, received, strict=True):
        for topic in TOPICS:
            pubsub.subscribe(topic, Recorder(topic, got))
    for pubsub in listeners:
        for topic in TOPICS:
            await asyncio.wait_for(pubsub.wait_subscribed(topic), TIMEOUT)

    seq = 0
    stop = asyncio.Event()

    async def publish_stream() -> None:
        nonlocal seq
        while not stop.is_set():
            seq += 1
            for topic in TOPICS:
                publisher.publish(topic, seq)
            await asyncio.sleep(0.005)  # pacing, not synchronisation

    stream = asyncio.ensure_future(publish_stream())
    try:
        await until(lambda: all(len(got) > 10 * len(TOPICS) for got in received), "traffic")
        victim = cluster.owner("h3:{" + TOPICS[0] + "}")
        cluster.kill(victim)
        killed, at_kill = time.monotonic(), seq

        def resumed() -> bool:
            fresh = [{t for t, s, _ in got if s > at_kill + 5} for got in received]
            return all(topics == set(TOPICS) for topics in fresh)

        await until(resumed, "every listener gets every topic again", timeout=5)
        resumed_after = time.monotonic() - killed
    finally:
        stop.set()
        await stream

    assert victim not in cluster.primaries()  # the replica took over
    for got in received:
        for topic in TOPICS:
            seqs = [s for t, s, _ in got if t == topic]
            assert seqs == sorted(set(seqs)), f"{topic}: out of order or twice"
    assert [len(p.errors) for p in processes] == [1, 1, 1], [p.errors for p in processes]
    lost = sum(seq * len(TOPICS) - len(got) for got in received)
    print(
        f"\nfailover of {victim}: every listener had every topic back {resumed_after:.2f}s "
        f"after the kill; {lost} of {2 * seq * len(TOPICS)} deliveries lost during it; "
        f"on_error calls {[len(p.errors) for p in processes]}; "
        f"shards now {dict(shard_counts(cluster))}"
    )
    cluster.restart(victim)  # back as a replica, for the tests after this one
