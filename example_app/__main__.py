"""``python -m example_app``: serve the example app and print where everything is.

python -m example_app                                   # http://127.0.0.1:3000
python -m example_app --port 8000
python -m example_app --redis redis://127.0.0.1:6379 --workers 2
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import uvicorn


def banner(host: str, port: int, *, redis: str | None, workers: int) -> str:
    """The URLs of every demo, as printed at start-up."""
    http = f"http://{host}:{port}"
    demo_url = os.environ.get("H3_DEMO_URL")
    lines = [
        "",
        "  h3-fastapi example app",
        "",
        f"  Chat (open it in two tabs)   {http}/{'chat' if demo_url else ''}",
    ]
    if demo_url:
        lines.append(f"  Remote page, proxied         {http}/  <- {demo_url}")
    lines += [
        f"  SSE clock                    {http}/clock",
        f"  SSE 'Hello world' (h3 seed)  {http}/sse",
        f"  WebSocket (h3 seed)          ws://{host}:{port}/_ws",
        f"  API docs                     {http}/docs",
        f"  Real-time docs (AsyncAPI)    {http}/asyncapi",
        "",
    ]
    if redis:
        lines.append(f"  Pub/sub: Redis at {redis}, {workers} worker(s) share one chat.")
    else:
        lines += [
            "  Pub/sub: in memory (one process). For two workers over Redis:",
            "    python -m example_app --redis redis://127.0.0.1:6379 --workers 2",
        ]
    lines += ["  Press Ctrl+C to stop.", ""]
    return "\n".join(lines)


class BannerServer(uvicorn.Server):
    """uvicorn that prints the banner once it listens (with the real port for ``--port 0``)."""

    def __init__(self, config: uvicorn.Config, redis: str | None) -> None:
        super().__init__(config)
        self.redis = redis

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            print(banner(self.config.host, port, redis=self.redis, workers=1), flush=True)


def main(argv: list[str] | None = None) -> None:
    try:
        _serve(argv)
    except KeyboardInterrupt:
        # Ctrl+C: uvicorn has already shut down cleanly and re-raised the signal
        # so that callers see it; a traceback here would only look like a crash.
        pass


def _serve(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m example_app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--redis", metavar="URL", help="share pub/sub through this Redis server")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    if args.redis:
        try:
            import redis  # noqa: F401
        except ImportError:
            sys.exit("--redis needs the redis client: .venv/bin/pip install -e '.[redis]'")
        os.environ["H3_PUBSUB_URL"] = args.redis  # read by every worker on first use
    elif args.workers > 1:
        print("note: without --redis each worker has its own chat room", file=sys.stderr)

    if args.workers > 1:
        if args.port == 0:
            sys.exit("--workers needs a fixed --port")
        print(banner(args.host, args.port, redis=args.redis, workers=args.workers), flush=True)
        uvicorn.run(
            "example_app:app",
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
        )
        return

    from example_app import app

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level)
    BannerServer(config, args.redis).run()


if __name__ == "__main__":
    main()
