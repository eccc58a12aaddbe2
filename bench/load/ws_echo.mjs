// WebSocket echo: N connections ping-pong one text message each; counts
// round trips in the window. Usage: node ws_echo.mjs '{"url": "ws://..."}'
// payload "text": `size` bytes of "e" (only the echo's length is checked).
// payload "json": `{"id":<connection>,"text":"eee..."}` of `size` bytes, the
// same text for every message of a connection; each echo must be exactly it.
import { closeAll, connectAll, emit, fail, sleep, start, window } from "./common.mjs";

const args = start({
  url: "",
  connections: 100,
  warmup: 1,
  seconds: 3,
  size: 32,
  payload: "text",
  timeout: 60,
});
const json = args.payload === "json";
if (!json && args.payload !== "text") fail(`unknown payload ${args.payload}`);

function jsonPayload(id) {
  const empty = JSON.stringify({ id, text: "" });
  return JSON.stringify({ id, text: "e".repeat(Math.max(0, args.size - empty.length)) });
}

const text = "e".repeat(args.size);
const payloads = Array.from({ length: args.connections }, (_, i) => (json ? jsonPayload(i) : text));
const expected = payloads.map((p) => Buffer.from(p));
let counting = false;
let running = true;
let count = 0;
let wrong = 0;

const sockets = await connectAll(args.url, args.connections, 100, (i, ws, data) => {
  if (json ? !expected[i].equals(data) : data.length !== args.size) wrong++;
  if (counting) count++;
  if (running) ws.send(payloads[i]);
});
sockets.forEach((ws, i) => ws.send(payloads[i]));
await sleep(args.warmup * 1000);
counting = true;
const measured = window();
await sleep(args.seconds * 1000);
counting = false;
const stats = measured.stop();
running = false;
const closed = sockets.filter((ws) => ws.readyState !== ws.OPEN).length;
if (closed) fail(`${closed} of ${args.connections} connections closed during the run`);
if (json && wrong) fail(`${wrong} echoes differed from what was sent`);
await closeAll(sockets);
emit({
  result: {
    ...stats,
    value: count / stats.seconds,
    unit: "messages/s",
    messages: count,
    wrong_size: wrong,
    payload: args.payload,
    message_bytes: expected[0].length,
    connections: args.connections,
  },
});
process.exit(0);
