"""Prometheus metrics (the ``[metrics]`` extra): ``app.mount("/metrics", metrics_app())``.

The core counts in plain integers (``_ops.py``) only once metrics are enabled;
this module is the collector that turns those counts into samples when
``/metrics`` is scraped. So prometheus-client is imported only here, and never
runs on the hot path: enabled, a WebSocket message costs two integer additions.

Each number is this process's. With ``uvicorn --workers N`` every worker counts
its own; scrape each worker (one port per process), as Prometheus's
multiprocess mode does not take custom collectors.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from typing import Any

from ._ops import Counts, Histogram, RouteStats, ops

__all__ = ["H3Collector", "disable_metrics", "enable_metrics", "metrics_app"]

_registered: dict[int, Any] = {}  # id(registry) -> its H3Collector

_WS = "h3_websocket_"

# Counters per route: (metric name without _total, RouteStats field, help).
_TRAFFIC = (
    ("messages_received", "messages_in", "Frames received from peers."),
    ("received_bytes", "bytes_in", "Bytes received from peers (UTF-8 for text)."),
    ("messages_sent", "messages_out", "Frames queued to peers (sends and publishes)."),
    ("sent_bytes", "bytes_out", "Bytes queued to peers (UTF-8 for text)."),
    ("slow_peer_closes", "slow_closes", "Peers closed 1013: send buffer full."),
)


def _per_route(routes: list[RouteStats], family: Any, value: Callable[[RouteStats], Any]) -> Any:
    for stats in routes:
        family.add_metric([stats.route], value(stats))
    return family


def _per_key(routes: list[RouteStats], family: Any, field: str) -> Any:
    """One sample per route and key of the dict ``field`` (reason, hook, action)."""
    for stats in routes:
        for key, count in sorted(getattr(stats, field).items()):
            family.add_metric([stats.route, key], count)
    return family


class H3Collector:
    """A prometheus-client collector over ``_ops.Counts`` (see docs/operations.md)."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    def describe(self) -> list[Any]:
        # Empty: the registry then calls collect() to learn the names, which
        # works whatever has been counted so far.
        return []

    def collect(self) -> Iterator[Any]:
        yield from self._websocket()
        yield from self._websocket_traffic()
        yield from self._event_streams()
        yield from self._proxy()
        yield from self._backplanes()

    def _websocket(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        routes = list(self.counts.routes.values())
        route = ["route"]
        yield _per_route(
            routes,
            GaugeMetricFamily(_WS + "peers", "Open WebSocket peers.", labels=route),
            lambda s: len(s.open),
        )
        yield _per_route(
            routes,
            CounterMetricFamily(_WS + "connections_accepted", "Handshakes accepted.", labels=route),
            lambda s: s.accepted,
        )
        yield _per_key(
            routes,
            CounterMetricFamily(
                _WS + "connections_rejected",
                "Handshakes refused, by reason: origin (403), limit (max_peers, 503), "
                "rate (connections per address, 429), upgrade (the upgrade hook).",
                labels=["route", "reason"],
            ),
            "rejected",
        )
        yield _per_route(
            routes,
            GaugeMetricFamily(
                _WS + "send_buffer_bytes",
                "Bytes queued for open peers, not yet handed to the server.",
                labels=route,
            ),
            lambda s: s.send_buffer_bytes(),
        )

    def _websocket_traffic(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        routes = list(self.counts.routes.values())
        for name, field, text in _TRAFFIC:
            yield _per_route(
                routes,
                CounterMetricFamily(_WS + name, text, labels=["route"]),
                operator.attrgetter(field),
            )
        yield _per_key(
            routes,
            CounterMetricFamily(
                _WS + "hook_errors",
                "Hooks that raised, by hook (transport: the connection failed).",
                labels=["route", "hook"],
            ),
            "hook_errors",
        )
        yield _per_key(
            routes,
            CounterMetricFamily(
                _WS + "rate_limited",
                "Frames over the rate limit, by action (dropped, closed).",
                labels=["route", "action"],
            ),
            "limited",
        )

    def _event_streams(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(
            "h3_event_streams_open", "Open Server-Sent Event streams.", len(self.counts.streams)
        )
        yield CounterMetricFamily(
            "h3_event_stream_events",
            "Events pushed to event streams (push and publishes).",
            self.counts.events_pushed,
        )

    def _proxy(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        requests = CounterMetricFamily(
            "h3_proxy_requests",
            "Proxied requests by upstream status class (2xx..5xx), or unreachable "
            "(502), timeout (504), client_gone (499).",
            labels=["status_class"],
        )
        for label, count in sorted(self.counts.proxy_requests.items()):
            requests.add_metric([label], count)
        yield requests
        yield _histogram(
            "h3_proxy_request_duration_seconds",
            "Seconds until the upstream's response headers (or the failure).",
            [],
            [((), self.counts.proxy_latency)],
        )

    def _backplanes(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        backplanes = sorted(self.counts.backplanes.items())
        label = ["backplane"]
        connected = GaugeMetricFamily(
            "h3_backplane_connected", "1 while the listening connection is up.", labels=label
        )
        reconnects = CounterMetricFamily(
            "h3_backplane_reconnects", "Listening connections made after the first.", labels=label
        )
        outages = CounterMetricFamily(
            "h3_backplane_outages", "Listening connections lost.", labels=label
        )
        for name, stats in backplanes:
            connected.add_metric([name], 1 if stats.connected else 0)
            reconnects.add_metric([name], max(0, stats.connects - 1))
            outages.add_metric([name], stats.outages)
        yield connected
        yield reconnects
        yield outages
        yield _histogram(
            "h3_backplane_publish_lag_seconds",
            "Seconds from publish() until the backplane took the publish.",
            label,
            [((name,), stats.publish_lag) for name, stats in backplanes],
        )


def _histogram(
    name: str, text: str, labels: list[str], series: list[tuple[tuple[str, ...], Histogram]]
) -> Any:
    from prometheus_client.core import HistogramMetricFamily

    family = HistogramMetricFamily(name, text, labels=labels)
    for values, histogram in series:
        family.add_metric(list(values), histogram.cumulative(), histogram.sum)
    return family


def enable_metrics(registry: Any = None) -> None:
    """Start counting and register the collector (default: prometheus-client's ``REGISTRY``).

    Idempotent. Needs ``pip install 'h3-fastapi[metrics]'``.
    """
    try:
        from prometheus_client import REGISTRY
    except ImportError as exc:
        raise ImportError(
            "metrics need prometheus-client: pip install 'h3-fastapi[metrics]'"
        ) from exc

    registry = REGISTRY if registry is None else registry
    if ops.counts is None:
        ops.counts = Counts()
        ops.update()
    if id(registry) not in _registered:
        collector = H3Collector(ops.counts)
        registry.register(collector)
        _registered[id(registry)] = collector
    else:
        _registered[id(registry)].counts = ops.counts


def disable_metrics() -> None:
    """Stop counting; the next ``enable_metrics`` starts from zero."""
    ops.counts = None
    ops.update()


def metrics_app(registry: Any = None) -> Any:
    """An ASGI app serving the metrics in Prometheus's text format; enables them.

    ``app.mount("/metrics", metrics_app())``. ``registry`` defaults to
    prometheus-client's ``REGISTRY`` (so process and Python metrics come too).
    """
    enable_metrics(registry)
    from prometheus_client import REGISTRY, make_asgi_app

    return make_asgi_app(REGISTRY if registry is None else registry)
