// Broadcast across processes: S subscribers spread evenly over `sub_urls`
// (one URL per server process), one publisher on each of `pub_urls` (URL +
// ?pub=1). Each publisher sends M messages; the servers share a backplane, so
// every subscriber must get every publisher's M messages (P x M), in each
// publisher's order. A subscriber counts only after its server said `r` (the
// backplane confirmed the subscription). The window runs from the first send
// until every subscriber has all P x M.
// Usage: node ws_backplanes.mjs '{"sub_urls": [...], "pub_urls": [...]}'
import { closeAll, emit, fail, sleep, start, window, WebSocket } from "./common.mjs";
import { openReceivers } from "./ws_frames.mjs";

const args = start({
  sub_urls: [],
  pub_urls: [],
  subscribers: 1000,
  messages: 25,
  warmup: 5,
  timeout: 120,
});
const P = args.pub_urls.length;
const S = args.subscribers;
const filler = "b".repeat(48);
let phase = 0; // char code of the current burst's tag
let expected = 0; // messages per subscriber in the current burst
let complete = 0;
let outOfOrder = 0;
let ready = 0;
let onReady = null;
let onComplete = null;
const next = new Int32Array(S * P); // next sequence number per (subscriber, publisher)
const got = new Int32Array(S); // messages of this burst per subscriber

const R = 0x72; // "r": subscription confirmed
const DOT = 0x2e;
const COLON = 0x3a;
// A frame is "<tag><publisher>.<seq>:<filler>".
function onFrame(i, _opcode, payload) {
  if (payload.length === 1 && payload[0] === R) {
    if (++ready === S) onReady?.();
    return;
  }
  if (payload[0] !== phase) return;
  let k = 1;
  let p = 0;
  for (; k < payload.length && payload[k] !== DOT; k++) p = p * 10 + payload[k] - 48;
  let seq = 0;
  for (k++; k < payload.length && payload[k] !== COLON; k++) seq = seq * 10 + payload[k] - 48;
  const slot = i * P + p;
  if (seq !== next[slot]) outOfOrder++;
  next[slot] = seq + 1;
  if (++got[i] === expected && ++complete === S) onComplete?.();
}

const allReady = new Promise((resolve) => (onReady = resolve));
const groups = [];
const perUrl = Math.ceil(S / args.sub_urls.length);
for (let u = 0, first = 0; first < S; u++, first += perUrl) {
  const count = Math.min(perUrl, S - first);
  groups.push(await openReceivers(args.sub_urls[u], count, (i, o, d) => onFrame(first + i, o, d)));
}
if (!(await Promise.race([allReady.then(() => true), sleep(30000).then(() => false)]))) {
  fail(`${ready} of ${S} subscriptions confirmed within 30 s`);
}
const publishers = await Promise.all(
  args.pub_urls.map(
    (url) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(`${url}?pub=1`, { perMessageDeflate: false });
        ws.once("open", () => resolve(ws));
        ws.once("error", reject);
      }),
  ),
);

async function burst(tag, count, timeoutMs) {
  phase = tag.charCodeAt(0);
  expected = count * P;
  complete = 0;
  got.fill(0);
  next.fill(0);
  const done = new Promise((resolve) => (onComplete = resolve));
  for (let i = 0; i < count; i++) {
    for (let p = 0; p < P; p++) publishers[p].send(`${tag}${p}.${i}:${filler}`);
  }
  const ok = await Promise.race([done.then(() => true), sleep(timeoutMs).then(() => false)]);
  if (!ok) {
    const delivered = got.reduce((a, b) => a + b, 0);
    fail(`burst ${tag}: ${delivered} of ${expected * S} delivered in time`);
  }
}

await burst("w", args.warmup, 30000);
const measured = window();
await burst("m", args.messages, (args.timeout - 10) * 1000);
const stats = measured.stop();
const deliveries = args.messages * P * S;
for (const group of groups) group.close();
await closeAll(publishers);
emit({
  result: {
    ...stats,
    value: deliveries / stats.seconds,
    unit: "deliveries/s",
    deliveries,
    out_of_order: outOfOrder,
    subscribers: S,
    publishers: P,
    messages: args.messages * P,
  },
});
process.exit(0);
