"""``history_ttl``: a topic's history does not outlive its last publish by more than that.

Without it, every topic that ever had history (each resumable stream is one)
keeps its last N publishes forever. Each backplane expires history its own
way; these tests look at where it is kept (the memory dict, the Redis key's
TTL, the PostgreSQL rows, the JetStream stream's ``max_age``) rather than wait
for a clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from h3_fastapi import (
    MemoryPubSub,
    NatsPubSub,
    PostgresPubSub,
    RedisClusterPubSub,
    RedisPubSub,
)
from h3_fastapi import pubsub as pubsub_module
from tests.services import (  # noqa: F401 - session fixtures, asked for by name below
    nats_service,
    postgres_service,
    redis_cluster_service,
    redis_service,
)

TIMEOUT = 10


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    made: list[Any] = []
    yield made
    for pubsub in made:
        await pubsub.close()


def test_a_bad_history_ttl_is_refused() -> None:
    with pytest.raises(ValueError, match="history_ttl"):
        MemoryPubSub(history=5, history_ttl=0)
    with pytest.raises(ValueError, match="history_ttl"):
        RedisPubSub("redis://127.0.0.1:1/0", history=5, history_ttl=-1)


def test_memory_drops_the_history_of_a_topic_idle_for_history_ttl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pubsub = MemoryPubSub(history=5, history_ttl=60)
    pubsub.publish("old", "a")
    first_id = pubsub._history["old"][-1][1].id
    assert first_id is not None
    real = pubsub_module.time.time_ns
    # Two minutes later: "old" has had no publish for longer than history_ttl.
    monkeypatch.setattr(pubsub_module.time, "time_ns", lambda: real() + 120 * 10**9)
    for i in range(pubsub_module._EXPIRE_EVERY):
        pubsub.publish("live", f"m{i}")
    assert "old" not in pubsub._history
    assert len(pubsub._history["live"]) == 5
    assert pubsub.replay("old", first_id) == []
    # Without history_ttl nothing is dropped.
    kept = MemoryPubSub(history=5)
    kept.publish("old", "a")
    for i in range(pubsub_module._EXPIRE_EVERY):
        kept.publish("live", f"m{i}")
    assert "old" in kept._history


@pytest.mark.redis
async def test_redis_history_stream_expires_history_ttl_after_its_last_publish(
    request: pytest.FixtureRequest, closing: list[Any]
) -> None:
    service = request.getfixturevalue("redis_service")
    import redis.asyncio as redis_asyncio

    expiring = RedisPubSub(service.url, prefix="ttl:", history=5, history_ttl=60)
    kept = RedisPubSub(service.url, prefix="kept:", history=5)
    closing += [expiring, kept]
    await asyncio.wait_for(expiring.publish("t", "x"), TIMEOUT)
    await asyncio.wait_for(kept.publish("t", "x"), TIMEOUT)
    client = redis_asyncio.Redis.from_url(service.url)
    try:
        assert 0 < await client.pttl("ttl:t") <= 60_000
        assert await client.pttl("kept:t") == -1  # no expiry
    finally:
        await client.aclose()


@pytest.mark.backplanes
async def test_redis_cluster_history_stream_expires_too(
    request: pytest.FixtureRequest, closing: list[Any]
) -> None:
    service = request.getfixturevalue("redis_cluster_service")
    from redis.asyncio.cluster import RedisCluster

    pubsub = RedisClusterPubSub(service.url, history=5, history_ttl=60)
    closing.append(pubsub)
    await asyncio.wait_for(pubsub.publish("t", "x"), TIMEOUT)
    host, port = service.url.split("://")[1].split(",")[0].split(":")
    client = RedisCluster(host=host, port=int(port))
    try:
        assert 0 < await client.pttl("h3:{t}") <= 60_000
    finally:
        await client.aclose()


@pytest.mark.backplanes
async def test_postgres_deletes_history_rows_older_than_history_ttl(
    request: pytest.FixtureRequest, closing: list[Any]
) -> None:
    service = request.getfixturevalue("postgres_service")
    import asyncpg

    pubsub = PostgresPubSub(service.url, table="h3_ttl_test", history=5, history_ttl=60)
    closing.append(pubsub)
    await asyncio.wait_for(pubsub.publish("old", "x"), TIMEOUT)
    conn = await asyncpg.connect(service.url)
    try:
        await conn.execute(
            "UPDATE h3_ttl_test SET at = now() - interval '2 minutes' WHERE channel = 'h3:old'"
        )
        for i in range(32):  # the pruning runs once per 32 publishes
            await asyncio.wait_for(pubsub.publish("live", f"m{i}"), TIMEOUT)
        count = "SELECT count(*) FROM h3_ttl_test WHERE channel = $1"
        assert await conn.fetchval(count, "h3:old") == 0
        assert await conn.fetchval(count, "h3:live") >= 5
    finally:
        await conn.execute("DROP TABLE IF EXISTS h3_ttl_test")
        await conn.close()


@pytest.mark.backplanes
async def test_nats_history_stream_has_max_age(
    request: pytest.FixtureRequest, closing: list[Any]
) -> None:
    service = request.getfixturevalue("nats_service")
    import nats

    pubsub = NatsPubSub(service.url, prefix="ttl", history=5, history_ttl=60)
    closing.append(pubsub)
    await asyncio.wait_for(pubsub.publish("t", "x"), TIMEOUT)
    nc = await nats.connect(service.url)
    try:
        info = await nc.jetstream().stream_info("ttl-kept")
        assert info.config.max_age == 60
    finally:
        await nc.close()
