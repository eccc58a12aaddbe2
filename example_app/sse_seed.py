"""h3's Server-Sent Events example (``examples/server-sent-events.mjs``), ported line for line.

``/`` streams ``Hello world`` every second; the timer is cleared in
``on_closed`` when the client leaves. Run it alone with
``python -m example_app.sse_seed``.
"""

import asyncio

from h3_fastapi import H3, EventStream, serve

app = H3()


async def hello(event):
    event_stream = EventStream(event)

    # push once a second
    async def every_second():
        while True:
            await asyncio.sleep(1)
            await event_stream.push("Hello world")

    interval = asyncio.create_task(every_second())

    # stop the timer when the stream ends, whatever ended it
    def on_closed():
        print("Connection closed")
        interval.cancel()

    event_stream.on_closed(on_closed)

    return event_stream


app.get("/", hello)

if __name__ == "__main__":
    serve(app)
