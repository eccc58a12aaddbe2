// Idle connections: open N WebSockets, print {"event": "ready"}, hold them
// until a line arrives on stdin (or `hold` seconds pass), then drop them.
// The harness raises RLIMIT_NOFILE before starting this process.
// Usage: node ws_idle.mjs '{"url": "ws://.../echo", "connections": 10000}'
import { connectAll, emit, start } from "./common.mjs";

const args = start({ url: "", connections: 10000, parallel: 256, hold: 120, timeout: 240 });
const t0 = process.hrtime.bigint();
const sockets = await connectAll(args.url, args.connections, args.parallel);
const connectSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
let dropped = 0;
for (const ws of sockets) ws.once("close", () => dropped++);
emit({ event: "ready", connect_seconds: connectSeconds });

await new Promise((resolve) => {
  const timer = setTimeout(resolve, args.hold * 1000);
  process.stdin.once("data", () => {
    clearTimeout(timer);
    resolve();
  });
});
const droppedWhileIdle = dropped;
// No close handshakes: 10,000 of them only make the run longer.
for (const ws of sockets) ws.terminate();
emit({
  result: {
    value: args.connections,
    unit: "connections",
    connect_seconds: connectSeconds,
    dropped_while_idle: droppedWhileIdle,
  },
});
process.exit(0);
