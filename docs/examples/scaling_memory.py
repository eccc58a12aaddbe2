"""One process, no Redis: MemoryPubSub keeps history for SSE replay too."""

from fastapi import FastAPI, Request

from h3_fastapi import EventStream, MemoryPubSub, create_event_stream

app = FastAPI()

# --8<-- [start:memory]
pubsub = MemoryPubSub(history=100)  # last 100 publishes per topic, in this process


@app.get("/ticks")
async def ticks(request: Request) -> EventStream:
    stream = create_event_stream(request, pubsub=pubsub)
    stream.subscribe("ticks")  # with Last-Event-ID: missed events first
    return stream


@app.post("/ticks")
def tick(value: int) -> dict[str, int]:
    pubsub.publish("ticks", value)  # each event gets an id like "1732860000000-0"
    return {"published": value}


# --8<-- [end:memory]
