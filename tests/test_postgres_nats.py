"""PostgresPubSub and NatsPubSub in one process, against real servers.

Several pub/subs on one loop stand for several processes. The same tests run
for both (parametrised): frame types and order across a publish too large for
the wire (PostgreSQL spills it to a table; NATS refuses one over
``max_payload``), history and replay, and a server restart: the outage is
reported once per process, every topic subscribed again, publishes cross
again. The restart tests start their own server; the others share the
session's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from h3_fastapi import NatsPubSub, PostgresPubSub
from h3_fastapi.backplane import BackplanePubSub
from h3_fastapi.pubsub import Outgoing, pubsub_from_url
from tests.services import (  # noqa: F401 - session fixtures, asked for by name below
    NatsService,
    PostgresService,
    nats_service,
    need_binaries,
    postgres_service,
)

pytestmark = pytest.mark.backplanes

TIMEOUT = 10
KINDS: dict[str, tuple[type[BackplanePubSub], str]] = {
    "postgres": (PostgresPubSub, "postgres_service"),
    "nats": (NatsPubSub, "nats_service"),
}


class Recorder:
    namespace = None

    def __init__(self) -> None:
        self.got: list[Outgoing] = []

    def deliver(self, outgoing: Outgoing) -> None:
        self.got.append(outgoing)

    @property
    def data(self) -> list[str | bytes]:
        return [o.data for o in self.got]


async def until(check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture(params=list(KINDS))
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., BackplanePubSub]]:
    """``make(**options)``: a pub/sub of this kind on the session's server."""
    kind, fixture = KINDS[request.param]
    service = request.getfixturevalue(fixture)
    made: list[BackplanePubSub] = []

    def build(**options: Any) -> BackplanePubSub:
        pubsub = kind(service.url, **options)
        made.append(pubsub)
        return pubsub

    build.kind = request.param  # type: ignore[attr-defined]
    yield build
    for pubsub in made:
        await pubsub.close()


async def subscribed(pubsub: BackplanePubSub, topic: str) -> Recorder:
    recorder = Recorder()
    pubsub.subscribe(topic, recorder)
    await asyncio.wait_for(pubsub.wait_subscribed(topic), TIMEOUT)
    return recorder


async def test_the_url_scheme_picks_the_backplane(make: Any) -> None:
    pubsub = make()
    assert type(pubsub_from_url(pubsub.url)) is type(pubsub)


async def test_frame_types_order_and_a_publish_too_large_for_the_wire(make: Any) -> None:
    a, b = make(), make()
    far = await subscribed(b, "t")
    big = "x" * 2_000_000  # over NOTIFY's 8000 bytes and NATS's 1 MB max_payload
    sent: list[str | bytes] = ["text", b"\x00\xffbinary", "é" * 5000, big, b"\x01" * 9000, "last"]
    for data in sent:
        a.publish("t", data)
    await a.publish("t", "done")
    if make.kind == "postgres":  # spilled to the table: every size crosses, in order
        expected = [*sent, "done"]
    else:  # refused by NATS (logged), the others cross in order
        expected = [d for d in sent if d is not big] + ["done"]
    await until(lambda: len(far.got) >= len(expected), f"{len(expected)} publishes")
    assert far.data == expected


async def test_history_ids_and_replay_on_another_process(make: Any) -> None:
    a, b, c = make(history=5), make(history=5), make(history=5)
    watcher = await subscribed(b, "feed")
    for i in range(8):
        await a.publish("feed", f"m{i}")
    await until(lambda: len(watcher.got) == 8, "8 publishes")
    ids = [o.id for o in watcher.got]
    assert all(ids) and ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    late = Recorder()
    await asyncio.wait_for(c.subscribe_from("feed", late, ids[4]), TIMEOUT)
    assert late.data == ["m5", "m6", "m7"]
    await a.publish("feed", "live")
    await until(lambda: late.data[-1:] == ["live"], "the live publish after the replay")


@pytest.mark.parametrize("kind", list(KINDS))
async def test_server_restart_outage_reported_once_then_resubscribed(kind: str) -> None:
    pubsub_class, _ = KINDS[kind]
    if kind == "postgres":
        need_binaries("initdb", "pg_ctl")
        service: Any = PostgresService().start()
    else:
        need_binaries("nats-server")
        service = NatsService().start()
    errors: list[list[Exception]] = [[], []]
    a, b = (
        pubsub_class(service.url, on_error=errors[i].append, reconnect_backoff=(0.05, 0.2))
        for i in range(2)
    )
    try:
        far = await subscribed(b, "t")
        near = await subscribed(a, "t")
        await a.publish("t", "before")
        await until(lambda: far.data == ["before"], "the first publish")

        service.stop()
        await until(lambda: not a.connected and not b.connected, "both see the outage")
        await a.publish("t", "during")  # local only, and never later
        assert near.data == ["before", "during"]

        service.start()
        await until(lambda: "t" in a.confirmed_topics and "t" in b.confirmed_topics, "back")
        await a.publish("t", "after")
        await until(lambda: far.data[-1:] == ["after"], "a publish after the restart")
        assert far.data == ["before", "after"]
        assert [len(e) for e in errors] == [1, 1], errors
    finally:
        await a.close()
        await b.close()
        service.remove()
