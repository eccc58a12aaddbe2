// HTTP GET load over many keep-alive connections, wrk-style or wrk2-style.
//
// mode "closed" (wrk): every connection sends its next request as soon as the
// previous response has ended; the rate is what the server sustains.
// mode "open" (wrk2): requests are due at a fixed `rate`, evenly spaced, whatever
// the server does; a due request waits for a free connection. Latency is taken
// from the time the request was due, not from when it could be sent, so a
// server that falls behind shows it in p50/p99 (no coordinated omission).
// Requests still unanswered when the drain ends count with the time waited so far.
//
// All `connections` sockets are opened before the warm-up and reused in turn
// (FIFO), so every one of them carries traffic.
// Usage: node http_open.mjs '{"url": "http://...", "mode": "open", "rate": 800}'
import http from "node:http";
import { emit, fail, sleep, start, window } from "./common.mjs";

const args = start({
  url: "", mode: "closed", connections: 50, rate: 1000, warmup: 1, seconds: 3,
  expect_bytes: -1, drain: 5, timeout: 90,
});
if (!["closed", "open"].includes(args.mode)) fail(`unknown mode ${args.mode}`);
const agent = new http.Agent({ keepAlive: true, maxSockets: args.connections, scheduling: "fifo" });

let counting = false; // responses inside the measured window count toward the rate
let windowStart = 0n;
let windowEnd = 0n;
let stopping = false;
let requests = 0;
let bytes = 0;
let errors = 0;
let firstError = null;
const latencies = []; // ms, for requests due inside the window (open) or ended in it (closed)
const pending = new Set(); // due times (ns) of requests due in the window, not yet answered

function get(due) {
  const measured = due >= windowStart && windowStart > 0n && (windowEnd === 0n || due < windowEnd);
  if (measured && args.mode === "open") pending.add(due);
  return new Promise((resolve) => {
    const req = http.get(args.url, { agent }, (res) => {
      let size = 0;
      res.on("data", (chunk) => {
        size += chunk.length;
        if (counting) bytes += chunk.length;
      });
      res.on("end", () => {
        const now = process.hrtime.bigint();
        if (res.statusCode !== 200 || (args.expect_bytes >= 0 && size !== args.expect_bytes)) {
          errors++;
          firstError ??= `status ${res.statusCode}, ${size} bytes`;
        } else {
          if (counting) requests++;
          if (args.mode === "open" ? pending.delete(due) : counting) {
            latencies.push(Number(now - due) / 1e6);
          }
        }
        resolve();
      });
      res.on("error", () => {
        errors++;
        resolve();
      });
    });
    req.on("error", (err) => {
      errors++;
      firstError ??= String(err);
      resolve();
    });
  });
}

// Open every connection first: `connections` requests at once, then keep them.
await Promise.all(Array.from({ length: args.connections }, () => get(process.hrtime.bigint())));
if (errors) fail(`${errors} of ${args.connections} first requests failed: ${firstError}`);
const opened = Object.values(agent.freeSockets).reduce((n, list) => n + list.length, 0);

let loops;
if (args.mode === "closed") {
  const worker = async () => {
    while (!stopping) await get(process.hrtime.bigint());
  };
  loops = Array.from({ length: args.connections }, worker);
} else {
  // Due times on a fixed grid from t0; a 1 ms tick releases everything due by now.
  // Due requests beyond the free connections queue inside the agent (FIFO).
  const interval = 1e9 / args.rate;
  const t0 = process.hrtime.bigint();
  let issued = 0;
  const inflight = new Set();
  loops = [
    (async () => {
      while (!stopping) {
        const elapsed = Number(process.hrtime.bigint() - t0);
        while (issued * interval <= elapsed) {
          const due = t0 + BigInt(Math.round(issued * interval));
          issued++;
          const p = get(due);
          inflight.add(p);
          p.then(() => inflight.delete(p));
        }
        await sleep(1);
      }
      await Promise.all(inflight);
    })(),
  ];
}

await sleep(args.warmup * 1000);
windowStart = process.hrtime.bigint();
counting = true;
const measuredWindow = window();
await sleep(args.seconds * 1000);
counting = false;
windowEnd = process.hrtime.bigint();
const stats = measuredWindow.stop();
stopping = true;
await Promise.race([Promise.all(loops), sleep(args.drain * 1000)]);
const cut = process.hrtime.bigint();
const unanswered = pending.size;
for (const due of pending) latencies.push(Number(cut - due) / 1e6);
agent.destroy();
if (errors) fail(`${errors} failed requests: ${firstError}`);

latencies.sort((a, b) => a - b);
const pct = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] : null);
emit({
  result: {
    ...stats,
    value: requests / stats.seconds,
    unit: "requests/s",
    mib_per_s: bytes / stats.seconds / 1048576,
    requests,
    bytes,
    mode: args.mode,
    connections: args.connections,
    connections_opened: opened,
    rate: args.mode === "open" ? args.rate : null,
    p50_ms: pct(0.5),
    p99_ms: pct(0.99),
    max_ms: latencies.length ? latencies[latencies.length - 1] : null,
    unanswered,
  },
});
process.exit(0);
