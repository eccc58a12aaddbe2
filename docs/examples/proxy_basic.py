from h3_fastapi import H3, define_websocket_handler, proxy, serve

PAGE_URL = "https://example.com/"  # any page; its body streams through

app = H3()

app.get("/", lambda event: proxy(event, PAGE_URL))

app.use(
    "/_ws",
    define_websocket_handler(
        open=lambda peer: peer.send("Welcome!"),
        message=lambda peer, message: peer.send(message),
    ),
)

if __name__ == "__main__":
    serve(app)
