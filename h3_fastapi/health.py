"""Liveness and readiness for Kubernetes probes: ``app.include_router(health_router())``.

``/livez`` answers 200 while the process serves requests at all. ``/readyz``
answers 200 only while every backplane this process publishes through is
connected, and 503 while one is down (a Redis outage, say), so a load
balancer stops sending new clients to a process whose publishes would stay
local. Peers already connected are not affected by the probe.

A backplane starts connecting when it is first used; the first readiness
probe starts it, so a fresh pod reports 503 until its backplane is up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter
from starlette.responses import JSONResponse

from .backplane import BackplanePubSub
from .pubsub import PubSub, get_default_pubsub

__all__ = ["backplane_status", "health_router"]


def backplane_status(pubsubs: Iterable[PubSub] | None = None) -> dict[str, bool]:
    """``{name: connected}`` for each backplane (default: the process-wide pub/sub).

    A ``MemoryPubSub`` has no backplane and does not appear. Starts a
    backplane that has not been used yet (on the running loop).
    """
    status: dict[str, bool] = {}
    for pubsub in pubsubs if pubsubs is not None else (get_default_pubsub(),):
        if isinstance(pubsub, BackplanePubSub):
            pubsub.bind_loop()
            status[pubsub.name] = pubsub.connected
    return status


def health_router(
    *pubsubs: PubSub,
    live_path: str = "/livez",
    ready_path: str = "/readyz",
    include_in_schema: bool = False,
) -> APIRouter:
    """Routes for the probes; ``pubsubs``: the backplanes readiness waits for.

    With none given, readiness looks at the process-wide pub/sub
    (``H3_PUBSUB_URL``). The readiness body says which backplane is down:
    ``{"status": "unavailable", "backplanes": {"redis": false}}``.
    """
    router = APIRouter(include_in_schema=include_in_schema)
    watched = pubsubs or None

    @router.get(live_path)
    async def live() -> dict[str, Any]:
        return {"status": "ok"}

    @router.get(ready_path)
    async def ready() -> JSONResponse:
        status = backplane_status(watched)
        ok = all(status.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "backplanes": status},
            status_code=200 if ok else 503,
        )

    return router
