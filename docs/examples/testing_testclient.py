"""Testing in-process with Starlette's TestClient: no server, no network, plain ``def`` tests."""

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.testclient import WebSocketDenialResponse

from h3_fastapi import H3Router, Message, Peer

# --8<-- [start:app]
router = H3Router()


@router.ws("/_ws")
class Chat:
    def upgrade(self, request: Request) -> Response | dict[str, dict[str, str]]:
        name = request.query_params.get("name")
        if not name:
            return PlainTextResponse("?name= is required", status_code=400)
        return {"context": {"name": name}}

    def open(self, peer: Peer) -> None:
        peer.subscribe("chat")
        peer.send(f"Welcome, {peer.context['name']}!")

    def message(self, peer: Peer, message: Message) -> None:
        peer.publish("chat", f"{peer.context['name']}: {message}")


app = FastAPI()
app.include_router(router)
# --8<-- [end:app]


# --8<-- [start:tests]
def test_a_message_reaches_the_other_peer() -> None:
    with TestClient(app) as client:
        with (
            client.websocket_connect("/_ws?name=ada") as ada,
            client.websocket_connect("/_ws?name=bob") as bob,
        ):
            assert ada.receive_text() == "Welcome, ada!"
            assert bob.receive_text() == "Welcome, bob!"
            ada.send_text("hi bob")
            assert bob.receive_text() == "ada: hi bob"


def test_the_upgrade_hook_rejects_with_a_response() -> None:
    with TestClient(app) as client:
        with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/_ws"):
            pass
        assert denied.value.status_code == 400
        assert denied.value.text == "?name= is required"


def test_plain_http_gets_426() -> None:
    with TestClient(app) as client:
        assert client.get("/_ws").status_code == 426


# --8<-- [end:tests]
