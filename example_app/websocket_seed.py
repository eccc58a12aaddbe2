"""h3's WebSocket example (``examples/websocket.mjs``), ported line for line.

A page at ``/`` and a chat WebSocket at ``/_ws`` that logs every hook and
answers ``ping`` with ``pong``. The page is the chat page shipped in this
package; set ``H3_DEMO_URL`` to proxy a remote page instead, as h3 does with
the crossws playground. Run it alone with ``python -m example_app.websocket_seed``.
"""

import os
from pathlib import Path

from starlette.responses import HTMLResponse

from h3_fastapi import H3, define_websocket_handler, proxy, serve

app = H3()

demo_url = os.environ.get("H3_DEMO_URL")  # e.g. the crossws playground page
chat_page = (Path(__file__).parent / "static" / "chat.html").read_text(encoding="utf-8")


async def page(event):
    if demo_url:
        response = await proxy(event, demo_url)
        # raw.githubusercontent.com sends text/plain: let the browser render it
        response.headers["content-type"] = "text/html; charset=utf-8"
        return response
    return HTMLResponse(chat_page)


class Hooks:
    # def upgrade(self, request): ...

    def open(self, peer):
        print("[open]", peer)

        # greet the new client
        peer.send("Welcome to the server!")

        # put it on the chat topic
        peer.subscribe("chat")

        # tell everyone else
        peer.publish("chat", f"[system] {peer} joined!")

    def message(self, peer, message):
        print("[message]", peer)

        if message.text() == "ping":
            # answer the sender only
            peer.send("pong")
            return

        # forward to every other subscriber
        peer.publish("chat", f"[{peer}] {message}")

        # and echo it to the sender
        peer.send(message)

    def close(self, peer, details):
        print("[close]", peer, details.code)
        peer.publish("chat", f"[system] {peer} has left the chat!")
        peer.unsubscribe("chat")

    def error(self, peer, error):
        print("[error]", peer, error)


websocket = define_websocket_handler(Hooks)

app.get("/", page)
app.get("/_ws", websocket)

if __name__ == "__main__":
    serve(app)
