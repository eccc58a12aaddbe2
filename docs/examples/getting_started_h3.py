from h3_fastapi import H3, define_websocket_handler, serve

app = H3()

app.get("/", lambda event: "Hello! Open a WebSocket to /_ws.")

app.get(
    "/_ws",
    define_websocket_handler(
        open=lambda peer: peer.send("Welcome!"),
        message=lambda peer, message: peer.send(message),
    ),
)

if __name__ == "__main__":
    serve(app)  # http://127.0.0.1:3000, like h3's serve(app)
