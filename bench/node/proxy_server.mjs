// h3 v2 proxy() on srvx: the Node anchor for the proxy workload.
// Usage: node proxy_server.mjs PORT UPSTREAM_URL;  GET /proxy/<path> -> UPSTREAM_URL/<path>
import { H3, proxy, serve } from "h3";

const port = Number(process.argv[2]);
const upstream = process.argv[3].replace(/\/$/, "");
const app = new H3();

app.get("/proxy/**", (event) => proxy(event, upstream + event.url.pathname.slice("/proxy".length)));

serve(app, { port, hostname: "127.0.0.1", silent: true });
