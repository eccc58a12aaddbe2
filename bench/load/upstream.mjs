// The proxy workload's upstream (plain node:http, on the load core).
// Usage: node upstream.mjs PORT;  /small -> 1 KiB, /big -> 10 MiB (64 KiB writes)
import http from "node:http";

const port = Number(process.argv[2]);
const small = Buffer.alloc(1024, "s");
const chunk = Buffer.alloc(64 * 1024, "b");
const bigChunks = 160; // 10 MiB

http
  .createServer((req, res) => {
    if (req.url.startsWith("/big")) {
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": chunk.length * bigChunks });
      let sent = 0;
      const pump = () => {
        while (sent < bigChunks) {
          sent++;
          if (!res.write(chunk)) return res.once("drain", pump);
        }
        res.end();
      };
      pump();
      return;
    }
    res.writeHead(200, { "content-type": "application/octet-stream", "content-length": small.length });
    res.end(small);
  })
  .listen(port, "127.0.0.1");
