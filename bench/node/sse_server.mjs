// h3 v2 createEventStream on srvx: the Node anchor for the SSE workload.
// Usage: node sse_server.mjs PORT;  GET /sse?n=N pushes N events, then closes.
import { H3, createEventStream, serve } from "h3";

const port = Number(process.argv[2]);
const PAYLOAD = process.env.BENCH_SSE_PAYLOAD ?? "x".repeat(64);
const app = new H3();

app.get("/sse", (event) => {
  const n = Math.min(Number(new URL(event.req.url).searchParams.get("n") ?? 1), 10_000_000);
  const stream = createEventStream(event);
  (async () => {
    for (let i = 0; i < n && !stream._isClosed; i++) await stream.push(PAYLOAD);
    await stream.close();
  })();
  return stream;
});

serve(app, { port, hostname: "127.0.0.1", silent: true });
