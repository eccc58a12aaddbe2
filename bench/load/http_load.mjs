// HTTP GET load over keep-alive connections: C workers request URL in a
// loop; counts completed requests and body bytes inside the window, then
// lets in-flight requests finish. Usage: node http_load.mjs '{"url": "http://..."}'
import http from "node:http";
import { emit, fail, sleep, start, window } from "./common.mjs";

const args = start({
  url: "", concurrency: 32, warmup: 1, seconds: 3, expect_bytes: -1, max_requests: 10_000_000, timeout: 60,
});
const agent = new http.Agent({ keepAlive: true, maxSockets: args.concurrency });
let counting = false;
let stopping = false;
let issued = 0;
let requests = 0;
let bytes = 0;
let errors = 0;
let firstError = null;

function get() {
  return new Promise((resolve) => {
    const req = http.get(args.url, { agent }, (res) => {
      let size = 0;
      res.on("data", (chunk) => {
        size += chunk.length;
        if (counting) bytes += chunk.length;
      });
      res.on("end", () => {
        if (res.statusCode !== 200 || (args.expect_bytes >= 0 && size !== args.expect_bytes)) {
          errors++;
          firstError ??= `status ${res.statusCode}, ${size} bytes`;
        } else if (counting) requests++;
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

async function worker() {
  while (!stopping && issued < args.max_requests) {
    issued++;
    await get();
  }
}

const workers = Array.from({ length: args.concurrency }, worker);
await sleep(args.warmup * 1000);
counting = true;
const measured = window();
await sleep(args.seconds * 1000);
counting = false;
const stats = measured.stop();
stopping = true;
await Promise.race([Promise.all(workers), sleep(20000)]);
agent.destroy();
if (errors) fail(`${errors} failed requests: ${firstError}`);
emit({
  result: {
    ...stats,
    value: requests / stats.seconds,
    unit: "requests/s",
    mib_per_s: bytes / stats.seconds / 1048576,
    requests,
    bytes,
    concurrency: args.concurrency,
  },
});
process.exit(0);
