from fastapi import FastAPI, Request

from h3_fastapi import fetch_with_event

API_URL = "http://127.0.0.1:8001"

app = FastAPI()


@app.get("/me")
async def me(request: Request):
    return {"cookie": request.headers.get("cookie")}


@app.get("/dashboard")
async def dashboard(request: Request):
    # In-process: served by this app, with this request's cookies and headers.
    me = await fetch_with_event(request, "/me")
    # External: a plain httpx request, without this request's cookies.
    upstream = await fetch_with_event(request, f"{API_URL}/echo/status")
    return {
        "me": me.json(),
        "status": upstream.status_code,
        "upstream_method": upstream.json()["method"],
    }
