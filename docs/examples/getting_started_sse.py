import asyncio
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request

from h3_fastapi import event_stream

app = FastAPI()


@app.get("/countdown")
@event_stream
async def countdown(request: Request, start: int = 3) -> AsyncIterator[str]:
    for n in range(start, 0, -1):
        yield str(n)
        await asyncio.sleep(1)
    yield "liftoff"
