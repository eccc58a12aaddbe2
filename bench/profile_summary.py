"""Summarise py-spy speedscope profiles: where the server's CPU went, as text.

Run: ``python -m bench.profile_summary bench/results/profiles/*.speedscope.json``.
Prints, per profile, the share of samples by component (h3_fastapi, uvicorn,
starlette, websockets, asyncio, ...), then the top functions by self time and
by inclusive time.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

COMPONENTS = (
    ("h3_fastapi/", "h3_fastapi"),
    ("bench/servers/", "bench app code"),
    ("site-packages/uvicorn/", "uvicorn"),
    ("site-packages/starlette/", "starlette"),
    ("site-packages/fastapi/", "fastapi"),
    ("site-packages/websockets/", "websockets (frames)"),
    ("site-packages/sse_starlette/", "sse-starlette"),
    ("site-packages/anyio/", "anyio"),
    ("site-packages/httpx/", "httpx"),
    ("site-packages/httpcore/", "httpcore"),
    ("site-packages/aiohttp/", "aiohttp"),
    ("site-packages/httpx_aiohttp/", "httpx-aiohttp"),
    ("site-packages/h11/", "h11"),
    ("site-packages/wsproto/", "wsproto (frames)"),
    ("site-packages/hypercorn/", "hypercorn"),
    ("site-packages/granian/", "granian (Python side)"),
    ("/asyncio/", "asyncio"),
    ("site-packages/uvloop/", "uvloop"),
)


def component(filename: str) -> str:
    for needle, name in COMPONENTS:
        if needle in filename:
            return name
    return "other (stdlib, C)"


def _short(frame: dict[str, Any]) -> str:
    filename = str(frame.get("file", ""))
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{frame.get('name', '?')} ({filename}:{frame.get('line', '?')})"


def summarise(path: Path, top: int = 15) -> str:
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    self_time: Counter[int] = Counter()
    inclusive: Counter[int] = Counter()
    by_component: Counter[str] = Counter()
    total = 0.0
    samples = 0
    for profile in data["profiles"]:
        weights = profile.get("weights") or [1] * len(profile["samples"])
        for stack, weight in zip(profile["samples"], weights, strict=False):
            if not stack:
                continue
            total += weight
            samples += 1
            leaf = stack[-1]
            self_time[leaf] += weight
            by_component[component(str(frames[leaf].get("file", "")))] += weight
            for index in set(stack):
                inclusive[index] += weight
    lines = [f"== {path.name}: {samples} samples ({total:.2f} s of CPU)"]
    if not total:
        return lines[0]
    lines.append("self time by component:")
    for name, weight in by_component.most_common():
        lines.append(f"  {100 * weight / total:5.1f}%  {name}")
    lines.append("top self time:")
    for index, weight in self_time.most_common(top):
        lines.append(f"  {100 * weight / total:5.1f}%  {_short(frames[index])}")
    lines.append("top inclusive time (h3_fastapi, starlette, uvicorn, bench frames):")
    shown = 0
    for index, weight in inclusive.most_common():
        filename = str(frames[index].get("file", ""))
        if not any(k in filename for k in ("h3_fastapi", "starlette", "uvicorn", "bench/")):
            continue
        lines.append(f"  {100 * weight / total:5.1f}%  {_short(frames[index])}")
        shown += 1
        if shown >= top:
            break
    return "\n".join(lines)


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print(summarise(Path(argument)))
        print()
