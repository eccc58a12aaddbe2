"""Coming from sse-starlette: the same events, with h3-fastapi's EventStream."""

import asyncio

from fastapi import FastAPI, Request
from sse_starlette import ServerSentEvent

from h3_fastapi import EventStream

app = FastAPI()


@app.get("/legacy")
async def legacy(request: Request) -> EventStream:
    # EventSourceResponse(gen(), ping=15, send_timeout=10) becomes:
    stream = EventStream(request, ping_interval=15, send_timeout=10)

    async def produce() -> None:
        for i in range(3):
            await stream.push(ServerSentEvent(data=f"item {i}", event="item", id=str(i)))
        await stream.close()

    task = asyncio.create_task(produce())
    # client_close_handler_callable becomes on_closed (also runs on shutdown)
    stream.on_closed(task.cancel)
    return stream
