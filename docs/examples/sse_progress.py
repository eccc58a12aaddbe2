"""A plain ``def`` endpoint: push from a worker thread, then close."""

import threading
import time

from fastapi import FastAPI, Request

from h3_fastapi import EventStream

app = FastAPI()


def slow_job(stream: EventStream, steps: int) -> None:
    for step in range(1, steps + 1):
        time.sleep(0.01)  # the real work
        stream.push({"data": {"done": step, "of": steps}, "event": "progress"})
    stream.push({"data": "finished", "event": "result"})
    stream.close()  # everything pushed is still sent first


@app.get("/progress")
def progress(request: Request, steps: int = 10) -> EventStream:
    stream = EventStream(request)
    threading.Thread(target=slow_job, args=(stream, steps), daemon=True).start()
    return stream
