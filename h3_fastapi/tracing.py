"""OpenTelemetry tracing (the ``[otel]`` extra): ``enable_tracing()``.

What gets a span, once enabled:

- each WebSocket connection, from accept to close (``WebSocket /route``, kind
  SERVER; attribute ``websocket.close_code``), with an event per message
  received (``message.received``, size and binary). When the connection
  already runs inside a server span, e.g. opentelemetry-instrumentation-asgi's
  ``OpenTelemetryMiddleware``, that span is used instead of a second one: no
  double spans; the events and the close code go on it.
- each publish that crosses a backplane (``publish <topic>``, PRODUCER), a
  child of whatever span was current (the connection's, in a hook). Its W3C
  ``traceparent`` (and ``tracestate``) travel in the envelope's extensions; the
  process that delivers it opens ``process <topic>`` (CONSUMER) under that
  context, so a publish and its deliveries in other processes form one trace.
- each proxied request (``proxy <METHOD>``, CLIENT) until the upstream's
  headers arrive, with ``http.response.status_code``; its ``traceparent`` is
  sent upstream.

Only opentelemetry-api is needed; the application configures the SDK and its
exporters (``tracer_provider=``, or the global provider).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from ._ops import ops

__all__ = ["Tracing", "disable_tracing", "enable_tracing"]

_SCOPE = "h3_fastapi"


class _ConnectionSpan:
    """A connection's span and whether it is ours to end (not the ASGI middleware's)."""

    __slots__ = ("owned", "span")

    def __init__(self, span: Any, owned: bool) -> None:
        self.span = span
        self.owned = owned


class Tracing:
    """The tracer and the calls the core makes through ``_ops.ops.tracing``."""

    __slots__ = ("message_events", "propagator", "tracer")

    def __init__(self, tracer_provider: Any = None, *, message_events: bool = True) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as exc:
            raise ImportError(
                "tracing needs opentelemetry-api: pip install 'h3-fastapi[otel]'"
            ) from exc

        self.tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
        self.propagator = TraceContextTextMapPropagator()
        self.message_events = message_events

    # --- WebSocket connections --------------------------------------------------

    def connection_opened(self, scope: Mapping[str, Any], route: str) -> _ConnectionSpan:
        from opentelemetry import trace

        current = trace.get_current_span()
        if current.is_recording():  # the ASGI middleware's server span: use it
            return _ConnectionSpan(current, owned=False)
        span = self.tracer.start_span(
            f"WebSocket {route}",
            kind=trace.SpanKind.SERVER,
            attributes={"http.route": route, "url.path": str(scope.get("path", ""))},
        )
        return _ConnectionSpan(span, owned=True)

    def message_event(self, handle: _ConnectionSpan, name: str, size: int, binary: bool) -> None:
        if self.message_events:
            handle.span.add_event(name, {"message.size": size, "message.binary": binary})

    def connection_closed(self, handle: _ConnectionSpan, code: int) -> None:
        handle.span.set_attribute("websocket.close_code", code)
        if handle.owned:
            handle.span.end()

    def current(self, handle: _ConnectionSpan) -> Any:
        """Make the connection's span current while the connection runs."""
        from opentelemetry import trace

        return trace.use_span(handle.span, end_on_exit=False)

    # --- backplane publishes ------------------------------------------------------

    def publish_context(self, topic: str) -> dict[str, Any]:
        """A PRODUCER span for a publish; its context as envelope extensions."""
        from opentelemetry import trace

        carrier: dict[str, Any] = {}
        with self.tracer.start_as_current_span(
            f"publish {topic}",
            kind=trace.SpanKind.PRODUCER,
            attributes=_messaging(topic, "publish"),
        ):
            self.propagator.inject(carrier)
        return carrier

    @contextlib.contextmanager
    def delivery_span(self, topic: str, extensions: Mapping[str, Any]) -> Iterator[None]:
        """A CONSUMER span for a publish from another process, under the publisher's trace."""
        from opentelemetry import trace

        carrier = {k: v for k, v in extensions.items() if isinstance(v, str)}
        parent = self.propagator.extract(carrier)
        with self.tracer.start_as_current_span(
            f"process {topic}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=_messaging(topic, "process"),
        ):
            yield

    # --- proxy ------------------------------------------------------------------

    @contextlib.contextmanager
    def proxy_span(self, target: str, outgoing: Any) -> Iterator[Any]:
        """A CLIENT span until the upstream's headers; ``traceparent`` goes upstream."""
        from opentelemetry import trace

        from ._proxy import redact_url

        method = str(getattr(outgoing, "method", "GET"))
        with self.tracer.start_as_current_span(
            f"proxy {method}",
            kind=trace.SpanKind.CLIENT,
            attributes={"http.request.method": method, "url.full": redact_url(target)},
        ) as span:
            headers = getattr(outgoing, "headers", None)
            if isinstance(headers, dict):
                self.propagator.inject(headers)
            yield span

    def proxy_status(self, span: Any, status: int) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))


def _messaging(topic: str, operation: str) -> dict[str, Any]:
    return {
        "messaging.system": "h3_fastapi",
        "messaging.destination.name": topic,
        "messaging.operation.type": operation,
    }


def enable_tracing(tracer_provider: Any = None, *, message_events: bool = True) -> None:
    """Trace connections, messages, backplane publishes and proxied requests.

    ``tracer_provider``: an OpenTelemetry ``TracerProvider`` (default: the
    global one). ``message_events=False`` leaves out the event per message.
    Needs ``pip install 'h3-fastapi[otel]'``.
    """
    ops.tracing = Tracing(tracer_provider, message_events=message_events)
    ops.update()


def disable_tracing() -> None:
    """Stop tracing (spans already open end as usual)."""
    ops.tracing = None
    ops.update()
