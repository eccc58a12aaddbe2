"""Presence: who is subscribed to a topic, across every process that shares a pub/sub.

Presence needs nothing from a backplane but publish and subscribe, so it works
over every one (memory, Redis, and any ``Backplane``). Each process keeps:

- its own members exactly (``join``/``leave``, and a sweep that notices
  closed peers within ``SWEEP`` seconds);
- a table of every other process's members, refreshed by heartbeats.

All of it travels on one reserved topic, ``PRESENCE_TOPIC``: ``join`` and
``leave`` as they happen, a ``beat`` with the full list of a process's members
every ``heartbeat`` seconds (which also repairs a lost join or leave), a
``hello`` from a starting process (the others answer with a beat at once) and a
``bye`` from one closing cleanly. A process that dies sends nothing: its beats
stop, and after ``ttl`` seconds every other process drops its members. So the
counts converge within ``ttl`` plus one sweep of a process dying.

Each join and leave is also delivered to the topic's local subscribers in
every process, as the JSON text ``{"presence": "join" | "leave", "topic": ...,
"member": {"id": ..., "info": {...}}}``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from ._compat import spawn, worker_thread_loop
from ._hooks import logger
from .pubsub import Outgoing, PubSub, get_default_pubsub

__all__ = ["PRESENCE_TOPIC", "Presence", "presence"]

#: The reserved topic presence travels on; applications must not publish to it.
PRESENCE_TOPIC = "__h3:presence"

#: Seconds between two checks of this process's members for closed peers.
SWEEP = 0.2

Members = dict[str, dict[str, dict[str, Any]]]  # topic -> member id -> info

_registry: weakref.WeakKeyDictionary[Any, Presence] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


class _Local:
    """One member in this process: its info and how to tell it is still there."""

    __slots__ = ("alive", "info")

    def __init__(self, info: dict[str, Any], alive: Callable[[], bool]) -> None:
        self.info = info
        self.alive = alive


class _Remote:
    """What the last beat (and joins and leaves since) said about another process."""

    __slots__ = ("expires", "members")

    def __init__(self, expires: float) -> None:
        self.expires = expires
        self.members: Members = {}


class Presence:
    """The members of every topic across the processes that share ``pubsub``.

    One per pub/sub (``Presence.of(pubsub)``); build it yourself first to
    change ``heartbeat`` (seconds between beats) or ``ttl`` (seconds without a
    beat after which a process's members are dropped; a few heartbeats).
    """

    def __init__(self, pubsub: PubSub, *, heartbeat: float = 1.0, ttl: float = 3.0) -> None:
        if heartbeat <= 0 or ttl <= heartbeat:
            raise ValueError("heartbeat must be > 0 and ttl longer than heartbeat")
        self.pubsub = pubsub
        self.heartbeat = heartbeat
        self.ttl = ttl
        self.process = uuid.uuid4().hex
        self._local: dict[str, dict[str, _Local]] = {}
        self._remote: dict[str, _Remote] = {}
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Future[Any] | None = None
        self._started_at = 0.0
        with _registry_lock:
            _registry[pubsub] = self

    @classmethod
    def of(cls, pubsub: PubSub) -> Presence:
        """The presence of ``pubsub`` (made with the default timings on first use)."""
        with _registry_lock:
            found = _registry.get(pubsub)
        return found if found is not None else cls(pubsub)

    # --- the subscriber of the reserved topic --------------------------------

    @property
    def namespace(self) -> str | None:
        return None

    def deliver(self, outgoing: Outgoing) -> None:
        """A presence message from any process (this one too); any thread."""
        try:
            message = json.loads(outgoing.data)
            kind, process = message["t"], message["p"]
        except (ValueError, TypeError, KeyError) as exc:
            logger.debug("h3_fastapi: ignored a malformed presence message: %r", exc)
            return
        if process == self.process:
            if kind in ("join", "leave"):
                self._announce(kind, message.get("topic"), message.get("id"), message.get("info"))
            return
        if kind == "hello":
            self._beat()
            return
        with self._lock:
            events = self._apply(kind, process, message)
        for event in events:
            self._announce(*event)

    # --- members ---------------------------------------------------------------

    def join(
        self,
        topic: str,
        member_id: str,
        info: Mapping[str, Any] | None = None,
        *,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        """Add a member to ``topic`` in this process and tell every process.

        ``alive()`` is checked every ``SWEEP`` seconds; once it is false the
        member leaves (a closed peer leaves without anyone calling ``leave``).
        """
        entry = _Local(dict(info or {}), alive)
        with self._lock:
            self._local.setdefault(topic, {})[member_id] = entry
        self._start()
        self._send({"t": "join", "topic": topic, "id": member_id, "info": entry.info})

    def leave(self, topic: str, member_id: str) -> None:
        """Remove a member of ``topic`` in this process (no error if it was not one)."""
        with self._lock:
            members = self._local.get(topic)
            entry = members.pop(member_id, None) if members else None
            if entry is None:
                return
            if not members:
                del self._local[topic]
        self._send({"t": "leave", "topic": topic, "id": member_id, "info": entry.info})

    def members(self, topic: str) -> list[dict[str, Any]]:
        """The members of ``topic`` in every process known now: ``{"id", "info"}`` each.

        Right after this process started, other processes may not have been
        heard yet; ``await presence(topic)`` waits for that.
        """
        now = time.monotonic()
        with self._lock:
            found = [
                {"id": member_id, "info": entry.info}
                for member_id, entry in self._local.get(topic, {}).items()
            ]
            for remote in self._remote.values():
                if remote.expires >= now:
                    found += [
                        {"id": member_id, "info": info}
                        for member_id, info in remote.members.get(topic, {}).items()
                    ]
        return found

    async def wait_ready(self) -> None:
        """Start, and wait until every live process has had time to be heard (one heartbeat)."""
        self._start()
        loop = asyncio.get_running_loop()
        left = self._started_at + self.heartbeat - loop.time()
        if left > 0:
            await asyncio.sleep(left)  # a deadline, not synchronisation: beats come by then

    async def close(self) -> None:
        """Say goodbye (others drop this process's members at once) and stop beating."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with self._lock:
            self._local.clear()
        await self._publish({"t": "bye"})

    # --- inside ----------------------------------------------------------------

    def _apply(self, kind: str, process: str, message: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Update the table of ``process``; the join/leave events it makes (lock held)."""
        remote = self._remote.get(process)
        if kind == "bye":
            self._remote.pop(process, None)
            return _diff(remote.members if remote else {}, {})
        if remote is None:
            remote = self._remote[process] = _Remote(0.0)
        remote.expires = time.monotonic() + self.ttl
        if kind == "beat":
            members = message.get("m")
            if not isinstance(members, dict):
                return []
            events = _diff(remote.members, members)
            remote.members = members
            return events
        topic, member_id = message.get("topic"), message.get("id")
        if not isinstance(topic, str) or not isinstance(member_id, str):
            return []
        if kind == "join":
            given = message.get("info")
            info: dict[str, Any] = given if isinstance(given, dict) else {}
            remote.members.setdefault(topic, {})[member_id] = info
            return [("join", topic, member_id, info)]
        if kind == "leave":
            gone = remote.members.get(topic, {}).pop(member_id, None)
            return [] if gone is None else [("leave", topic, member_id, gone)]
        return []

    def _announce(self, kind: str, topic: Any, member_id: Any, info: Any) -> None:
        """Deliver a join or leave to the local subscribers of ``topic``."""
        deliver_local = getattr(self.pubsub, "deliver_local", None)
        if not isinstance(topic, str) or deliver_local is None:
            return
        event = {"presence": kind, "topic": topic, "member": {"id": member_id, "info": info}}
        deliver_local(topic, Outgoing(json.dumps(event, separators=(",", ":"))))

    def _snapshot(self) -> Members:
        with self._lock:
            return {
                topic: {member_id: entry.info for member_id, entry in members.items()}
                for topic, members in self._local.items()
            }

    def _beat(self) -> None:
        self._send({"t": "beat", "m": self._snapshot()})

    def _send(self, message: dict[str, Any]) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if here:
            spawn(self._publish(message), what="presence publish")
        else:
            asyncio.run_coroutine_threadsafe(self._publish(message), loop)

    async def _publish(self, message: dict[str, Any]) -> None:
        message["p"] = self.process
        await self.pubsub.publish(PRESENCE_TOPIC, json.dumps(message, separators=(",", ":")))

    def _start(self) -> None:
        """Subscribe to the reserved topic and start beating, on the app's loop (once)."""
        if self._task is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            found = worker_thread_loop()  # a sync hook in the threadpool
            if found is not None:
                self._loop = found
                found.call_soon_threadsafe(self._start)
            return
        self._loop = loop
        self._started_at = loop.time()
        self.pubsub.subscribe(PRESENCE_TOPIC, self)
        self._task = spawn(self._run(), what="presence heartbeat")

    @staticmethod
    def find(pubsub: PubSub) -> Presence | None:
        """The presence of ``pubsub`` if one was made."""
        with _registry_lock:
            return _registry.get(pubsub)

    async def _run(self) -> None:
        wait_subscribed = getattr(self.pubsub, "wait_subscribed", None)
        if wait_subscribed is not None:
            try:
                await asyncio.wait_for(wait_subscribed(PRESENCE_TOPIC), self.ttl)
            except asyncio.TimeoutError:
                logger.warning("h3_fastapi: presence topic not confirmed in %ss", self.ttl)
        await self._publish({"t": "hello"})
        next_beat = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() >= next_beat:
                next_beat = loop.time() + self.heartbeat
                self._beat()
            self._sweep()
            await asyncio.sleep(min(SWEEP, self.heartbeat))  # a timer: beats are periodic

    def _sweep(self) -> None:
        """Members whose peer closed leave; processes not heard for ``ttl`` are dropped."""
        with self._lock:
            gone = [
                (topic, member_id)
                for topic, members in self._local.items()
                for member_id, entry in members.items()
                if not _alive(entry)
            ]
            now = time.monotonic()
            dead = [p for p, remote in self._remote.items() if remote.expires < now]
            events = []
            for process in dead:
                events += _diff(self._remote.pop(process).members, {})
        for topic, member_id in gone:
            self.leave(topic, member_id)
        for event in events:
            self._announce(*event)


def _alive(entry: _Local) -> bool:
    try:
        return bool(entry.alive())
    except Exception:
        return False


def _diff(old: Members, new: Members) -> list[tuple[Any, ...]]:
    """The join and leave events that turn ``old`` into ``new``."""
    events: list[tuple[Any, ...]] = []
    for topic, members in old.items():
        kept = new.get(topic, {})
        events += [("leave", topic, m, info) for m, info in members.items() if m not in kept]
    for topic, members in new.items():
        if not isinstance(members, dict):
            continue
        known = old.get(topic, {})
        events += [("join", topic, m, info) for m, info in members.items() if m not in known]
    return events


async def presence(topic: str, *, pubsub: PubSub | None = None) -> list[dict[str, Any]]:
    """The members of ``topic`` across processes: ``[{"id": ..., "info": {...}}, ...]``.

    Uses ``pubsub`` (default: the process-wide one). The first call in a
    process waits up to one heartbeat so that every other process is heard.
    """
    found = Presence.of(pubsub if pubsub is not None else get_default_pubsub())
    await found.wait_ready()
    return found.members(topic)
