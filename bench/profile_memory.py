"""Where an idle WebSocket's memory goes: tracemalloc in the server, grouped by line.

Run: ``python -m bench.profile_memory bench.servers.websocket_apps:h3 [N]``.
Starts uvicorn in this process (same settings as the bench), opens N idle
connections with the Node load generator, and prints the allocations that
grew, per connection, grouped by source line (top 25) and by file.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import os
import subprocess
import sys
import tracemalloc
from collections import defaultdict
from typing import Any

import uvicorn
import uvloop

from .harness import LOAD_DIR, ROOT, free_port


async def _idle(url: str, connections: int) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    command = ["node", str(LOAD_DIR / "ws_idle.mjs")]
    command.append(json.dumps({"url": url, "connections": connections, "timeout": 240}))
    pipe = subprocess.PIPE
    process = await asyncio.to_thread(subprocess.Popen, command, cwd=ROOT, stdin=pipe, stdout=pipe)
    assert process.stdout is not None
    line = await asyncio.to_thread(process.stdout.readline)
    return process, json.loads(line)


async def _release(process: subprocess.Popen[bytes]) -> None:
    assert process.stdin is not None
    process.stdin.write(b"close\n")
    process.stdin.flush()
    await asyncio.to_thread(process.wait, 60)


async def main(target: str, connections: int, path: str) -> None:
    module, _, name = target.partition(":")
    app = getattr(importlib.import_module(module), name)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="none",
        ws="websockets-sansio",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(600):  # at most 30 s
        if server.started:
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError("uvicorn did not start")
    url = f"ws://127.0.0.1:{port}{path}"
    warm, _ = await _idle(url, 200)
    await _release(warm)
    await asyncio.sleep(1)
    gc.collect()
    tracemalloc.start(8)
    before = tracemalloc.take_snapshot()
    idle, _ = await _idle(url, connections)
    await asyncio.sleep(2)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    await _release(idle)
    server.should_exit = True
    await task

    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before = before.filter_traces(ignore)
    after = after.filter_traces(ignore)
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"{target} {path}: {total / connections / 1024:.2f} KiB/connection traced (Python heap)")
    print("top lines (bytes per connection):")
    for stat in stats[:25]:
        frame = stat.traceback[0]
        where = f"{frame.filename.replace(str(ROOT) + '/', '')}:{frame.lineno}"
        print(f"  {stat.size_diff / connections:8.1f}  {where}")
    print("h3_fastapi lines (bytes per connection):")
    for stat in stats:
        frame = stat.traceback[0]
        if "h3_fastapi" in frame.filename and stat.size_diff > 0:
            where = f"{frame.filename.replace(str(ROOT) + '/', '')}:{frame.lineno}"
            print(f"  {stat.size_diff / connections:8.1f}  {where}")
    by_file: dict[str, float] = defaultdict(float)
    for stat in stats:
        by_file[stat.traceback[0].filename] += stat.size_diff / connections
    print("by file (bytes per connection):")
    for filename, size in sorted(by_file.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {size:8.1f}  {filename.replace(str(ROOT) + '/', '')}")
    dump = os.environ.get("H3_PROFILE_JSON")
    if dump:  # every line, to compare two apps (``python -m bench.profile_summary``)
        lines = {
            f"{s.traceback[0].filename}:{s.traceback[0].lineno}": s.size_diff / connections
            for s in stats
            if s.size_diff
        }
        with open(dump, "w") as out:
            json.dump(lines, out, indent=0)


if __name__ == "__main__":
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    route = sys.argv[3] if len(sys.argv) > 3 else "/echo"
    uvloop.run(main(sys.argv[1], count, route))
