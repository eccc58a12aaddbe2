"""The Redis subscriber session: one listening connection per process.

It SUBSCRIBEs the channels of the topics wanted (``subscribe``/``unsubscribe``
only mark a topic changed; one writer task sends the commands in chunks), reads
messages and hands them to the receiver, PINGs when it has been quiet so a
Redis that stops answering is noticed within two to three
``health_check_interval``, and after any failure reconnects with backoff and
subscribes every wanted topic again.

A message on a channel is ``event_id "\\n" envelope`` (the event id is empty
without history). The session does not decode envelopes; anything that is not
framed so is reported as malformed and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterable
from typing import Any

from ._compat import spawn
from ._supervise import supervise
from .pubsub import BackplaneReceiver, parse_event_id

__all__ = ["RedisSubscriber", "split_message"]

# Channels named in one SUBSCRIBE/UNSUBSCRIBE command at most.
CHUNK = 1000


def split_message(raw: bytes) -> tuple[str | None, bytes]:
    """``event_id "\\n" envelope`` -> ``(event id or None, envelope)``; ``ValueError`` if not."""
    newline = raw.find(b"\n", 0, 48)
    if newline < 0:
        raise ValueError("no event id line")
    if newline == 0:
        return None, raw[1:]
    event_id = raw[:newline].decode("ascii", "replace")
    if parse_event_id(event_id) is None:
        raise ValueError("the event id is not a stream id")
    return event_id, raw[newline + 1 :]


class RedisSubscriber:
    """Keeps one subscriber connection up and subscribed to the wanted channels."""

    def __init__(
        self,
        make_client: Callable[[], Any],
        channel: Callable[[str], bytes],
        *,
        health_check_interval: float,
        reconnect_backoff: tuple[float, float],
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.make_client = make_client
        self.on_lost = on_lost
        self.channel = channel
        self.health_check_interval = health_check_interval
        self.reconnect_backoff = reconnect_backoff
        self.wanted: set[str] = set()
        self.client: Any = None
        self.task: asyncio.Future[Any] | None = None
        self._receiver: BackplaneReceiver | None = None
        self._dirty: set[str] = set()
        self._dirty_event: asyncio.Event | None = None
        self._on_server: set[str] = set()
        self._channel_topics: dict[bytes, str] = {}
        self._last_heard = 0.0

    def start(self, receiver: BackplaneReceiver) -> None:
        self._receiver = receiver
        self.wanted = set()
        self._dirty = set()
        self._dirty_event = asyncio.Event()
        self._channel_topics = {}
        self.client = self.make_client()
        self.task = spawn(
            supervise("Redis subscriber", self._run, receiver.connection_lost),
            what="Redis subscriber",
        )

    def subscribe(self, topic: str) -> None:
        self.wanted.add(topic)
        self._mark(topic)

    def unsubscribe(self, topic: str) -> None:
        self.wanted.discard(topic)
        self._mark(topic)

    async def close(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        client, self.client = self.client, None
        if client is not None:
            await client.aclose()

    def _mark(self, topic: str) -> None:
        self._dirty.add(topic)
        if self._dirty_event is not None:
            self._dirty_event.set()

    async def _run(self) -> None:
        """Keep one subscriber connection up; after a failure reconnect with backoff."""
        receiver = self._receiver
        assert receiver is not None
        low, high = self.reconnect_backoff
        delay = low
        while True:
            pubsub = None
            try:
                pubsub = self.client.pubsub()
                await pubsub.connect()
                self._last_heard = asyncio.get_running_loop().time()
                self._on_server.clear()
                self._mark_all()
                receiver.connection_made()
                delay = low
                await self._session(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._on_server.clear()
                self.on_lost()
                receiver.connection_lost(exc)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, high)

    def _mark_all(self) -> None:
        self._dirty = set(self.wanted)
        assert self._dirty_event is not None
        self._dirty_event.set()

    async def _session(self, pubsub: Any) -> None:
        """Read messages and send (un)subscriptions on one connection until it fails."""
        reader = asyncio.ensure_future(self._read(pubsub))
        writer = asyncio.ensure_future(self._write(pubsub))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.wait({reader, writer})
        for task in done:
            error = task.exception()
            if error is not None:
                raise error
        raise ConnectionError("Redis subscriber connection ended")

    async def _write(self, pubsub: Any) -> None:
        """Send SUBSCRIBE/UNSUBSCRIBE for changed topics; PING when it has been quiet."""
        event = self._dirty_event
        assert event is not None
        loop = asyncio.get_running_loop()
        interval = self.health_check_interval
        last_ping = loop.time()
        while True:
            now = loop.time()
            if now - self._last_heard > 2 * interval:
                raise ConnectionError(f"Redis sent nothing for {2 * interval:g}s (PING unanswered)")
            if now - last_ping >= interval:
                await pubsub.ping()
                last_ping = now
            if not self._dirty:
                event.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), interval - (now - last_ping))
                continue
            dirty, self._dirty = self._dirty, set()
            on_server, wanted = self._on_server, self.wanted
            add = [t for t in dirty if t in wanted and t not in on_server]
            drop = [t for t in dirty if t not in wanted and t in on_server]
            for chunk in _chunks(add):
                await pubsub.subscribe(*[self._channel_of(t) for t in chunk])
                on_server.update(chunk)
            for chunk in _chunks(drop):
                await pubsub.unsubscribe(*[self._channel_of(t) for t in chunk])
                on_server.difference_update(chunk)

    def _channel_of(self, topic: str) -> bytes:
        channel = self.channel(topic)
        self._channel_topics[channel] = topic
        return channel

    async def _read(self, pubsub: Any) -> None:
        receiver = self._receiver
        assert receiver is not None
        loop = asyncio.get_running_loop()
        while True:
            message = await pubsub.get_message(timeout=None)
            self._last_heard = loop.time()
            if message is None:
                continue
            kind = message["type"]
            channel = message["channel"]
            topic = self._channel_topics.get(channel)
            if topic is None:
                continue
            if kind == "message":
                try:
                    event_id, envelope = split_message(message["data"])
                except ValueError as exc:
                    receiver.malformed(topic, exc)
                    continue
                receiver.received(topic, envelope, event_id)
            elif kind == "subscribe":
                receiver.subscribed(topic)
            elif kind == "unsubscribe":
                if topic in self.wanted:  # ended by the server (a shard's slot moved)
                    self._on_server.discard(topic)
                    self._mark(topic)
                else:
                    del self._channel_topics[channel]


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]
