from fastapi import FastAPI, HTTPException, Request

from h3_fastapi import proxy

app = FastAPI()


@app.get("/preview")
async def preview(request: Request, url: str):
    if not url.startswith(("http://", "https://")):
        raise HTTPException(400, "http(s) URLs only")
    # The guard checks the resolved addresses: a name that points at
    # 127.0.0.1 or 169.254.169.254 is refused (502) like the literal IP.
    return await proxy(request, url, deny_private=True, timeout=5)
