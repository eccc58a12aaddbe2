// h3 v2 + crossws on srvx: the Node anchor for the WebSocket workloads.
// Usage: node ws_server.mjs PORT
//   /echo       sends every message back (echo, and idle connections for memory)
//   /broadcast  subscribes to "bench"; with ?pub=1 it publishes what it receives instead
import { plugin as ws } from "crossws/server";
import { H3, defineWebSocketHandler, serve } from "h3";

const port = Number(process.argv[2]);
const app = new H3();

app.get(
  "/echo",
  defineWebSocketHandler({
    message(peer, message) {
      peer.send(message.text());
    },
  }),
);

app.get(
  "/broadcast",
  defineWebSocketHandler({
    open(peer) {
      if (!peer.request.url.includes("pub=1")) peer.subscribe("bench");
    },
    message(peer, message) {
      peer.publish("bench", message.text());
    },
  }),
);

serve(app, {
  port,
  hostname: "127.0.0.1",
  silent: true,
  plugins: [ws({ resolve: async (req) => (await app.fetch(req)).crossws })],
});
