"""One ``publish`` reaches every subscribed event stream (and WebSocket peers)."""

from fastapi import FastAPI, Request

from h3_fastapi import EventStream, publish

app = FastAPI()


@app.get("/news")
async def news(request: Request) -> EventStream:
    stream = EventStream(request, ping_interval=20)
    stream.subscribe("news")  # left automatically when the stream ends
    return stream


@app.post("/news")
def post_news(item: dict) -> dict:
    publish("news", item)  # safe from the threadpool
    return {"published": True}
