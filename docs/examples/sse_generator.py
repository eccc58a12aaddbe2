"""An async generator endpoint: each ``yield`` is an event; FastAPI dependencies still work."""

import asyncio

from fastapi import Depends, FastAPI, Header

from h3_fastapi import EventStreamMessage, event_stream

app = FastAPI()

watching: set[str] = set()  # users with an open stream right now


def current_user(x_user: str = Header("guest")) -> str:
    return x_user


@app.get("/ticks")
@event_stream(ping_interval=15)
async def ticks(every: float = 1.0, user: str = Depends(current_user)):
    watching.add(user)
    try:
        n = 0
        while True:
            n += 1
            yield EventStreamMessage({"n": n, "user": user}, event="tick", id=n)
            await asyncio.sleep(every)
    finally:  # runs when the client leaves or the server shuts down
        watching.discard(user)
