"""h3's Server-Sent Events example, ported line for line: "Hello world" every second."""

import asyncio

from h3_fastapi import H3, EventStream, serve

app = H3()


def handler(request):
    stream = EventStream(request)

    # Send a message every second
    async def interval():
        while True:
            await asyncio.sleep(1)
            await stream.push("Hello world")

    task = asyncio.create_task(interval())

    # cleanup the interval when the connection is terminated or the stream is closed
    stream.on_closed(lambda: task.cancel())

    return stream


app.get("/", handler)

if __name__ == "__main__":
    serve(app)
