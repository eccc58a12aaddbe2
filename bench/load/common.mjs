// Shared by the load generators: argument parsing, CPU accounting, output.
// Every generator takes one JSON argument and writes JSON lines to stdout:
// {"event": "window_start"} / {"event": "window_end"} around the measured
// window (the harness samples the server's CPU there), then one
// {"result": {...}} line. Every loop is bounded by a count and a deadline.
import { createRequire } from "node:module";

const require = createRequire(new URL("../node/package.json", import.meta.url));

/** The `ws` client from bench/node/node_modules. */
export const WebSocket = require("ws");

/** Parse the JSON argument and arm a hard deadline that exits with an error. */
export function start(defaults) {
  const args = { ...defaults, ...JSON.parse(process.argv[2] ?? "{}") };
  const hard = setTimeout(() => fail(`timed out after ${args.timeout}s`), args.timeout * 1000);
  hard.unref();
  return args;
}

export function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

export function fail(message, extra = {}) {
  emit({ error: message, ...extra });
  process.exit(1);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Marks the measured window; `stop()` returns its seconds and this process's CPU share. */
export function window() {
  emit({ event: "window_start" });
  const t0 = process.hrtime.bigint();
  const cpu0 = process.cpuUsage();
  return {
    stop() {
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const cpu = process.cpuUsage(cpu0);
      emit({ event: "window_end" });
      const cpuSeconds = (cpu.user + cpu.system) / 1e6;
      return { seconds, load_cpu_s: cpuSeconds, load_cpu_pct: (100 * cpuSeconds) / seconds };
    },
  };
}

/** Open `count` WebSocket clients, at most `parallel` handshakes at a time. */
export async function connectAll(url, count, parallel = 200, onMessage = null) {
  const sockets = new Array(count);
  let next = 0;
  let errors = 0;
  async function worker() {
    while (next < count) {
      const index = next++;
      sockets[index] = await new Promise((resolve) => {
        // No permessage-deflate: the server must not compress (uvicorn offers it).
        const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: 20000 });
        if (onMessage) ws.on("message", (data, isBinary) => onMessage(index, ws, data, isBinary));
        ws.once("open", () => resolve(ws));
        ws.once("error", () => {
          errors++;
          resolve(null);
        });
      });
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, count) }, worker));
  if (errors) fail(`${errors} of ${count} WebSocket connections failed`);
  return sockets;
}

/** Close every socket and wait (bounded) for the close handshakes. */
export async function closeAll(sockets, ms = 5000) {
  const open = sockets.filter((ws) => ws && ws.readyState === WebSocket.OPEN);
  const closed = Promise.all(open.map((ws) => new Promise((resolve) => {
    ws.once("close", resolve);
    ws.close(1000);
  })));
  await Promise.race([closed, sleep(ms)]);
  for (const ws of open) if (ws.readyState !== WebSocket.CLOSED) ws.terminate();
}

