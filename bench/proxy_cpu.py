"""Server CPU per proxied request, over real sockets, with the GC's share.

Runs the bench proxy app (``bench/servers/proxy_apps.py``) in this process
with uvicorn on core 0, the ``node:http`` upstream and ``http_load.mjs`` on
core 1, and prints this process's CPU time per request over the measured
window, the garbage collections per 1,000 requests and, with ``--cycles``, the
objects per request that only the cycle collector frees (by type).

    python -m bench.proxy_cpu                       # /h3/small, 32 connections
    python -m bench.proxy_cpu --path /h3/small --connections 256 --runs 3
    python -m bench.proxy_cpu --no-gc               # the same with the collector off
    python -m bench.proxy_cpu --cycles              # what leaves reference cycles
    python -m bench.proxy_cpu --h3-path /work/main  # another copy of h3_fastapi

Not part of ``python -m bench``: a development tool for the proxy's per-request
cost (issue 19). Hold the bench lock while it runs. Other load on core 0 makes
the numbers larger; compare runs taken side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

from .harness import LOAD_CORE, LOAD_DIR, SERVER_CORE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


async def _measure(args: argparse.Namespace, port: int) -> dict[str, Any]:
    import uvicorn

    from .servers.proxy_apps import app

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="none",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve())
    for _ in range(200):  # bounded: 10 s
        if server.started:
            break
        await asyncio.sleep(0.05)
    else:
        raise SystemExit("uvicorn did not start")
    load_args = {
        "url": f"http://127.0.0.1:{port}{args.path}",
        "concurrency": args.connections,
        "warmup": 1,
        "seconds": args.seconds,
        "expect_bytes": args.expect_bytes,
    }
    load = await asyncio.create_subprocess_exec(
        "taskset",
        "-c",
        str(LOAD_CORE),
        "node",
        str(LOAD_DIR / "http_load.mjs"),
        json.dumps(load_args),
        stdout=asyncio.subprocess.PIPE,
    )
    assert load.stdout is not None
    result: dict[str, Any] = {}
    cpu = 0.0
    cpu0 = 0.0
    gc0: list[dict[str, int]] = []
    gc1: list[dict[str, int]] = []
    if args.cycles:
        gc.disable()
    while line := await load.stdout.readline():
        message = json.loads(line)
        if message.get("event") == "window_start":
            gc0 = [dict(stats) for stats in gc.get_stats()]
            cpu0 = time.process_time()
        elif message.get("event") == "window_end":
            cpu = time.process_time() - cpu0
            gc1 = [dict(stats) for stats in gc.get_stats()]
        elif "result" in message:
            result = message["result"]
        elif "error" in message:
            raise SystemExit(f"load generator: {message['error']}")
    await load.wait()
    requests = result["requests"]
    out: dict[str, Any] = {
        "requests_per_s": result["value"],
        "server_cpu_pct": 100 * cpu / result["seconds"],
        "cpu_us_per_request": 1e6 * cpu / requests,
        "gc_per_1000": [
            round(1000 * (gc1[g]["collections"] - gc0[g]["collections"]) / requests, 1)
            for g in range(3)
        ],
    }
    if args.cycles:
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kinds = collections.Counter(
            f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
        )
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        # Warm-up requests count too: divide by every request the server answered.
        answered = requests * (1 + 1 / args.seconds)
        out["cyclic_objects_per_request"] = round(sum(kinds.values()) / answered, 2)
        out["cyclic_by_type"] = {k: round(n / answered, 2) for k, n in kinds.most_common(12)}
    server.should_exit = True
    await serving
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="/h3/small", help="/h3, /pooled or /naive + /small")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--expect-bytes", type=int, default=1024)
    parser.add_argument("--no-gc", action="store_true", help="run with the collector off")
    parser.add_argument("--cycles", action="store_true", help="count cyclic garbage by type")
    parser.add_argument("--h3-path", default=None, help="import h3_fastapi from this directory")
    args = parser.parse_args(argv)
    if args.h3_path:
        sys.path.insert(0, os.path.abspath(args.h3_path))

    upstream_port = _free_port()
    upstream = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(LOAD_CORE),
            "node",
            str(LOAD_DIR / "upstream.mjs"),
            str(upstream_port),
        ]
    )
    try:
        _wait_port(upstream_port)
        os.environ["BENCH_UPSTREAM"] = f"http://127.0.0.1:{upstream_port}"
        os.sched_setaffinity(0, {SERVER_CORE})
        if args.no_gc:
            gc.disable()
        import uvloop

        for _ in range(args.runs):
            print(json.dumps(uvloop.run(_measure(args, _free_port()))), flush=True)
    finally:
        upstream.terminate()
        upstream.wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
