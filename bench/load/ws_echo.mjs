// WebSocket echo: N connections ping-pong one text message each; counts
// round trips in the window. Usage: node ws_echo.mjs '{"url": "ws://..."}'
import { closeAll, connectAll, emit, sleep, start, window } from "./common.mjs";

const args = start({ url: "", connections: 100, warmup: 1, seconds: 3, size: 32, timeout: 60 });
const payload = "e".repeat(args.size);
let counting = false;
let running = true;
let count = 0;
let wrong = 0;

const sockets = await connectAll(args.url, args.connections, 100, (_i, ws, data) => {
  if (data.length !== args.size) wrong++;
  if (counting) count++;
  if (running) ws.send(payload);
});
for (const ws of sockets) ws.send(payload);
await sleep(args.warmup * 1000);
counting = true;
const measured = window();
await sleep(args.seconds * 1000);
counting = false;
const stats = measured.stop();
running = false;
await closeAll(sockets);
emit({
  result: {
    ...stats,
    value: count / stats.seconds,
    unit: "messages/s",
    messages: count,
    wrong_size: wrong,
    connections: args.connections,
  },
});
process.exit(0);
