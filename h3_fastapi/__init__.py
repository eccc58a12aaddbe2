"""h3-fastapi: the h3 API for FastAPI and Starlette.

WebSockets with crossws hooks, Server-Sent Events, a streaming proxy on httpx,
and pub/sub that scales out through Redis, Redis Cluster, PostgreSQL or NATS.
"""

from . import _openapi
from ._event_stream import EventStream, EventStreamMessage, create_event_stream, event_stream
from ._guard import TargetNotAllowed
from ._headers import get_proxy_request_headers, join_proxy_path
from ._proxy import ProxyOptions, fetch_with_event, proxy, proxy_request
from ._transports import close_proxy_clients
from ._websocket_proxy import create_websocket_proxy
from .asyncapi import add_asyncapi, get_asyncapi
from .message import Message
from .nats import NatsPubSub
from .peer import CloseDetails, Peer
from .postgres import PostgresPubSub
from .pubsub import Backplane, MemoryPubSub, PubSub, publish
from .redis import RedisPubSub
from .redis_cluster import RedisClusterPubSub
from .routing import H3, H3Router, Server, serve
from .websocket import (
    WebSocketHandler,
    WSError,
    define_websocket,
    define_websocket_handler,
)

# Event-stream routes documented as text/event-stream in /openapi.json (_openapi.py).
_openapi.install()

__version__ = "0.1.0"

__all__ = [
    "H3",
    "Backplane",
    "CloseDetails",
    "EventStream",
    "EventStreamMessage",
    "H3Router",
    "MemoryPubSub",
    "Message",
    "NatsPubSub",
    "Peer",
    "PostgresPubSub",
    "ProxyOptions",
    "PubSub",
    "RedisClusterPubSub",
    "RedisPubSub",
    "Server",
    "TargetNotAllowed",
    "WSError",
    "WebSocketHandler",
    "add_asyncapi",
    "close_proxy_clients",
    "create_event_stream",
    "create_websocket_proxy",
    "define_websocket",
    "define_websocket_handler",
    "event_stream",
    "fetch_with_event",
    "get_asyncapi",
    "get_proxy_request_headers",
    "join_proxy_path",
    "proxy",
    "proxy_request",
    "publish",
    "serve",
]
