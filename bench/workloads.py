"""The eight workloads, their variants (this library and its anchors) and targets.

Each measurement starts a fresh server for one variant, runs one load
generator against it and returns the load generator's result plus the
server's CPU and memory. ``value`` is the headline number of a sample. The last
workload, the server matrix, reruns echo, broadcast and SSE on every ASGI server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .harness import (
    LOAD_CORE,
    LOAD_DIR,
    NODE_DIR,
    SERVER_CORE,
    BenchError,
    ServerSpec,
    pin_tree,
    prime,
    run_load,
    serve,
    tree_cpu_seconds,
)

WS_APPS = "bench.servers.websocket_apps"
SSE_APP = "bench.servers.sse_apps:app"
PROXY_APP = "bench.servers.proxy_apps:app"


def _node_anchors() -> bool:
    return (NODE_DIR / "node_modules" / "h3").exists()


@dataclass(frozen=True)
class Variant:
    """One implementation under test: a server and the route it serves the workload on."""

    key: str
    label: str
    server: ServerSpec | None
    path: str
    available: Callable[[], bool] = lambda: True
    #: Why the variant is skipped when ``available()`` is false (shown in the table).
    unavailable: str = "not available yet"


@dataclass(frozen=True)
class Case:
    """One size of a workload (``10 streams``, ``1 KiB``...) and its load arguments."""

    key: str
    args: dict[str, Any]
    quick_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """A goal from an issue (7; 12 and 13 for typed and threadpool echo, typed SSE),
    checked on the medians of one run of the bench.

    ``kind="ratio"``: ``variant / anchor`` of ``metric`` compared with ``bound``.
    ``kind="difference"``: ``variant - anchor`` (KiB per idle peer).
    """

    text: str
    case: str
    variant: str
    anchor: str
    bound: float
    op: str = ">="
    metric: str = "value"
    kind: str = "ratio"


@dataclass
class Settings:
    """Durations and sizes for one invocation (``--quick`` shortens them)."""

    quick: bool = False
    profile: str | None = None

    @property
    def warmup(self) -> float:
        return 0.5 if self.quick else 1.0

    @property
    def seconds(self) -> float:
        return 1.5 if self.quick else 3.0


@dataclass
class Workload:
    """A workload: what to measure, on which variants, against which targets."""

    key: str
    title: str
    unit: str
    higher_is_better: bool
    variants: list[Variant]
    cases: list[Case]
    targets: list[Target]
    measure: Callable[[Workload, Variant, Case, Settings, dict[str, Any]], dict[str, Any]]
    describe: str = ""
    # The variant every row is compared with instead of h3-fastapi (the server matrix).
    anchor: str | None = None
    context: Callable[[], contextlib.AbstractContextManager[dict[str, Any]]] = lambda: (
        contextlib.nullcontext({})
    )

    def case_args(self, case: Case, settings: Settings) -> dict[str, Any]:
        return {**case.args, **(case.quick_args if settings.quick else {})}


def _profiler(settings: Settings, workload: Workload, variant: Variant, case: Case) -> Any:
    if settings.profile is None or variant.server is None or variant.server.kind != "python":
        return None
    if settings.profile not in (variant.key, "all"):
        return None
    from .harness import RESULTS, Profiler

    name = f"{workload.key}-{case.key}-{variant.key}".replace(" ", "_")
    return Profiler(RESULTS / "profiles" / f"{name}.speedscope.json")


# --- 1. WebSocket echo -------------------------------------------------------------


def _measure_echo(
    workload: Workload, variant: Variant, case: Case, settings: Settings, ctx: dict[str, Any]
) -> dict[str, Any]:
    assert variant.server is not None
    args = workload.case_args(case, settings)
    with serve(variant.server) as server:
        load = {"url": server.url(variant.path, "ws"), "warmup": settings.warmup}
        load["seconds"] = settings.seconds
        return run_load(
            "ws_echo.mjs",
            {**load, **args},
            server,
            timeout=60,
            profiler=_profiler(settings, workload, variant, case),
        )


def _ws(key: str, label: str, app: str, path: str) -> Variant:
    return Variant(key, label, ServerSpec("python", f"{WS_APPS}:{app}"), path)


# h3-fastapi's uvicorn WebSocket protocol (``uvicorn --ws ...``), same loop and parser.
H3_WS = "h3_fastapi.uvicorn_protocol:WebSocketProtocol"


def _ws_h3_protocol(key: str, label: str, app: str, path: str) -> Variant:
    """``app`` on uvicorn with h3-fastapi's WebSocket protocol instead of websockets-sansio."""
    spec = ServerSpec("python", f"{WS_APPS}:{app}", stack=("uvloop", "httptools", H3_WS))
    return Variant(key, label, spec, path)


def _ws_metrics(path: str) -> Variant:
    """The h3-fastapi app with metrics enabled (``metrics_app()`` mounted): their cost."""
    spec = ServerSpec("python", f"{WS_APPS}:h3", env=(("H3_BENCH_METRICS", "1"),))
    return Variant("h3-fastapi-metrics", "h3-fastapi, metrics on", spec, path)


def _ws_node(path: str) -> Variant:
    spec = ServerSpec("node", "ws_server.mjs")
    return Variant("node-h3", "h3 v2 + crossws (Node)", spec, path, _node_anchors)


ECHO = Workload(
    key="echo",
    title="WebSocket echo, 100 connections ping-pong",
    unit="messages/s",
    higher_is_better=True,
    variants=[
        _ws("h3-fastapi", "h3-fastapi (FastAPI app, H3Router.ws)", "h3", "/echo"),
        _ws_metrics("/echo"),
        _ws("h3-starlette", "h3-fastapi handler on a Starlette app", "h3_starlette", "/echo"),
        _ws("starlette", "raw Starlette", "starlette", "/echo"),
        _ws("fastapi", "FastAPI @app.websocket", "fastapi", "/echo"),
        _ws_node("/echo"),
        # Issue 13: where a plain ``def`` hook runs (h3-fastapi above is ``async def``).
        _ws("h3-threadpool", "h3-fastapi def hook, threadpool (default)", "h3", "/echo-threadpool"),
        _ws("h3-loop", 'h3-fastapi def hook, sync_hooks="loop"', "h3", "/echo-loop"),
        _ws_h3_protocol("h3-fastapi-h3ws", "h3-fastapi, h3 uvicorn protocol", "h3", "/echo"),
        _ws_h3_protocol(
            "starlette-h3ws", "raw Starlette, h3 uvicorn protocol", "starlette", "/echo"
        ),
    ],
    cases=[Case("100 connections", {"connections": 100, "size": 32})],
    targets=[
        Target(
            "echo, metrics on >= 0.95x metrics off",
            "100 connections",
            "h3-fastapi-metrics",
            "h3-fastapi",
            0.95,
        ),
        Target("echo >= 0.95x raw Starlette", "100 connections", "h3-fastapi", "starlette", 0.95),
        # Issue 19: through FastAPI, ahead of raw Starlette and of FastAPI's own endpoint.
        Target("echo >= 1.0x raw Starlette", "100 connections", "h3-fastapi", "starlette", 1.0),
        Target(
            "echo >= 1.0x FastAPI @app.websocket", "100 connections", "h3-fastapi", "fastapi", 1.0
        ),
        Target(
            "echo >= 0.95x raw Starlette (both on Starlette)",
            "100 connections",
            "h3-starlette",
            "starlette",
            0.95,
        ),
        # On the fastest server (h3-fastapi's uvicorn protocol, serve()'s default).
        Target(
            "echo, h3 protocol >= 0.8x h3 on Node",
            "100 connections",
            "h3-fastapi-h3ws",
            "node-h3",
            0.8,
        ),
        Target(
            "echo, h3 protocol >= 1.0x raw Starlette on it",
            "100 connections",
            "h3-fastapi-h3ws",
            "starlette-h3ws",
            1.0,
        ),
        Target(
            "echo, def hook in the threadpool >= 0.7x async def hook",
            "100 connections",
            "h3-threadpool",
            "h3-fastapi",
            0.7,
        ),
    ],
    measure=_measure_echo,
    describe=(
        "100 clients each send a 32-byte text message and send the next one when the echo"
        " arrives; round trips per second over the window. h3-fastapi's hook is"
        " `async def message(...): await peer.send(...)`; the two `def` lines send without"
        " awaiting, from the threadpool (the default) or on the event loop"
        ' (`sync_hooks="loop"`).'
    ),
)


# --- 1b. Typed (validated) WebSocket echo --------------------------------------------


ECHO_JSON = Workload(
    key="echo-json",
    title="Typed WebSocket echo, 100 connections ping-pong JSON",
    unit="messages/s",
    higher_is_better=True,
    variants=[
        _ws(
            "h3-fastapi", "h3-fastapi typed hook (message: Small, send=Small)", "h3", "/echo-typed"
        ),
        _ws("h3-json", "h3-fastapi untyped (message.json(), send a dict)", "h3", "/echo-json"),
        _ws(
            "fastapi",
            "FastAPI @app.websocket, model_validate_json by hand",
            "fastapi",
            "/echo-typed",
        ),
    ],
    cases=[Case("100 connections", {"connections": 100, "size": 64, "payload": "json"})],
    targets=[
        Target(
            "typed echo >= 0.87x untyped (at most 15% dearer)",
            "100 connections",
            "h3-fastapi",
            "h3-json",
            0.87,
        ),
        Target(
            "typed echo >= 1.0x FastAPI validating by hand",
            "100 connections",
            "h3-fastapi",
            "fastapi",
            1.0,
        ),
    ],
    measure=_measure_echo,
    describe=(
        'As echo, with a 64-byte JSON message `{"id": <connection>, "text": "eee..."}`; the'
        " load generator checks every echo byte for byte. h3-fastapi validates it into a"
        " Pydantic model `Small(id: int, text: str)` through a typed `message` hook and sends"
        " the model back (`send=Small`); the untyped line parses it with `message.json()` and"
        " sends the dict; FastAPI's endpoint calls `Small.model_validate_json` and"
        " `send_text(model.model_dump_json())` by hand."
    ),
)


# --- 2. Broadcast ---------------------------------------------------------------------


def _measure_broadcast(
    workload: Workload, variant: Variant, case: Case, settings: Settings, ctx: dict[str, Any]
) -> dict[str, Any]:
    assert variant.server is not None
    args = workload.case_args(case, settings)
    with serve(variant.server) as server:
        return run_load(
            "ws_broadcast.mjs",
            {"url": server.url(variant.path, "ws"), **args},
            server,
            timeout=120,
            profiler=_profiler(settings, workload, variant, case),
        )


BROADCAST = Workload(
    key="broadcast",
    title="Broadcast, 1,000 and 10,000 subscribers",
    unit="deliveries/s",
    higher_is_better=True,
    variants=[
        _ws("h3-fastapi", "h3-fastapi peer.publish", "h3", "/broadcast"),
        _ws_metrics("/broadcast"),
        _ws("starlette", "Starlette loop over a set", "starlette", "/broadcast"),
        _ws_node("/broadcast"),
        _ws_h3_protocol("h3-fastapi-h3ws", "h3-fastapi, h3 uvicorn protocol", "h3", "/broadcast"),
        _ws_h3_protocol(
            "starlette-h3ws", "Starlette loop, h3 uvicorn protocol", "starlette", "/broadcast"
        ),
    ],
    cases=[
        Case("1000 x 100", {"subscribers": 1000, "messages": 100, "warmup": 10}),
        Case(
            "10000 x 20",
            {"subscribers": 10000, "messages": 20, "warmup": 3},
            {"subscribers": 3000},
        ),
        # One publish at a time: the next once every subscriber has the last, so
        # nothing can be batched per subscriber (the bursts above can).
        Case(
            "1000 x 100 paced",
            {"subscribers": 1000, "messages": 100, "warmup": 10, "paced": True},
            {"messages": 50},
        ),
    ],
    targets=[
        Target(
            "broadcast >= 1.2x the Starlette loop", "1000 x 100", "h3-fastapi", "starlette", 1.2
        ),
        # Issue 19: ahead of h3 on Node, at 1,000 and at 10,000 subscribers.
        Target("broadcast (1,000) >= 1.2x h3 on Node", "1000 x 100", "h3-fastapi", "node-h3", 1.2),
        Target("broadcast (10,000) >= 1.2x h3 on Node", "10000 x 20", "h3-fastapi", "node-h3", 1.2),
        # On h3-fastapi's uvicorn protocol: a publish's frame encoded once, batched per
        # subscriber; "paced" leaves nothing to batch.
        Target(
            "broadcast (1,000), h3 protocol >= 1.2x h3 on Node",
            "1000 x 100",
            "h3-fastapi-h3ws",
            "node-h3",
            1.2,
        ),
        Target(
            "broadcast (10,000), h3 protocol >= 1.2x h3 on Node",
            "10000 x 20",
            "h3-fastapi-h3ws",
            "node-h3",
            1.2,
        ),
        Target(
            "broadcast paced, h3 protocol >= 1.0x h3 on Node",
            "1000 x 100 paced",
            "h3-fastapi-h3ws",
            "node-h3",
            1.0,
        ),
        Target(
            "broadcast, metrics on >= 0.95x metrics off",
            "1000 x 100",
            "h3-fastapi-metrics",
            "h3-fastapi",
            0.95,
        ),
    ],
    measure=_measure_broadcast,
    describe=(
        "1,000 subscribers and a publisher connection that sends 100 messages back to back"
        " (or 10,000 subscribers and 20 messages); the server relays each to every"
        " subscriber (h3-fastapi `peer.publish`, crossws `peer.publish`, Starlette"
        " `for ws in sockets: await ws.send_text(m)`). Deliveries per second from the first"
        " send until every subscriber has them all."
    ),
)


# --- 3. SSE -----------------------------------------------------------------------------


def _measure_sse(
    workload: Workload, variant: Variant, case: Case, settings: Settings, ctx: dict[str, Any]
) -> dict[str, Any]:
    assert variant.server is not None
    args = workload.case_args(case, settings)
    with serve(variant.server) as server:
        prime(server.url(variant.path) + "?n=1")
        return run_load(
            "sse_load.mjs",
            {"url": server.url(variant.path), **args},
            server,
            timeout=120,
            profiler=_profiler(settings, workload, variant, case),
        )


SSE = Workload(
    key="sse",
    title="Server-Sent Events, 10 and 100 streams",
    unit="events/s",
    higher_is_better=True,
    variants=[
        Variant("h3-fastapi", "h3-fastapi @event_stream", ServerSpec("python", SSE_APP), "/h3"),
        Variant(
            "h3-push",
            "h3-fastapi EventStream.push loop",
            ServerSpec("python", SSE_APP),
            "/h3-push",
        ),
        Variant("sse-starlette", "sse-starlette", ServerSpec("python", SSE_APP), "/sse-starlette"),
        Variant("raw", "raw StreamingResponse", ServerSpec("python", SSE_APP), "/raw"),
        Variant(
            "h3-typed",
            "h3-fastapi @event_stream, AsyncIterator[Item]",
            ServerSpec("python", SSE_APP),
            "/h3-typed",
        ),
        Variant(
            "fastapi-sse",
            "FastAPI EventSourceResponse, AsyncIterable[Item]",
            ServerSpec("python", SSE_APP),
            "/fastapi-sse",
        ),
        Variant(
            "node-h3",
            "h3 v2 createEventStream (Node)",
            ServerSpec("node", "sse_server.mjs"),
            "/sse",
            _node_anchors,
        ),
    ],
    cases=[
        Case("10 streams", {"streams": 10, "events": 10000}, {"events": 4000}),
        Case("100 streams", {"streams": 100, "events": 1000}, {"events": 400}),
    ],
    targets=[
        Target("SSE (10) >= 1.5x sse-starlette", "10 streams", "h3-fastapi", "sse-starlette", 1.5),
        Target(
            "SSE (100) >= 1.5x sse-starlette", "100 streams", "h3-fastapi", "sse-starlette", 1.5
        ),
        Target("SSE (10) >= 1.0x raw StreamingResponse", "10 streams", "h3-fastapi", "raw", 1.0),
        Target("SSE (100) >= 1.0x raw StreamingResponse", "100 streams", "h3-fastapi", "raw", 1.0),
        # Issue 19: h3's own idiom, create_event_stream + push from a task.
        Target("SSE push (10) >= 1.0x raw StreamingResponse", "10 streams", "h3-push", "raw", 1.0),
        Target(
            "SSE push (100) >= 1.0x raw StreamingResponse", "100 streams", "h3-push", "raw", 1.0
        ),
        Target("SSE push (10) >= 1.0x h3 on Node", "10 streams", "h3-push", "node-h3", 1.0),
        Target("SSE push (100) >= 1.0x h3 on Node", "100 streams", "h3-push", "node-h3", 1.0),
        Target(
            "SSE typed (10) >= 1.5x FastAPI EventSourceResponse",
            "10 streams",
            "h3-typed",
            "fastapi-sse",
            1.5,
        ),
        Target(
            "SSE typed (100) >= 1.5x FastAPI EventSourceResponse",
            "100 streams",
            "h3-typed",
            "fastapi-sse",
            1.5,
        ),
        Target(
            "SSE (10) >= 2x FastAPI EventSourceResponse",
            "10 streams",
            "h3-fastapi",
            "fastapi-sse",
            2.0,
        ),
        Target(
            "SSE (100) >= 2x FastAPI EventSourceResponse",
            "100 streams",
            "h3-fastapi",
            "fastapi-sse",
            2.0,
        ),
    ],
    measure=_measure_sse,
    describe=(
        "Every stream gets N events of a 64-byte payload, handed over one at a time"
        " (an `await` per event), then the response ends. Events per second from the first"
        " request until every stream has ended. The two typed lines yield a Pydantic model"
        " `Item(text: str)` holding the payload, sent as its JSON (75 bytes): h3-fastapi"
        " `@event_stream` annotated `AsyncIterator[Item]`, and FastAPI's native SSE"
        " (`response_class=EventSourceResponse`, annotated `AsyncIterable[Item]`)."
    ),
)


# --- 4. Proxy ---------------------------------------------------------------------------

UPSTREAM = ServerSpec("node", str(LOAD_DIR / "upstream.mjs"), core=LOAD_CORE)


@contextlib.contextmanager
def _proxy_context() -> Iterator[dict[str, Any]]:
    """One upstream (plain node:http on the load core) for every proxy measurement."""
    with serve(UPSTREAM) as upstream:
        yield {"upstream": upstream}


def _measure_proxy(
    workload: Workload,
    variant: Variant,
    case: Case,
    settings: Settings,
    ctx: dict[str, Any],
    script: str = "http_load.mjs",
) -> dict[str, Any]:
    upstream = ctx["upstream"]
    args = workload.case_args(case, settings)
    load = {"warmup": settings.warmup / 2, "seconds": settings.seconds * 2 / 3, **args}
    if variant.server is None:  # direct to the upstream
        prime(upstream.url(variant.path))
        load["url"] = upstream.url(variant.path)
        return run_load(script, load, upstream, timeout=120)
    spec = variant.server
    if spec.kind == "node":
        spec = ServerSpec(spec.kind, spec.target, (upstream.url(""),))
    env = {"BENCH_UPSTREAM": upstream.url("")}
    with serve(spec, env=env) as server:
        base_rss = server.rss_kib()
        load["url"] = server.url(variant.path)
        prime(server.url(variant.path.replace("big", "small")))
        result = run_load(
            script,
            load,
            server,
            timeout=120,
            profiler=_profiler(settings, workload, variant, case),
        )
        result["base_rss_mib"] = base_rss / 1024
        result["peak_rss_mib"] = server.peak_rss_kib() / 1024
        return result


def _proxy_variant(key: str, label: str, prefix: str, **kw: Any) -> Variant:
    return Variant(key, label, ServerSpec("python", PROXY_APP), f"/{prefix}/{{size}}", **kw)


def _proxy_variants() -> list[Variant]:
    return [
        _proxy_variant("h3-fastapi", "h3-fastapi proxy()", "h3"),
        _proxy_variant("naive", "naive httpx client.stream", "naive"),
        _proxy_variant("pooled", "httpx shared client, send(stream=True)", "pooled"),
        Variant(
            "node-h3",
            "h3 v2 proxy() (Node)",
            ServerSpec("node", "proxy_server.mjs"),
            "/proxy/{size}",
            _node_anchors,
        ),
        Variant("direct", "direct to upstream", None, "/{size}"),
    ]


def _measure_sized(script: str) -> Callable[..., dict[str, Any]]:
    """A proxy measurement with the case's ``size`` filled into the variant's path."""

    def measure(
        w: Workload, v: Variant, c: Case, s: Settings, ctx: dict[str, Any]
    ) -> dict[str, Any]:
        sized = Variant(v.key, v.label, v.server, v.path.format(size=c.args["size"]))
        return _measure_proxy(w, sized, c, s, ctx, script)

    return measure


PROXY = Workload(
    key="proxy",
    title="Proxy, 1 KiB and 10 MiB bodies",
    unit="requests/s",
    higher_is_better=True,
    variants=_proxy_variants(),
    cases=[
        Case("1 KiB", {"size": "small", "concurrency": 32, "expect_bytes": 1024}),
        Case("10 MiB", {"size": "big", "concurrency": 4, "expect_bytes": 10 * 1024 * 1024}),
    ],
    targets=[
        Target("proxy 1 KiB >= 4x naive httpx", "1 KiB", "h3-fastapi", "naive", 4.0),
        Target("proxy 1 KiB >= 1.0x h3 on Node", "1 KiB", "h3-fastapi", "node-h3", 1.0),
        Target("proxy 10 MiB >= 1.0x naive httpx (MiB/s)", "10 MiB", "h3-fastapi", "naive", 1.0),
        Target(
            "proxy 10 MiB peak RSS <= 1.0x naive httpx",
            "10 MiB",
            "h3-fastapi",
            "naive",
            1.0,
            op="<=",
            metric="peak_rss_mib",
        ),
    ],
    measure=_measure_sized("http_load.mjs"),
    describe=(
        "32 keep-alive clients GET a 1 KiB body, or 4 clients GET a 10 MiB body, through"
        " the proxy from a plain node:http upstream on the load core. Requests per second"
        " (and MiB/s) over the window; peak RSS is the proxy process's VmHWM."
    ),
    context=_proxy_context,
)


# The open-loop rate (requests/s) of the many-connections proxy load: below what every
# proxy but the naive one sustains on the reference machine, so latency is compared
# at the same offered load.
PROXY_OPEN_RATE = 800

PROXY_OPEN = Workload(
    key="proxy-open",
    title="Proxy 1 KiB, many connections (wrk-style)",
    unit="requests/s",
    higher_is_better=True,
    variants=_proxy_variants(),
    cases=[
        Case("50 conns", {"size": "small", "connections": 50, "expect_bytes": 1024}),
        Case("256 conns", {"size": "small", "connections": 256, "expect_bytes": 1024}),
        Case(
            f"256 conns @{PROXY_OPEN_RATE}/s",
            {
                "size": "small",
                "connections": 256,
                "mode": "open",
                "rate": PROXY_OPEN_RATE,
                "expect_bytes": 1024,
            },
        ),
    ],
    targets=[
        Target(
            "proxy 1 KiB, 50 conns >= 1.0x h3 on Node", "50 conns", "h3-fastapi", "node-h3", 1.0
        ),
        Target(
            "proxy 1 KiB, 256 conns >= 1.0x h3 on Node", "256 conns", "h3-fastapi", "node-h3", 1.0
        ),
        Target(
            f"proxy 1 KiB, 256 conns @{PROXY_OPEN_RATE}/s p99 <= 1.0x h3 on Node",
            f"256 conns @{PROXY_OPEN_RATE}/s",
            "h3-fastapi",
            "node-h3",
            1.0,
            op="<=",
            metric="p99_ms",
        ),
    ],
    measure=_measure_sized("http_open.mjs"),
    describe=(
        "A 1 KiB GET through the proxy over many keep-alive connections, all opened"
        " first and used in turn (`http_open.mjs`). Closed loop, like wrk: 50 or 256"
        " connections each send the next request when the last response ends; requests/s"
        f" over the window. Open loop, like wrk2: {PROXY_OPEN_RATE} requests/s due on a"
        " fixed schedule over 256 connections; the achieved rate, and p50/p99 latency"
        " measured from when each request was due (a server that falls behind is not"
        " hidden by the load generator waiting for it)."
    ),
    context=_proxy_context,
)


# --- 5. Memory per idle WebSocket ----------------------------------------------------


def _settled_rss(server: Any, limit: float = 6.0) -> int:
    """RSS once it stops moving (two reads 0.5 s apart within 0.5%), at most ``limit`` s."""
    time.sleep(0.5)
    previous = server.rss_kib()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.5)
        current = server.rss_kib()
        if abs(current - previous) <= previous * 0.005:
            return int(current)
        previous = current
    return int(previous)


def _measure_memory(
    workload: Workload, variant: Variant, case: Case, settings: Settings, ctx: dict[str, Any]
) -> dict[str, Any]:
    assert variant.server is not None
    args = workload.case_args(case, settings)
    connections = int(args["connections"])
    seen: dict[str, int] = {}

    def release(_message: dict[str, Any], stdin: Any) -> None:
        stdin.write(b"close\n")
        stdin.flush()

    def measure_then_release(message: dict[str, Any], stdin: Any) -> None:
        if message.get("event") == "ready":
            seen["rss"] = _settled_rss(server)
            release(message, stdin)

    url_path = variant.path
    with serve(variant.server) as server:
        url = server.url(url_path, "ws")
        # Warm up: the first connections load lazy imports and fill allocator pools.
        run_load(
            "ws_idle.mjs", {"url": url, "connections": 200}, server, timeout=60, on_event=release
        )
        base = _settled_rss(server)
        result = run_load(
            "ws_idle.mjs",
            {"url": url, "connections": connections},
            server,
            timeout=240,
            on_event=measure_then_release,
        )
    if "rss" not in seen:
        raise RuntimeError("the idle load generator never reported ready")
    result["base_rss_mib"] = base / 1024
    result["rss_mib"] = seen["rss"] / 1024
    result["value"] = (seen["rss"] - base) / connections
    result["unit"] = "KiB/connection"
    return result


MEMORY = Workload(
    key="memory",
    title="Memory per idle WebSocket, 10,000 connections",
    unit="KiB/connection",
    higher_is_better=False,
    variants=[
        _ws("h3-fastapi", "h3-fastapi (FastAPI app, H3Router.ws)", "h3", "/echo"),
        _ws("h3-starlette", "h3-fastapi handler on a Starlette app", "h3_starlette", "/echo"),
        _ws("starlette", "raw Starlette", "starlette", "/echo"),
        _ws("fastapi", "FastAPI @app.websocket", "fastapi", "/echo"),
        _ws_h3_protocol("h3-fastapi-h3ws", "h3-fastapi, h3 uvicorn protocol", "h3", "/echo"),
        _ws_h3_protocol(
            "fastapi-h3ws", "FastAPI @app.websocket, h3 uvicorn protocol", "fastapi", "/echo"
        ),
        # No Node anchor here: 10,000 handshakes per run cost ~15 s, and the
        # target compares with raw Starlette.
    ],
    cases=[Case("10000 idle", {"connections": 10000}, {"connections": 3000})],
    targets=[
        Target(
            "idle peer <= raw Starlette + 4 KiB (both on Starlette)",
            "10000 idle",
            "h3-starlette",
            "starlette",
            4.0,
            op="<=",
            kind="difference",
        ),
        Target(
            "idle peer <= raw Starlette + 4 KiB (h3 through FastAPI)",
            "10000 idle",
            "h3-fastapi",
            "starlette",
            4.0,
            op="<=",
            kind="difference",
        ),
        # Issue 19: no more than FastAPI's own endpoint.
        Target(
            "idle peer <= FastAPI @app.websocket (both on FastAPI)",
            "10000 idle",
            "h3-fastapi",
            "fastapi",
            0.0,
            op="<=",
            kind="difference",
        ),
        Target(
            "idle peer, h3 protocol <= FastAPI @app.websocket on it",
            "10000 idle",
            "h3-fastapi-h3ws",
            "fastapi-h3ws",
            0.0,
            op="<=",
            kind="difference",
        ),
    ],
    measure=_measure_memory,
    describe=(
        "RSS of the server with 10,000 open idle connections minus its RSS after 200"
        " warm-up connections came and went, divided by 10,000."
    ),
)

# --- 6. Broadcast across processes, per backplane ----------------------------------------

BACKPLANE_APP = "bench.servers.backplane_apps:app"
PROCESSES = 4

# variant key -> (binaries, Python client module) it needs
_BACKPLANE_NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "redis": (("redis-server",), "redis"),
    "redis-cluster": (("redis-server", "redis-cli"), "redis"),
    "postgres": (("initdb", "pg_ctl"), "asyncpg"),
    "nats": (("nats-server",), "nats"),
}


def _backplane_missing(key: str) -> list[str]:
    """What ``key`` needs and this machine lacks (binaries, the Python client)."""
    import importlib.util

    from tests.backplane_servers import missing_binaries

    binaries, module = _BACKPLANE_NEEDS[key]
    missing = missing_binaries(*binaries)
    if importlib.util.find_spec(module) is None:
        missing.append(f"the Python package {module!r}")
    return missing


class _Brokers:
    """The backplane servers, each started (and pinned to the server core) on first use.

    The launchers are the tests' (``tests/backplane_servers.py``). ``close()``
    stops every one that was started; a server that failed to start is
    reported by each measurement that needs it.
    """

    def __init__(self) -> None:
        self.started: dict[str, tuple[str, list[int]]] = {}
        self.failed: dict[str, str] = {}
        self.stops: list[Callable[[], None]] = []

    def get(self, key: str) -> tuple[str, list[int]]:
        """The URL of ``key``'s server and the pids whose CPU is the broker's."""
        if key in self.failed:
            raise BenchError(self.failed[key])
        for attempt in (1, 2):
            if key in self.started:
                break
            try:
                self.started[key] = self._start(key)
            except Exception as exc:  # a broken install: this variant fails, the run goes on
                self.close_one()
                # Ports are picked free in advance; another process may take one by then.
                if attempt == 2:
                    first = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
                    self.failed[key] = f"{key} server did not start: {first[0]}"
                    raise BenchError(self.failed[key]) from exc
        url, pids = self.started[key]
        pin_tree(pids, SERVER_CORE)  # children started since (PostgreSQL backends) too
        return url, pids

    def _start(self, key: str) -> tuple[str, list[int]]:
        from tests import backplane_servers as services

        if key == "redis":
            redis = services.RedisServer()
            self.stops.append(redis.kill)
            redis.start()
            assert redis.proc is not None
            return redis.url, [redis.proc.pid]
        if key == "redis-cluster":
            cluster = services.RedisClusterService()
            self.stops.append(cluster.stop)
            cluster.start()
            return cluster.url, [proc.pid for proc in cluster.procs.values()]
        if key == "postgres":
            postgres = services.PostgresService()
            self.stops.append(postgres.remove)
            postgres.start()
            postmaster = int((postgres.data / "postmaster.pid").read_text().split()[0])
            return postgres.url, [postmaster]
        nats = services.NatsService()
        self.stops.append(nats.remove)
        nats.start()
        assert nats.proc is not None
        return nats.url, [nats.proc.pid]

    def close_one(self) -> None:
        """Stop the server started last (one that failed to start)."""
        if self.stops:
            with contextlib.suppress(Exception):
                self.stops.pop()()

    def close(self) -> None:
        for stop in reversed(self.stops):
            with contextlib.suppress(Exception):
                stop()
        self.stops.clear()


@contextlib.contextmanager
def _backplanes_context() -> Iterator[dict[str, Any]]:
    brokers = _Brokers()
    try:
        yield {"brokers": brokers}
    finally:
        brokers.close()


def _measure_backplanes(
    workload: Workload, variant: Variant, case: Case, settings: Settings, ctx: dict[str, Any]
) -> dict[str, Any]:
    assert variant.server is not None
    args = workload.case_args(case, settings)
    if variant.key == "memory":  # memory cannot cross processes: one holds everyone
        url, broker_pids, count = "memory://", [], 1
    else:
        url, broker_pids = ctx["brokers"].get(variant.key)
        count = PROCESSES
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(serve(variant.server, env={"H3_PUBSUB_URL": url}))
            for _ in range(count)
        ]
        sub_urls = [server.url(variant.path, "ws") for server in servers]
        load = {**args, "sub_urls": sub_urls}
        load["pub_urls"] = [sub_urls[i % count] for i in range(PROCESSES)]
        meters = {
            "servers": lambda: tree_cpu_seconds([server.pid for server in servers]),
            "broker": lambda: tree_cpu_seconds(broker_pids),
        }
        result = run_load("ws_backplanes.mjs", load, None, timeout=120, meters=meters)
    deliveries = result["deliveries"]
    cpu = result["servers_cpu_s"] + result["broker_cpu_s"]
    result["cpu_us_per_delivery"] = 1e6 * cpu / deliveries
    result["server_cpu_pct"] = 100 * cpu / result["window_s"]
    if broker_pids:  # memory has no broker: its cell stays empty, not 0
        result["broker_us_per_delivery"] = 1e6 * result["broker_cpu_s"] / deliveries
        result["broker_cpu_pct"] = 100 * result["broker_cpu_s"] / result["window_s"]
    result["processes"] = count
    return result


def _backplane(key: str, label: str) -> Variant:
    def available() -> bool:
        return not _backplane_missing(key)

    needs = _BACKPLANE_NEEDS[key]
    unavailable = "needs " + ", ".join([*needs[0], f"the Python package {needs[1]!r}"])
    spec = ServerSpec("python", BACKPLANE_APP)
    return Variant(key, label, spec, "/broadcast", available, unavailable)


BACKPLANES = Workload(
    key="backplanes",
    title="Broadcast across 4 processes, per backplane",
    unit="deliveries/s",
    higher_is_better=True,
    variants=[
        Variant(
            "memory",
            "memory (1 process holds all subscribers)",
            ServerSpec("python", BACKPLANE_APP),
            "/broadcast",
        ),
        _backplane("redis", "Redis (RedisPubSub)"),
        _backplane("redis-cluster", "Redis Cluster, 3 shards (RedisClusterPubSub)"),
        _backplane("postgres", "PostgreSQL LISTEN/NOTIFY (PostgresPubSub)"),
        _backplane("nats", "NATS (NatsPubSub)"),
    ],
    cases=[
        # Wide fan-out: 200 publishes, each written to 1,000 sockets.
        Case(
            "1000 subscribers",
            {"subscribers": 1000, "messages": 50, "warmup": 5},
            {"messages": 25},
        ),
        # Narrow fan-out: 4,000 publishes, each written to 40 sockets; the
        # backplane's cost per publish weighs 25 times more per delivery.
        Case(
            "40 subscribers",
            {"subscribers": 40, "messages": 1000, "warmup": 20},
            {"messages": 500},
        ),
    ],
    targets=[],
    measure=_measure_backplanes,
    context=_backplanes_context,
    describe=(
        "4 uvicorn processes of one app (`H3_PUBSUB_URL` picks the backplane); the"
        " subscribers spread evenly over them (250 or 10 per process), each counted once its"
        " process confirmed the subscription. One publisher connection per process sends M"
        " messages of 64 bytes (50 to 1,000 subscribers, 1,000 to 40), all 4 at once; each"
        " process publishes them with `peer.publish`, so every subscriber must get all 4 x M"
        " (200,000 and 160,000 deliveries), 3/4 of them from another process, in each"
        " publisher's order. Deliveries per second from the first send until the last"
        " delivery. CPU per delivery: the CPU time of the 4 servers and of the broker (all"
        " its processes and threads) over the same window, divided by the deliveries; the"
        " broker's part is shown on its own. Memory cannot cross processes: its line is 1"
        " process holding all subscribers and the 4 publishers. The servers and the broker"
        " share core 0, the load generator has core 1."
    ),
)


# --- 7. The server matrix: one app on every Python ASGI server ------------------------

# Each case runs one of the workloads above, with its load generator and sizes,
# on h3-fastapi's route: (measure, ws or sse app, path, Node script, Node path).
_MATRIX_CASES: dict[str, tuple[Any, str, str, str, str]] = {
    "echo": (_measure_echo, f"{WS_APPS}:h3", "/echo", "ws_server.mjs", "/echo"),
    "broadcast": (_measure_broadcast, f"{WS_APPS}:h3", "/broadcast", "ws_server.mjs", "/broadcast"),
    "sse 10 streams": (_measure_sse, SSE_APP, "/h3", "sse_server.mjs", "/sse"),
    "sse 100 streams": (_measure_sse, SSE_APP, "/h3", "sse_server.mjs", "/sse"),
}
MATRIX_ANCHOR = "node-h3"


def _measure_matrix(
    workload: Workload, variant: Variant, case: Case, settings: Settings, ctx: dict[str, Any]
) -> dict[str, Any]:
    """Run the case's own workload on this variant's server, serving h3-fastapi's route."""
    assert variant.server is not None
    measure, app, path, script, node_path = _MATRIX_CASES[case.key]
    if variant.server.kind == "node":
        spec, path = dataclasses.replace(variant.server, target=script), node_path
    else:
        spec = dataclasses.replace(variant.server, target=app)
    return dict(
        measure(workload, Variant(variant.key, variant.label, spec, path), case, settings, ctx)
    )


def _server(key: str, label: str, server: str, *stack: str, needs: str = "") -> Variant:
    def available() -> bool:
        return not needs or importlib.util.find_spec(needs) is not None

    return Variant(key, label, ServerSpec("python", "", server=server, stack=stack), "", available)


def _matrix_case(key: str, source: Case) -> Case:
    return Case(key, source.args, source.quick_args)


SERVERS = Workload(
    key="servers",
    title="Server matrix: h3-fastapi on every Python ASGI server",
    unit="messages, deliveries or events/s",
    higher_is_better=True,
    variants=[
        _server(
            "uvicorn-h3-uvloop",
            "uvicorn + h3-fastapi's WebSocket protocol, uvloop + httptools (serve()'s default)",
            "uvicorn",
            "uvloop",
            "httptools",
            H3_WS,
        ),
        _server(
            "uvicorn-sansio-uvloop",
            "uvicorn websockets-sansio, uvloop + httptools",
            "uvicorn",
            "uvloop",
            "httptools",
            "websockets-sansio",
        ),
        _server(
            "uvicorn-sansio-asyncio",
            "uvicorn websockets-sansio, asyncio + h11",
            "uvicorn",
            "asyncio",
            "h11",
            "websockets-sansio",
        ),
        _server(
            "uvicorn-websockets-uvloop",
            "uvicorn websockets (legacy), uvloop + httptools",
            "uvicorn",
            "uvloop",
            "httptools",
            "websockets",
        ),
        _server(
            "uvicorn-websockets-asyncio",
            "uvicorn websockets (legacy), asyncio + h11",
            "uvicorn",
            "asyncio",
            "h11",
            "websockets",
        ),
        _server(
            "uvicorn-wsproto-uvloop",
            "uvicorn wsproto, uvloop + httptools",
            "uvicorn",
            "uvloop",
            "httptools",
            "wsproto",
            needs="wsproto",
        ),
        _server(
            "uvicorn-wsproto-asyncio",
            "uvicorn wsproto, asyncio + h11",
            "uvicorn",
            "asyncio",
            "h11",
            "wsproto",
            needs="wsproto",
        ),
        _server("hypercorn", "hypercorn (asyncio)", "hypercorn", "asyncio", needs="hypercorn"),
        _server(
            "hypercorn-uvloop", "hypercorn, uvloop worker", "hypercorn", "uvloop", needs="hypercorn"
        ),
        _server("granian", "granian ASGI, uvloop", "granian", "uvloop", needs="granian"),
        _server("granian-asyncio", "granian ASGI, asyncio", "granian", "asyncio", needs="granian"),
        Variant(MATRIX_ANCHOR, "h3 v2 + crossws (Node)", ServerSpec("node", ""), "", _node_anchors),
    ],
    cases=[
        _matrix_case("echo", ECHO.cases[0]),
        _matrix_case("broadcast", BROADCAST.cases[0]),
        _matrix_case("sse 10 streams", SSE.cases[0]),
        _matrix_case("sse 100 streams", SSE.cases[1]),
    ],
    targets=[],
    measure=_measure_matrix,
    anchor=MATRIX_ANCHOR,
    describe=(
        "The same h3-fastapi routes as the echo (messages/s), broadcast (deliveries/s) and SSE"
        " (events/s) workloads, with the same load generators and sizes, on each Python ASGI"
        " server: uvicorn with each WebSocket implementation, each with uvloop + httptools and"
        " with asyncio + h11; hypercorn (its asyncio and uvloop workers); granian's ASGI"
        " interface (one worker, one single-threaded Rust runtime, uvloop or asyncio). One"
        " worker each, the whole process tree pinned to the server core. The last column is"
        " each server against h3 v2 (+ crossws) on Node."
    ),
)

WORKLOADS: dict[str, Workload] = {
    w.key: w
    for w in (ECHO, ECHO_JSON, BROADCAST, SSE, PROXY, PROXY_OPEN, MEMORY, BACKPLANES, SERVERS)
}
