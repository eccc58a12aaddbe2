"""A live clock over Server-Sent Events, written the FastAPI way.

``/clock`` is a page whose ``EventSource`` listens to ``/clock/events``, an
``@event_stream`` async generator that yields the time on every full second.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse

from h3_fastapi import EventStreamMessage, event_stream

router = APIRouter()

clock_page = (Path(__file__).parent / "static" / "clock.html").read_text(encoding="utf-8")


@router.get("/clock", response_class=HTMLResponse)
async def page() -> str:
    return clock_page


@router.get("/clock/events")
@event_stream
async def ticks(request: Request) -> AsyncIterator[EventStreamMessage]:
    second = int(time.time())
    while True:
        yield EventStreamMessage(time.strftime("%H:%M:%S", time.localtime(second)), event="tick")
        second += 1
        await asyncio.sleep(second - time.time())  # wake up on the next full second
