"""Where the core reports to the optional operations features: metrics, limits, tracing.

The core calls in at a few marked points (each listed in docs/operations.md,
"Hook-in points"). Every one is behind ``ops.on`` or a connection's ``watch``
being set, so with nothing enabled a WebSocket message pays one ``is None``
check and no call.

Counting is plain integer arithmetic on slotted objects here; ``metrics.py``
turns the counts into Prometheus samples when ``/metrics`` is scraped (a custom
collector), so prometheus-client never runs on the hot path and this module
imports nothing optional. Tracing calls go to the ``Tracing`` object of
``tracing.py``, set only when tracing is enabled; rate limits to the
``PeerLimiter`` of ``limits.py``, set only on handlers given ``rate_limit=``.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from ._connection import _Connection
    from ._ordered import Publish
    from .backplane import BackplanePubSub
    from .limits import PeerLimiter, RateLimit
    from .peer import Peer
    from .pubsub import Outgoing
    from .tracing import Tracing

_Forward = TypeVar("_Forward", bound=Callable[..., Awaitable[Any]])

__all__ = [
    "BackplaneStats",
    "Counts",
    "Histogram",
    "Operations",
    "PeerWatch",
    "RouteStats",
    "ops",
    "route_of",
    "status_class",
]

# Seconds; the Prometheus client's default buckets, plus finer ones under 5 ms
# (a backplane round trip on a LAN, a proxied request to a local upstream).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Histogram:
    """Counts per bucket (``value <= bound``, last one ``+Inf``), their sum and number."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus wants them, ``+Inf`` last."""
        pairs = []
        total = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            pairs.append((bound, total))
        return pairs


class RouteStats:
    """What happened on one WebSocket route (label ``route``: its path template)."""

    __slots__ = (
        "accepted",
        "bytes_in",
        "bytes_out",
        "hook_errors",
        "limited",
        "messages_in",
        "messages_out",
        "open",
        "rejected",
        "route",
        "slow_closes",
    )

    def __init__(self, route: str) -> None:
        self.route = route
        self.open: dict[_Connection, None] = {}
        self.accepted = 0
        self.rejected: dict[str, int] = {}
        self.messages_in = 0
        self.bytes_in = 0
        self.messages_out = 0
        self.bytes_out = 0
        self.slow_closes = 0
        self.hook_errors: dict[str, int] = {}
        self.limited: dict[str, int] = {}

    def send_buffer_bytes(self) -> int:
        """Bytes queued for the open peers of this route, now."""
        return sum(connection.buffered for connection in tuple(self.open))


class BackplaneStats:
    """One backplane's connection state, reconnects and publish lag (label ``backplane``)."""

    __slots__ = ("connected", "connects", "outages", "publish_lag", "published")

    def __init__(self) -> None:
        self.connected = False
        self.connects = 0
        self.outages = 0
        self.published = 0
        self.publish_lag = Histogram()


class Counts:
    """Everything ``metrics.py`` exposes, as plain numbers."""

    __slots__ = (
        "backplanes",
        "events_pushed",
        "proxy_latency",
        "proxy_requests",
        "routes",
        "streams",
    )

    def __init__(self) -> None:
        self.routes: dict[str, RouteStats] = {}
        self.streams: dict[Any, None] = {}
        self.events_pushed = 0
        self.proxy_requests: dict[str, int] = {}
        self.proxy_latency = Histogram()
        self.backplanes: dict[str, BackplaneStats] = {}

    def route(self, route: str) -> RouteStats:
        stats = self.routes.get(route)
        if stats is None:
            stats = self.routes[route] = RouteStats(route)
        return stats

    def backplane(self, name: str) -> BackplaneStats:
        stats = self.backplanes.get(name)
        if stats is None:
            stats = self.backplanes[name] = BackplaneStats()
        return stats


def route_of(scope: Mapping[str, Any]) -> str:
    """The route's path template (``/rooms/{room}``), not the path: a bounded label."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str):
        return str(scope.get("root_path", "")) + template
    return str(scope.get("root_path", "")) + str(scope.get("path", ""))


def status_class(status: int) -> str:
    """``2xx``..``5xx`` for an upstream answer; the proxy's own failures by name."""
    return {499: "client_gone", 502: "unreachable", 504: "timeout"}.get(status, "")


def _size(data: str | bytes) -> int:
    # str.isascii() is O(1) in CPython (a flag): encode only non-ASCII text.
    if isinstance(data, str) and not data.isascii():
        return len(data.encode("utf-8", "surrogatepass"))
    return len(data)


class PeerWatch:
    """Metrics, rate limit and span of one connection: ``_Connection.watch``."""

    __slots__ = ("limiter", "span", "stats")

    def __init__(
        self, stats: RouteStats | None, limiter: PeerLimiter | None, span: Any = None
    ) -> None:
        self.stats = stats
        self.limiter = limiter
        self.span = span

    def received(self, connection: _Connection, data: str | bytes) -> bool:
        """A frame arrived; ``False`` when the rate limit drops it (or closed the peer)."""
        size = _size(data)
        stats = self.stats
        if stats is not None:
            stats.messages_in += 1
            stats.bytes_in += size
        limiter = self.limiter
        if limiter is not None and not limiter.take(size):
            action = limiter.refuse(connection.peer)
            if stats is not None:
                stats.limited[action] = stats.limited.get(action, 0) + 1
            return False
        span = self.span
        if span is not None and ops.tracing is not None:
            ops.tracing.message_event(span, "message.received", size, isinstance(data, bytes))
        return True

    def sent(self, outgoing: Outgoing) -> None:
        """A frame was queued for this peer."""
        stats = self.stats
        if stats is not None:
            stats.messages_out += 1
            stats.bytes_out += _size(outgoing.data)

    def overflowed(self) -> None:
        """The peer did not read: its send buffer is full (close 1013)."""
        if self.stats is not None:
            self.stats.slow_closes += 1

    def closed(self, connection: _Connection, code: int) -> None:
        """The peer is closed: it leaves the open count; its span ends."""
        if self.stats is not None:
            self.stats.open.pop(connection, None)
        if self.span is not None and ops.tracing is not None:
            ops.tracing.connection_closed(self.span, code)

    async def run(self, connection: _Connection) -> None:
        """``connection.run()``, with the connection's span current (hooks see it)."""
        if self.span is None or ops.tracing is None:
            await connection.run()
            return
        with ops.tracing.current(self.span):
            await connection.run()


class Operations:
    """The switchboard: ``on`` is true while metrics or tracing are enabled."""

    __slots__ = ("counts", "on", "tracing")

    def __init__(self) -> None:
        self.on = False
        self.counts: Counts | None = None
        self.tracing: Tracing | None = None

    def update(self) -> None:
        self.on = self.counts is not None or self.tracing is not None

    # --- WebSocket ------------------------------------------------------------

    def rejected(self, scope: Mapping[str, Any], reason: str) -> None:
        """A handshake refused: ``origin``, ``limit`` (max_peers), ``rate`` or ``upgrade``."""
        if self.counts is not None:
            rejected = self.counts.route(route_of(scope)).rejected
            rejected[reason] = rejected.get(reason, 0) + 1

    def watch(
        self, connection: _Connection, scope: Mapping[str, Any], rate_limit: RateLimit | None
    ) -> PeerWatch | None:
        """Start watching an accepted connection (``None`` when nothing is enabled)."""
        stats = None
        if self.counts is not None:
            stats = self.counts.route(route_of(scope))
            stats.accepted += 1
            stats.open[connection] = None
        limiter = rate_limit.peer_limiter() if rate_limit is not None else None
        span = None
        if self.tracing is not None:
            span = self.tracing.connection_opened(scope, route_of(scope))
        if stats is None and limiter is None and span is None:
            return None
        return PeerWatch(stats, limiter, span)

    def hook_failed(self, peer: Peer, hook: str) -> None:
        """A hook raised (or the transport failed: ``hook="transport"``)."""
        if self.counts is not None:
            errors = self.counts.route(route_of(peer.request.scope)).hook_errors
            errors[hook] = errors.get(hook, 0) + 1

    # --- event streams ----------------------------------------------------------

    def stream_opened(self, stream: Any) -> None:
        if self.counts is not None:
            self.counts.streams[stream] = None

    def stream_closed(self, stream: Any) -> None:
        if self.counts is not None:
            self.counts.streams.pop(stream, None)

    def pushed(self, message: Any) -> None:
        """``stream.push(message)``: a list is several events."""
        if self.counts is not None:
            self.counts.events_pushed += len(message) if isinstance(message, list) else 1

    # --- proxy ------------------------------------------------------------------

    def observe_proxy(self, forward: _Forward) -> _Forward:
        """Wrap the proxy's ``_forward``: time to headers, status class, a client span."""

        async def observed(request: Any, target: str, outgoing: Any, *args: Any) -> Any:
            if not self.on:
                return await forward(request, target, outgoing, *args)
            started = time.perf_counter()
            tracing = self.tracing
            if tracing is None:
                response = await forward(request, target, outgoing, *args)
            else:
                with tracing.proxy_span(target, outgoing) as span:
                    response = await forward(request, target, outgoing, *args)
                    tracing.proxy_status(span, response.status_code)
            if self.counts is not None:
                from ._proxy import ProxyResponse

                status = response.status_code
                upstream = isinstance(response, ProxyResponse)
                label = (not upstream and status_class(status)) or f"{status // 100}xx"
                requests = self.counts.proxy_requests
                requests[label] = requests.get(label, 0) + 1
                self.counts.proxy_latency.observe(time.perf_counter() - started)
            return response

        return cast("_Forward", observed)

    # --- backplanes ---------------------------------------------------------------

    def backplane_up(self, pubsub: BackplanePubSub) -> None:
        if self.counts is not None:
            stats = self.counts.backplane(pubsub.name)
            stats.connected = True
            stats.connects += 1

    def backplane_down(self, pubsub: BackplanePubSub) -> None:
        if self.counts is not None:
            stats = self.counts.backplane(pubsub.name)
            if stats.connected:
                stats.outages += 1
            stats.connected = False

    def publishing(self, item: Publish) -> None:
        """A publish is queued for the backplane: stamp it, carry the trace context."""
        item.started = time.perf_counter()
        if self.tracing is not None:
            item.extensions = self.tracing.publish_context(item.topic)

    def published(self, pubsub: BackplanePubSub, items: list[Publish]) -> None:
        """The backplane took ``items``: their lag is the wait since ``publish()``."""
        if self.counts is None:
            return
        stats = self.counts.backplane(pubsub.name)
        now = time.perf_counter()
        for item in items:
            if item.started:
                stats.published += 1
                stats.publish_lag.observe(now - item.started)

    def delivered(
        self,
        pubsub: BackplanePubSub,
        topic: str,
        outgoing: Outgoing,
        namespace: str | None,
        extensions: Mapping[str, Any],
    ) -> None:
        """A publish from another process: deliver it under its trace context."""
        if self.tracing is None:
            pubsub.deliver_local(topic, outgoing, namespace)
            return
        with self.tracing.delivery_span(topic, extensions):
            pubsub.deliver_local(topic, outgoing, namespace)


#: The one instance the core's hook-in points look at.
ops = Operations()
