"""The other backplanes, built in code (H3_PUBSUB_URL picks them by scheme too)."""

from h3_fastapi import NatsPubSub, PostgresPubSub, RedisClusterPubSub

# --8<-- [start:backplanes]
cluster = RedisClusterPubSub("redis+cluster://10.0.0.1:7000,10.0.0.2:7000", history=100)
postgres = PostgresPubSub("postgresql://app:secret@db/app", table="h3_pubsub")
nats = NatsPubSub("nats://nats:4222", prefix="chat", history=100)
# --8<-- [end:backplanes]
