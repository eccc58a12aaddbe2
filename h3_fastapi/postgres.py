"""PostgreSQL backplane: ``PostgresPubSub`` over ``LISTEN``/``NOTIFY`` (asyncpg).

For apps that already run PostgreSQL and want no other server. Why asyncpg
rather than psycopg 3: on one core it moved about 8,000 NOTIFYs a second from
one process to another at 55 µs of CPU each, psycopg 3 about 3,500 at 175 µs.

Timeouts: ``command_timeout`` bounds connecting and the health check of the
listening connection, not each publish (nor connecting the publishing one,
which happens on the first publish, often in a burst: 60 s). A process busy writing to thousands
of sockets can leave a finished round trip unread for seconds, and a client
timeout would then report an outage that is not one (it did, in the 200 x 50
test). A PostgreSQL that stops answering is noticed by the health check; the
publishing connection is dropped with the listening one, which fails what
waits on it.

The listening connection (one per process) is run by the same subscriber
session as Redis (``_redis_subscriber.RedisSubscriber``: backoff, health
checks, resubscribing); ``ListenSession`` here is what it drives instead of a
Redis ``PubSub``. Publishes go through a second connection.

NOTIFY carries text under 8,000 bytes and drops identical notifications sent
in one transaction, so the payload is ``nonce [event id] "\\n" kind body``:

- ``t``: the envelope itself (UTF-8 without NUL bytes, which text can carry),
- ``b``: the envelope in base64 (binary data),
- ``r``: the id of a row of the ``table`` holding the envelope, for one that
  does not fit. The receiver reads the row before what follows it, so order
  holds. Rows of such spilled publishes are deleted after a minute.

With ``history=N`` every publish is a row of ``table`` (its id, ``<id>-0``, is
the event id) and the NOTIFY is sent by the same statement; each topic keeps
about its last N rows.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
from collections.abc import Sequence
from typing import Any

from ._session import QueuedSession, SessionBackplane, import_optional
from ._url_pubsub import UrlPubSub
from .pubsub import BackplaneReceiver, parse_event_id

__all__ = ["INSTALL_HINT", "ListenSession", "PostgresBackplane", "PostgresPubSub"]

INSTALL_HINT = "PostgresPubSub needs asyncpg: pip install 'h3-fastapi[postgres]'"

# NOTIFY refuses payloads of 8000 bytes or more; leave room for the header.
INLINE_LIMIT = 7900
# Channel names are identifiers: at most 63 bytes.
MAX_CHANNEL = 63
SPILL_TTL = "60 seconds"


class ListenSession(QueuedSession):
    """One listening connection, as ``RedisSubscriber`` drives a Redis ``PubSub``.

    ``subscribe`` LISTENs, ``get_message`` gives notifications as
    ``event_id "\\n" envelope`` (reading spilled rows on the way), ``ping``
    runs ``SELECT 1``. One lock keeps the connection to one query at a time.
    """

    def __init__(self, backplane: PostgresBackplane) -> None:
        super().__init__()
        self.backplane = backplane
        self.conn: Any = None
        self.lock = asyncio.Lock()

    async def connect(self) -> None:
        self.conn = await self.backplane.connect()
        self.conn.add_termination_listener(self._terminated)

    def _terminated(self, conn: Any) -> None:
        self.fail(ConnectionError("PostgreSQL closed the listening connection"))

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self.put("message", channel.encode(), payload)

    async def subscribe(self, *channels: bytes) -> None:
        for channel in channels:
            async with self.lock:
                await self.conn.add_listener(channel.decode(), self._notified)
            self.put("subscribe", channel)

    async def unsubscribe(self, *channels: bytes) -> None:
        for channel in channels:
            async with self.lock:
                await self.conn.remove_listener(channel.decode(), self._notified)

    async def ping(self) -> None:
        async with self.lock:
            await self.conn.fetchval("SELECT 1", timeout=self.backplane.command_timeout)
        self.put("pong", None)

    async def get_message(self, timeout: float | None = None) -> dict[str, Any]:
        item = await super().get_message()
        if item["type"] == "message":
            item["data"] = await self._unwrap(item["data"])
        return item

    async def _unwrap(self, payload: str) -> bytes:
        """A NOTIFY payload -> ``event_id "\\n" envelope``, or itself if malformed."""
        header, _, rest = payload.partition("\n")
        event_id = header.partition(" ")[2]
        kind, body = rest[:1], rest[1:]
        if kind == "t":
            envelope = body.encode("utf-8", "surrogatepass")
        elif kind == "b":
            envelope = base64.b64decode(body)
        elif kind == "r" and body.isdigit():
            async with self.lock:
                row = await self.conn.fetchval(self.backplane.sql_row, int(body))
            if row is None:
                return b"spilled row gone"  # reported as malformed by the session
            envelope = bytes(row)
        else:
            return payload.encode("utf-8", "replace")
        return event_id.encode() + b"\n" + envelope

    async def aclose(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), self.backplane.command_timeout)
            conn.terminate()


class PostgresBackplane(SessionBackplane):
    """The ``Backplane`` over PostgreSQL ``LISTEN``/``NOTIFY``."""

    def __init__(self, url: str, *, table: str = "h3_pubsub", **options: Any) -> None:
        super().__init__(url, **options)
        self._asyncpg = import_optional("asyncpg", INSTALL_HINT)
        if not table.replace("_", "").isalnum():
            raise ValueError("table must be letters, digits and underscores")
        self.table = table
        self.sql_row = f"SELECT envelope FROM {table} WHERE id = $1"
        self.conn: Any = None
        self._nonce = itertools.count()
        self._table_ready = False
        self._published = 0

    def channel(self, topic: str) -> bytes:
        name = (self.prefix + topic).encode("utf-8", "surrogatepass")
        if len(name) <= MAX_CHANNEL and b"\x00" not in name:
            return name
        return (self.prefix + "#" + hashlib.sha1(name).hexdigest()).encode()

    def session(self) -> ListenSession:
        return ListenSession(self)

    async def connect(self, timeout: float | None = None) -> Any:
        return await self._asyncpg.connect(self.url, timeout=timeout or self.command_timeout)

    def start(self, receiver: BackplaneReceiver) -> None:
        self.conn = None  # a connection of an earlier loop or process is not ours
        super().start(receiver)

    async def publish(self, batch: Sequence[tuple[str, bytes]]) -> Sequence[str | Exception | None]:
        try:
            conn = await self._connection()
            if self.history:
                return [await self._publish_kept(conn, t, e) for t, e in batch]
            channels, payloads = [], []
            for topic, envelope in batch:
                body = _inline(envelope) or "r" + str(await self._spill(conn, topic, envelope))
                channels.append(self.channel(topic).decode())
                payloads.append(f"{next(self._nonce)}\n{body}")
            await conn.execute(
                "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS x(c, p)",
                channels,
                payloads,
            )
        except Exception:
            self.replace()
            raise
        return [None] * len(batch)

    async def _publish_kept(self, conn: Any, topic: str, envelope: bytes) -> str:
        channel = self.channel(topic).decode()
        await self._create_table(conn)
        row_id = await conn.fetchval(
            f"WITH r AS (INSERT INTO {self.table} (channel, envelope) VALUES ($1, $2) "
            "RETURNING id) SELECT r.id, "
            "pg_notify($1, '0 ' || r.id || '-0' || chr(10) || coalesce($3, 'r' || r.id)) FROM r",
            channel,
            envelope,
            _inline(envelope),
        )
        self._published += 1
        if self._published % 32 == 0:  # keep about the last ``history`` rows per topic
            await conn.execute(
                f"DELETE FROM {self.table} WHERE channel = $1 AND id < (SELECT min(id) FROM "
                f"(SELECT id FROM {self.table} WHERE channel = $1 ORDER BY id DESC LIMIT $2) k)",
                channel,
                self.history,
            )
            if self.history_ttl:  # and nothing older than ``history_ttl``, on any topic
                await conn.execute(
                    f"DELETE FROM {self.table} WHERE at < now() - $1 * interval '1 second'",
                    float(self.history_ttl),
                )
        return f"{row_id}-0"

    async def _spill(self, conn: Any, topic: str, envelope: bytes) -> int:
        await self._create_table(conn)
        row_id: int = await conn.fetchval(
            f"INSERT INTO {self.table} (channel, envelope) VALUES ($1, $2) RETURNING id",
            self.channel(topic).decode(),
            envelope,
        )
        await conn.execute(
            f"DELETE FROM {self.table} WHERE at < now() - interval '{SPILL_TTL}'",
        )
        return row_id

    async def read_history(self, topic: str, after: str) -> list[tuple[str, bytes]]:
        start = parse_event_id(after) or (0, 0)
        try:
            conn = await self._connection()
            await self._create_table(conn)
            rows = await conn.fetch(
                f"SELECT id, envelope FROM {self.table} WHERE channel = $1 AND id > $2 "
                "ORDER BY id DESC LIMIT $3",
                self.channel(topic).decode(),
                min(start[0], 2**63 - 1),
                self.history,
            )
        except Exception:
            self.replace()
            raise
        return [(f"{row['id']}-0", bytes(row["envelope"])) for row in reversed(rows)]

    async def _connection(self) -> Any:
        if self.conn is None:  # made on the first publish, maybe in a burst: see above
            self.conn = await self.connect(timeout=max(60.0, self.command_timeout))
        return self.conn

    async def _create_table(self, conn: Any) -> None:
        """The table for spilled publishes and history, on first need."""
        if self._table_ready:
            return
        errors = self._asyncpg.exceptions
        raced: tuple[type[Exception], ...] = (errors.UniqueViolationError,)
        raced += (errors.DuplicateTableError, errors.DuplicateObjectError)
        try:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} (id bigserial PRIMARY KEY, "
                "channel text NOT NULL, envelope bytea NOT NULL, at timestamptz DEFAULT now()); "
                f"CREATE INDEX IF NOT EXISTS {self.table}_channel ON {self.table} (channel, id)"
            )
        except raced:
            pass  # another process created it at the same moment
        self._table_ready = True

    def replace(self) -> None:
        """Drop a publishing connection that failed; the next batch opens a new one."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        await self.subscriber.close()
        self.replace()


def _inline(envelope: bytes) -> str | None:
    """The envelope as NOTIFY text (``t...`` or ``b...``), or ``None`` if it does not fit."""
    if len(envelope) < INLINE_LIMIT and b"\x00" not in envelope:
        try:
            return "t" + envelope.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if len(envelope) * 4 // 3 + 4 < INLINE_LIMIT:
        return "b" + base64.b64encode(envelope).decode()
    return None


class PostgresPubSub(UrlPubSub):
    """Pub/sub across processes and hosts through PostgreSQL ``LISTEN``/``NOTIFY``.

    ``url`` is a ``postgresql://`` URL as asyncpg takes it. Topic ``t`` is the
    channel ``prefix + t`` (a hash of it when over 63 bytes). Publishes too
    large for NOTIFY (about 7.9 kB) are written to ``table`` and only the row
    id is notified, so any size crosses; with ``history=N`` every publish is
    a row of ``table``, which gives SSE replay. The table is created on first
    use (the database user needs ``CREATE`` then). The other options mean
    what they mean for ``RedisPubSub``.

    Each process holds one listening connection and one for publishing.
    """

    default_url = "postgresql://localhost/postgres"
    label = "PostgreSQL backplane"

    def make_backplane(self, url: str, **options: Any) -> PostgresBackplane:
        return PostgresBackplane(url, **options)
