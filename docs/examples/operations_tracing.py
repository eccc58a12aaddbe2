"""Operations: OpenTelemetry tracing beside the ASGI instrumentation (docs/operations.md)."""

from __future__ import annotations

# --8<-- [start:app]
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from h3_fastapi import H3Router, Message, Peer, disable_tracing, enable_tracing

# In production: BatchSpanProcessor(OTLPSpanExporter()) from opentelemetry-exporter-otlp.
exporter = ConsoleSpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    enable_tracing(provider)  # connections, messages, publishes, proxied requests
    yield
    disable_tracing()


h3 = H3Router()


@h3.ws("/chat")
class Chat:
    def open(self, peer: Peer) -> None:
        peer.subscribe("chat")

    def message(self, peer: Peer, message: Message) -> None:
        peer.publish("chat", message.text())  # traceparent rides along to other processes


fastapi_app = FastAPI(lifespan=lifespan)
fastapi_app.include_router(h3)
# The ASGI instrumentation's server span becomes the connection's span: no second one.
app = OpenTelemetryMiddleware(fastapi_app, tracer_provider=provider)
# --8<-- [end:app]
