"""A proxy in front of ``H3_TEST_UPSTREAM`` plus a plain route, for tests/test_server_headers.py.

``python -m tests.apps.server_headers_app PORT`` serves it through ``serve()``;
``tests.apps.server_headers_app:app`` is the same app for any ASGI server's CLI.
"""

from __future__ import annotations

import os
import sys

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from h3_fastapi import proxy, serve

UPSTREAM = os.environ.get("H3_TEST_UPSTREAM", "http://127.0.0.1:9")

app = FastAPI()


@app.get("/proxied")
async def proxied(request: Request) -> Response:
    return await proxy(request, UPSTREAM + "/hello")


@app.get("/plain")
def plain() -> dict[str, bool]:
    return {"ok": True}


if __name__ == "__main__":
    serve(app, port=int(sys.argv[1]), log_level="warning")
