"""Rate limits for WebSocket routes: per peer messages and bytes, per client connections.

``rate_limit=RateLimit(...)`` on ``define_websocket_handler`` / ``H3Router.ws``.
Each limit is a token bucket: it refills at ``*_per_second`` and holds at most
its burst, so short bursts pass and a sustained flood is cut to the rate.

- Per peer, checked for each received frame before the ``message`` hook runs:
  an over-limit frame is dropped (``on_exceed="drop"``; the peer is sent
  ``notice`` once per run of drops, when given) or the peer is closed with 1008
  (``on_exceed="close"``). A dropped frame costs a bucket check, never a hook
  call, so a flooding client cannot make the loop run its hooks.
- Per client address, checked on the upgrade before any hook runs: over
  ``connections_per_minute`` the handshake is refused with 429 and
  ``Retry-After``. The address is ``request.client.host`` (behind a proxy, run
  uvicorn with ``--proxy-headers`` so it is the client's).

One ``RateLimit`` object keeps the per-address buckets: give the same object
to several routes and they share the connection budget. The budget is per
process.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse, Response

from .peer import Peer

__all__ = ["PeerLimiter", "RateLimit", "TokenBucket"]

# Buckets of idle addresses are dropped when the table grows past this.
MAX_ADDRESSES = 10_000


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` held; starts full."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def take(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens if there are that many (a larger amount needs a full bucket)."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        self.stamp = now
        amount = min(amount, self.capacity)
        if tokens >= amount:
            self.tokens = tokens - amount
            return True
        self.tokens = tokens
        return False

    def wait(self, amount: float = 1.0) -> float:
        """Seconds until ``amount`` tokens are there."""
        return max(0.0, (min(amount, self.capacity) - self.tokens) / self.rate)

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.capacity


class RateLimit:
    """Limits for one or more WebSocket routes; every one is optional.

    ``message_burst``/``byte_burst`` default to one second's worth (at least
    one message, or the largest frame you expect: a frame bigger than the
    byte burst passes only when the bucket is full). ``connection_burst``
    defaults to ``connections_per_minute / 6`` (ten seconds' worth), at least 1.
    """

    __slots__ = (
        "_addresses",
        "byte_burst",
        "bytes_per_second",
        "connection_burst",
        "connections_per_minute",
        "message_burst",
        "messages_per_second",
        "notice",
        "on_exceed",
    )

    def __init__(
        self,
        *,
        messages_per_second: float | None = None,
        message_burst: float | None = None,
        bytes_per_second: float | None = None,
        byte_burst: float | None = None,
        on_exceed: Literal["drop", "close"] = "drop",
        notice: Any = None,
        connections_per_minute: float | None = None,
        connection_burst: float | None = None,
    ) -> None:
        if on_exceed not in ("drop", "close"):
            raise ValueError(f"on_exceed must be 'drop' or 'close', not {on_exceed!r}")
        self.messages_per_second = messages_per_second
        self.message_burst = message_burst or max(1.0, messages_per_second or 0)
        self.bytes_per_second = bytes_per_second
        self.byte_burst = byte_burst or bytes_per_second or 0
        self.on_exceed = on_exceed
        self.notice = notice
        self.connections_per_minute = connections_per_minute
        self.connection_burst = connection_burst or max(1.0, (connections_per_minute or 0) / 6)
        self._addresses: dict[str, TokenBucket] = {}

    def peer_limiter(self) -> PeerLimiter | None:
        """The buckets of one new peer (``None`` without per-peer limits)."""
        if self.messages_per_second is None and self.bytes_per_second is None:
            return None
        return PeerLimiter(self)

    def admit(self, connection: HTTPConnection) -> Response | None:
        """``None`` to go on with the upgrade; a 429 when its address is over the limit."""
        per_minute = self.connections_per_minute
        if per_minute is None:
            return None
        client = connection.client
        address = client.host if client is not None else ""
        now = time.monotonic()
        bucket = self._addresses.get(address)
        if bucket is None:
            if len(self._addresses) >= MAX_ADDRESSES:
                self._forget_idle(now)
            bucket = self._addresses[address] = TokenBucket(
                per_minute / 60, self.connection_burst, now
            )
        if bucket.take(1, now):
            return None
        return PlainTextResponse(
            "Too Many Requests",
            status_code=429,
            headers={"retry-after": str(math.ceil(bucket.wait()))},
        )

    def _forget_idle(self, now: float) -> None:
        """Drop the buckets that have refilled: those addresses start afresh anyway."""
        self._addresses = {a: b for a, b in self._addresses.items() if not b.full(now)}


class PeerLimiter:
    """The message and byte buckets of one peer (``_Connection.watch.limiter``)."""

    __slots__ = ("bytes", "dropping", "limit", "messages")

    def __init__(self, limit: RateLimit) -> None:
        now = time.monotonic()
        self.limit = limit
        self.messages = (
            None
            if limit.messages_per_second is None
            else TokenBucket(limit.messages_per_second, limit.message_burst, now)
        )
        self.bytes = (
            None
            if limit.bytes_per_second is None
            else TokenBucket(limit.bytes_per_second, limit.byte_burst, now)
        )
        self.dropping = False

    def take(self, size: int) -> bool:
        """Room for one frame of ``size`` bytes? Takes from both buckets only if both have it."""
        now = time.monotonic()
        messages = self.messages
        bytes_ = self.bytes
        if messages is not None and not messages.take(1, now):
            return False
        if bytes_ is not None and not bytes_.take(size, now):
            if messages is not None:
                messages.tokens += 1  # not taken after all
            return False
        self.dropping = False
        return True

    def refuse(self, peer: Peer) -> str:
        """Act on a frame over the limit; the action taken (``dropped``/``closed``)."""
        if self.limit.on_exceed == "close":
            peer.close(1008, "rate limit exceeded")
            return "closed"
        if not self.dropping:
            self.dropping = True
            if self.limit.notice is not None:
                peer.send(self.limit.notice)
        return "dropped"
