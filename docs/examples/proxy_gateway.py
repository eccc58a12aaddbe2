from fastapi import FastAPI, HTTPException, Request

from h3_fastapi import join_proxy_path, proxy_request

API_URL = "http://127.0.0.1:8001"  # the service behind this gateway
TIMEOUT = 10.0  # seconds to wait for the upstream's response headers (then 504)

app = FastAPI()


@app.api_route("/api/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def api(request: Request, path: str):
    # Not f"{API_URL}/{path}": "../admin" (sent as "%2e%2e/admin") would leave API_URL.
    try:
        target = join_proxy_path(API_URL, path, request.url.query)
    except ValueError:
        raise HTTPException(status_code=400, detail="Bad path") from None
    return await proxy_request(
        request,
        target,
        xfwd=True,  # tell the service who the client is
        filter_headers=["cookie"],  # the service does not need our session cookie
        cookie_domain_rewrite="",  # its cookies belong to this host...
        cookie_path_rewrite={"/": "/api/"},  # ...under /api/
        timeout=TIMEOUT,
    )
