"""Server-Sent Events app for the child-process (SIGTERM) and Chromium tests.

``/events``: says ``hello`` then stays open; ``on_closed`` prints ``closed`` to
stdout so the parent process can count them after a shutdown.

``/page`` + ``/browser-events``: an ``EventSource`` page. The first connection
gets a typed event and a multi-line event, then the server closes the stream;
the browser reconnects with ``Last-Event-ID`` and gets a ``resumed`` event.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import HTMLResponse

from h3_fastapi import EventStream, EventStreamMessage

app = FastAPI()


@app.get("/events")
async def events(request: Request) -> EventStream:
    stream = EventStream(request)
    stream.push("hello")
    stream.on_closed(lambda: print("closed", flush=True))
    return stream


MULTI_LINE = "line 1\nline 2\r\nline 3\rline 4"


@app.get("/browser-events")
async def browser_events(request: Request) -> EventStream:
    stream = EventStream(request)
    if stream.last_event_id is None:
        stream.push(EventStreamMessage("hi", id="1", event="greeting", retry=50))
        stream.push(EventStreamMessage(MULTI_LINE, id="2"))
    else:
        stream.push(EventStreamMessage(f"last={stream.last_event_id}", id="3", event="resumed"))
    stream.close()  # sent after what is queued; the browser then reconnects
    return stream


PAGE = """<!doctype html>
<meta charset="utf-8">
<title>sse</title>
<script>
  window.results = [];
  const source = new EventSource("/browser-events");
  const record = (kind) => (e) =>
    window.results.push({ kind, type: e.type, data: e.data, id: e.lastEventId });
  source.addEventListener("greeting", record("greeting"));
  source.onmessage = record("message");
  source.addEventListener("resumed", (e) => {
    record("resumed")(e);
    source.close();
    window.done = true;
  });
  source.onerror = () => window.results.push({ kind: "error", state: source.readyState });
</script>
"""


@app.get("/page")
async def page() -> HTMLResponse:
    return HTMLResponse(PAGE)
