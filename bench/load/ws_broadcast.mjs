// Broadcast: S subscribers on URL, one publisher on URL?pub=1 sends M
// messages back to back; the server relays each to every subscriber. The
// window runs from the first send until every subscriber has all M
// messages. With "paced": true the publisher sends each message only once every
// subscriber has the one before (no burst for a server to batch).
// Usage: node ws_broadcast.mjs '{"url": "ws://.../broadcast"}'
import { closeAll, emit, fail, sleep, start, window, WebSocket } from "./common.mjs";
import { openReceivers } from "./ws_frames.mjs";

const args = start({
  url: "",
  subscribers: 1000,
  messages: 100,
  warmup: 10,
  timeout: 120,
  paced: false,
});
const filler = "b".repeat(48);
let phase = "w";
let expected = 0;
let complete = 0;
let outOfOrder = 0;
let onComplete = null;
const got = new Int32Array(args.subscribers);

const COLON = 0x3a;
// Subscribers use the lean client in ws_frames.mjs: a frame is "<phase><seq>:...".
const receivers = await openReceivers(args.url, args.subscribers, (i, _opcode, payload) => {
  if (payload[0] !== phase.charCodeAt(0)) return;
  let seq = 0;
  for (let k = 1; k < payload.length && payload[k] !== COLON; k++) seq = seq * 10 + payload[k] - 48;
  if (seq !== got[i]) outOfOrder++;
  got[i] = seq + 1;
  if (got[i] === expected && ++complete === args.subscribers) onComplete?.();
});
const publisher = await new Promise((resolve, reject) => {
  const ws = new WebSocket(`${args.url}?pub=1`, { perMessageDeflate: false });
  ws.once("open", () => resolve(ws));
  ws.once("error", reject);
});
await sleep(200); // let the server finish the subscriptions

async function burst(tag, count, timeoutMs) {
  phase = tag;
  expected = count;
  complete = 0;
  got.fill(0);
  const done = new Promise((resolve) => (onComplete = resolve));
  for (let i = 0; i < count; i++) publisher.send(`${tag}${i}:${filler}`);
  const ok = await Promise.race([done.then(() => true), sleep(timeoutMs).then(() => false)]);
  if (!ok) {
    const delivered = got.reduce((a, b) => a + b, 0);
    fail(`burst ${tag}: ${delivered} of ${count * args.subscribers} delivered in time`);
  }
}

async function paced(tag, count, timeoutMs) {
  phase = tag;
  got.fill(0);
  const deadline = Date.now() + timeoutMs;
  for (let i = 0; i < count; i++) {
    expected = i + 1;
    complete = 0;
    const done = new Promise((resolve) => (onComplete = resolve));
    publisher.send(`${tag}${i}:${filler}`);
    const left = Math.max(0, deadline - Date.now());
    const ok = await Promise.race([done.then(() => true), sleep(left).then(() => false)]);
    if (!ok) fail(`paced ${tag}: message ${i} not delivered to every subscriber in time`);
  }
}

const send = args.paced ? paced : burst;
await send("w", args.warmup, 30000);
const measured = window();
await send("m", args.messages, (args.timeout - 10) * 1000);
const stats = measured.stop();
const deliveries = args.messages * args.subscribers;
receivers.close();
await closeAll([publisher]);
emit({
  result: {
    ...stats,
    value: deliveries / stats.seconds,
    unit: "deliveries/s",
    deliveries,
    out_of_order: outOfOrder,
    subscribers: args.subscribers,
    messages: args.messages,
    paced: args.paced,
  },
});
process.exit(0);
