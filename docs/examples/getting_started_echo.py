from fastapi import FastAPI

from h3_fastapi import H3Router

app = FastAPI()
router = H3Router()
router.ws("/echo", {"message": lambda peer, message: peer.send(message)})
app.include_router(router)
