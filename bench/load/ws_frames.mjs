// A minimal WebSocket client for receiving many small frames cheaply: the
// handshake and the frame parser are written here on net.Socket with `onread`
// (one reused buffer per socket, no stream machinery), so a frame costs a few
// buffer reads instead of the ws package's per-message events. No extensions
// are offered (so no permessage-deflate). Server frames are unmasked; our
// frames (pong, close) are masked as RFC 6455 requires.
import crypto from "node:crypto";
import net from "node:net";

const HEAD_END = Buffer.from("\r\n\r\n");

function masked(opcode, payload) {
  const mask = crypto.randomBytes(4);
  const head = Buffer.from([0x80 | opcode, 0x80 | payload.length]);
  const body = Buffer.alloc(payload.length);
  for (let i = 0; i < payload.length; i++) body[i] = payload[i] ^ mask[i & 3];
  return Buffer.concat([head, mask, body]);
}

/**
 * Open `count` connections to `url` (ws://host:port/path), at most `parallel`
 * handshakes at a time. `onFrame(index, opcode, payload)` gets every text or
 * binary frame. Resolves to `{ sockets, close() }`.
 */
export async function openReceivers(url, count, onFrame, parallel = 200) {
  const target = new URL(url);
  const sockets = new Array(count);
  let next = 0;

  function open(index) {
    return new Promise((resolve, reject) => {
      const key = crypto.randomBytes(16).toString("base64");
      let buffer = Buffer.alloc(0); // bytes of an unfinished frame (or head)
      let upgraded = false;
      function onRead(nread, shared) {
        const chunk = shared.subarray(0, nread);
        let data = buffer.length ? Buffer.concat([buffer, chunk]) : chunk;
        if (!upgraded) {
          const end = data.indexOf(HEAD_END);
          if (end === -1) {
            buffer = Buffer.from(data);
            return;
          }
          const head = data.subarray(0, end).toString("latin1");
          if (!head.startsWith("HTTP/1.1 101")) {
            reject(new Error(`handshake refused: ${head.split("\r\n")[0]}`));
            socket.destroy();
            return;
          }
          upgraded = true;
          data = data.subarray(end + 4);
          resolve(socket);
        }
        let at = 0;
        while (data.length - at >= 2) {
          const opcode = data[at] & 0x0f;
          let length = data[at + 1] & 0x7f;
          let start = at + 2;
          if (length === 126) {
            if (data.length - at < 4) break;
            length = data.readUInt16BE(at + 2);
            start = at + 4;
          } else if (length === 127) {
            if (data.length - at < 10) break;
            length = Number(data.readBigUInt64BE(at + 2));
            start = at + 10;
          }
          if (data.length < start + length) break;
          const payload = data.subarray(start, start + length);
          if (opcode === 1 || opcode === 2 || opcode === 0) onFrame(index, opcode, payload);
          else if (opcode === 9) socket.write(masked(0xa, payload)); // ping -> pong
          at = start + length;
        }
        // `shared` is reused by the next read: keep a copy of what is left.
        buffer = at === data.length ? Buffer.alloc(0) : Buffer.from(data.subarray(at));
      }
      const socket = net.connect(
        {
          host: target.hostname,
          port: Number(target.port),
          onread: { buffer: Buffer.allocUnsafe(64 * 1024), callback: onRead },
        },
        () => {
          socket.write(
            `GET ${target.pathname}${target.search} HTTP/1.1\r\nHost: ${target.host}\r\n` +
              "Upgrade: websocket\r\nConnection: Upgrade\r\n" +
              `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
          );
        },
      );
      socket.setNoDelay(true);
      socket.on("error", reject);
    });
  }

  async function worker() {
    while (next < count) {
      const index = next++;
      sockets[index] = await open(index);
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, count) }, worker));
  return {
    sockets,
    close() {
      const code = Buffer.from([0x03, 0xe8]); // 1000
      for (const socket of sockets) {
        socket.end(masked(0x8, code));
        setTimeout(() => socket.destroy(), 1000).unref();
      }
    },
  };
}
