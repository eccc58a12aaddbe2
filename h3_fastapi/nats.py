"""NATS backplane: ``NatsPubSub`` over core NATS subjects, JetStream for history.

For platform teams that already run NATS. Topic ``t`` is the subject
``prefix.t``, the prefix made one subject token (``h3:`` gives ``h3``; a
topic that is not one plain subject token is base64url encoded behind a
``~``). Publishes are core NATS messages: no storage, no acknowledgement,
the server forwards each to the processes subscribed.

With ``history=N`` a publish goes to JetStream instead, to the subject
``prefix-kept.t`` of the stream ``prefix-kept`` (at most N messages per
subject). The stream *republishes* every stored message to ``prefix.t`` with
its stream sequence in a header (``RePublish``, NATS 2.9+), so receivers keep
plain core subscriptions and learn the event id (``<sequence>-0``) from the
header; replay reads the stream after ``Last-Event-ID`` with direct gets.

The listening connection is run by the same subscriber session as Redis
(``_redis_subscriber.RedisSubscriber``: backoff, health checks,
resubscribing); ``NatsSession`` here is what it drives instead of a Redis
``PubSub``. nats-py's own reconnecting is off, so an outage is noticed and
reported like every other backplane's.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Callable, Sequence
from typing import Any

from ._compat import spawn
from ._session import QueuedSession, SessionBackplane, import_optional
from ._url_pubsub import UrlPubSub, redacted
from .pubsub import BackplaneReceiver, parse_event_id

__all__ = ["INSTALL_HINT", "NatsBackplane", "NatsPubSub", "NatsSession"]

INSTALL_HINT = "NatsPubSub needs nats-py: pip install 'h3-fastapi[nats]'"

_TOKEN = re.compile(r"[A-Za-z0-9_\-:]{1,200}")


def subject_token(topic: str) -> str:
    """``topic`` as one subject token: itself if plain, else ``~`` + base64url."""
    if _TOKEN.fullmatch(topic):
        return topic
    raw = topic.encode("utf-8", "surrogatepass")
    return "~" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


class NatsSession(QueuedSession):
    """One listening connection, as ``RedisSubscriber`` drives a Redis ``PubSub``.

    Messages become ``event_id "\\n" envelope`` (the event id from the
    ``Nats-Sequence`` header of a republished JetStream message, else empty).
    ``ping`` is a PING/PONG round trip (``flush``).
    """

    def __init__(self, backplane: NatsBackplane) -> None:
        super().__init__()
        self.backplane = backplane
        self.nc: Any = None
        self.subscriptions: dict[bytes, Any] = {}

    async def connect(self) -> None:
        self.nc = await self.backplane.connect(on_lost=self._lost)

    async def _lost(self, *args: Any) -> None:
        error = args[0] if args and isinstance(args[0], Exception) else None
        self.fail(ConnectionError(f"NATS connection lost: {error!r}"))

    async def _received(self, msg: Any) -> None:
        sequence = (msg.headers or {}).get("Nats-Sequence", "")
        event_id = f"{sequence}-0" if sequence.isdigit() else ""
        data = event_id.encode() + b"\n" + msg.data
        self.put("message", msg.subject.encode(), data)

    async def subscribe(self, *subjects: bytes) -> None:
        for subject in subjects:
            if subject not in self.subscriptions:
                self.subscriptions[subject] = await self.nc.subscribe(
                    subject.decode(), cb=self._received
                )
        await self.nc.flush(self.backplane.command_timeout)  # the server has the SUBs
        for subject in subjects:
            self.put("subscribe", subject)

    async def unsubscribe(self, *subjects: bytes) -> None:
        for subject in subjects:
            subscription = self.subscriptions.pop(subject, None)
            if subscription is not None:
                await subscription.unsubscribe()
            self.put("unsubscribe", subject)

    async def ping(self) -> None:
        await self.nc.flush(self.backplane.command_timeout)
        self.put("pong", None)

    async def aclose(self) -> None:
        nc, self.nc = self.nc, None
        if nc is not None:
            await _close(nc)


class NatsBackplane(SessionBackplane):
    """The ``Backplane`` over NATS (core subjects; JetStream with ``history``)."""

    def __init__(self, url: str, *, prefix: str = "h3:", **options: Any) -> None:
        # One subject token: "h3:" becomes "h3", "app:feed:" "app-feed".
        token = re.sub(r"[^A-Za-z0-9_-]+", "-", prefix).strip("-") or "h3"
        super().__init__(url, prefix=token, **options)
        self._nats = import_optional("nats", INSTALL_HINT)
        self.stream = self.prefix + "-kept"
        self.nc: Any = None
        self.js: Any = None

    def channel(self, topic: str) -> bytes:
        return f"{self.prefix}.{subject_token(topic)}".encode()

    def kept_subject(self, topic: str) -> str:
        return f"{self.stream}.{subject_token(topic)}"

    def session(self) -> NatsSession:
        return NatsSession(self)

    async def connect(self, on_lost: Callable[..., Any] | None = None) -> Any:
        async def quiet(*args: Any) -> None:
            return None

        return await self._nats.connect(
            servers=[server.strip() for server in self.url.split(",")],
            allow_reconnect=False,
            connect_timeout=self.command_timeout,
            max_reconnect_attempts=0,
            disconnected_cb=on_lost or quiet,
            closed_cb=on_lost or quiet,
            error_cb=quiet,  # what matters ends the connection too
        )

    def start(self, receiver: BackplaneReceiver) -> None:
        self.nc = self.js = None  # a connection of an earlier loop or process is not ours
        super().start(receiver)

    async def publish(self, batch: Sequence[tuple[str, bytes]]) -> Sequence[str | Exception | None]:
        results: list[str | Exception | None] = []
        try:
            nc = await self._connection()
            js = await self._jetstream(nc) if self.history else None
            for topic, envelope in batch:
                if len(envelope) > nc.max_payload:
                    results.append(ValueError(f"publish over NATS max_payload {nc.max_payload}"))
                elif js is not None:
                    subject = self.kept_subject(topic)
                    ack = await js.publish(subject, envelope, timeout=self.command_timeout)
                    results.append(f"{ack.seq}-0")
                else:
                    await nc.publish(self.channel(topic).decode(), envelope)
                    results.append(None)
            if js is None:
                await nc.flush(self.command_timeout)  # the server has them
        except Exception:
            self.replace()
            raise
        return results

    async def read_history(self, topic: str, after: str) -> list[tuple[str, bytes]]:
        start = (parse_event_id(after) or (0, 0))[0]
        found: list[tuple[str, bytes]] = []
        try:
            js = await self._jetstream(await self._connection())
            subject = self.kept_subject(topic)
            while len(found) < self.history:
                try:
                    msg = await js.get_msg(self.stream, seq=start + 1, subject=subject, next=True)
                except self._nats.js.errors.NotFoundError:
                    break
                start = msg.seq
                found.append((f"{msg.seq}-0", msg.data or b""))
        except Exception:
            self.replace()
            raise
        return found

    async def _connection(self) -> Any:
        if self.nc is None or self.nc.is_closed:
            self.nc, self.js = await self.connect(), None
        return self.nc

    async def _jetstream(self, nc: Any) -> Any:
        """JetStream, with the history stream created (or its limit updated) once."""
        if self.js is None:
            from nats.js.api import RePublish, StreamConfig

            js = nc.jetstream(timeout=self.command_timeout)
            config = StreamConfig(
                name=self.stream,
                subjects=[self.stream + ".>"],
                max_msgs_per_subject=self.history,
                # ``history_ttl``: JetStream drops messages older than this (0: kept).
                max_age=self.history_ttl or 0,
                republish=RePublish(src=self.stream + ".>", dest=self.prefix + ".>"),
            )
            try:
                await js.add_stream(config)
            except self._nats.js.errors.BadRequestError:
                await js.update_stream(config)  # exists with other settings
            self.js = js
        return self.js

    def replace(self) -> None:
        """Drop a publishing connection that failed; the next batch opens a new one."""
        nc, self.nc, self.js = self.nc, None, None
        if nc is not None:
            spawn(_close(nc), what="closing a NATS connection")

    async def close(self) -> None:
        await self.subscriber.close()
        nc, self.nc, self.js = self.nc, None, None
        if nc is not None:
            await _close(nc)


async def _close(nc: Any) -> None:
    with contextlib.suppress(Exception):
        await nc.close()


class NatsPubSub(UrlPubSub):
    """Pub/sub across processes and hosts through NATS.

    ``url`` is a ``nats://`` URL (``tls://`` for TLS; several servers
    comma-separated are tried in turn). Topic ``t`` is the subject
    ``prefix.t``, the prefix made one subject token (``h3:`` gives ``h3``).
    ``history=N`` keeps the last N publishes of each topic in the JetStream
    stream ``prefix-kept`` for SSE replay; it needs a server with JetStream
    (``nats-server -js``). A publish over the server's
    ``max_payload`` (1 MB by default) does not cross (logged). The other
    options mean what they mean for ``RedisPubSub``.

    Each process holds one listening connection and one for publishing.
    """

    default_url = "nats://localhost:4222"
    label = "NATS backplane"

    def make_backplane(self, url: str, **options: Any) -> NatsBackplane:
        return NatsBackplane(url, **options)

    def shown(self, url: str) -> str:
        return redacted(url.split(",")[0])
