// SSE: open S streams at once, each GET URL?n=N; the server pushes N events
// and ends the response. The window runs from the first request until every
// stream has ended; events are counted by their blank-line terminator ("\n\n"
// or "\r\n\r\n", found with Buffer.indexOf). A warm-up round comes first.
// Usage: node sse_load.mjs '{"url": "http://.../sse", "streams": 100, "events": 1000}'
import net from "node:net";
import { emit, fail, start, window } from "./common.mjs";

const args = start({ url: "", streams: 10, events: 10000, warmup_events: 200, timeout: 120 });

const LF2 = Buffer.from("\n\n");
const CRLF2 = Buffer.from("\r\n\r\n");
const url = new URL(args.url);

/** Occurrences of `pattern` in `data` that end past the first `skip` bytes. */
function countEnding(data, pattern, skip) {
  let count = 0;
  let at = data.indexOf(pattern, Math.max(0, skip - pattern.length + 1));
  while (at !== -1) {
    count++;
    at = data.indexOf(pattern, at + pattern.length);
  }
  return count;
}

// A raw TCP client: node:http's per-chunk stream machinery costs more than the
// servers under test once every event is its own HTTP chunk. Events are counted
// in the raw bytes: chunk-size lines never hold a blank line, and the final
// "0\r\n\r\n" of a chunked body is taken off the count.
// Each read is paused until the next 1 ms tick: a server that writes every
// event separately would otherwise cost this process one read per event, as
// much CPU as the server spends; paused, the kernel gathers them.
const paused = new Set();
const ticker = setInterval(() => {
  for (const socket of paused) socket.resume();
  paused.clear();
}, 1);

function stream(n) {
  return new Promise((resolve) => {
    let head = null; // the response head, once complete
    let pending = Buffer.alloc(0);
    let carry = Buffer.alloc(0); // the last 3 body bytes, for a terminator split across reads
    let events = 0;
    function onRead(nread, buffer) {
      let data = buffer.subarray(0, nread);
      if (head === null) {
        pending = Buffer.concat([pending, data]);
        const end = pending.indexOf(CRLF2);
        if (end === -1) return;
        head = pending.subarray(0, end).toString("latin1");
        data = pending.subarray(end + 4);
      }
      const body = carry.length ? Buffer.concat([carry, data]) : data;
      events += countEnding(body, LF2, carry.length) + countEnding(body, CRLF2, carry.length);
      carry = Buffer.from(body.subarray(Math.max(0, body.length - 3)));
      socket.pause();
      paused.add(socket);
    }
    // `onread` reads into one reused buffer, without the stream machinery.
    const socket = net.connect(
      {
        host: url.hostname,
        port: Number(url.port),
        onread: { buffer: Buffer.allocUnsafe(256 * 1024), callback: onRead },
      },
      () => {
        socket.write(
          `GET ${url.pathname}?n=${n} HTTP/1.1\r\nHost: ${url.host}\r\n` +
            "Accept: text/event-stream\r\nConnection: close\r\n\r\n",
        );
      },
    );
    socket.on("end", () => {
      paused.delete(socket);
      const status = head ? Number(head.split(" ")[1]) : 0;
      const chunked = head ? /\r\ntransfer-encoding:\s*chunked/i.test(head) : false;
      resolve({ events: chunked ? events - 1 : events, status });
    });
    socket.on("error", (err) => resolve({ events, error: String(err) }));
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
