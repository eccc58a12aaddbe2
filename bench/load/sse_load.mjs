// SSE: open S streams at once, each GET URL?n=N; the server pushes N events
// and ends the response. The window runs from the first request until every
// stream has ended; events are counted by their blank-line terminator (CR
// ignored, so "\r\n\r\n" and "\n\n" both count). A warm-up round comes first.
// Usage: node sse_load.mjs '{"url": "http://.../sse", "streams": 100, "events": 1000}'
import http from "node:http";
import { emit, fail, start, window } from "./common.mjs";

const args = start({ url: "", streams: 10, events: 10000, warmup_events: 200, timeout: 120 });

function stream(n) {
  return new Promise((resolve) => {
    const req = http.get(`${args.url}?n=${n}`, { agent: false }, (res) => {
      let events = 0;
      let last = 0; // the previous non-CR byte, carried across chunks
      res.on("data", (chunk) => {
        for (let i = 0; i < chunk.length; i++) {
          const byte = chunk[i];
          if (byte === 13) continue;
          if (byte === 10 && last === 10) {
            events++;
            last = 0;
          } else last = byte;
        }
      });
      res.on("end", () => resolve({ events, status: res.statusCode, type: res.headers["content-type"] }));
      res.on("error", (err) => resolve({ events, error: String(err) }));
    });
    req.on("error", (err) => resolve({ events: 0, error: String(err) }));
  });
}

async function round(n) {
  const results = await Promise.all(Array.from({ length: args.streams }, () => stream(n)));
  const short = results.filter((r) => r.events !== n || r.error || r.status !== 200);
  if (short.length) fail(`${short.length} streams incomplete`, { example: short[0], expected: n });
  return results.reduce((sum, r) => sum + r.events, 0);
}

await round(args.warmup_events);
const measured = window();
const events = await round(args.events);
const stats = measured.stop();
emit({
  result: {
    ...stats,
    value: events / stats.seconds,
    unit: "events/s",
    events,
    streams: args.streams,
  },
});
process.exit(0);
