/**
 * What the hub adds per delivery, without sockets: one group of N connections whose `send` only
 * counts bytes, messages appended one at a time, against a bare loop that builds the same frame
 * once per message and hands it to the same N no-op senders. The difference is the hub's own
 * bookkeeping (ordering cursors, hold and slow-consumer checks), to set beside the few
 * microseconds a real socket write costs.
 *
 *   taskset -c 0 deno run -A --config deno.json bench/hub_overhead.ts [--clients 500]
 *     [--messages 20000]
 *
 * (`--config deno.json`: bench/ is an npm package of its own, and the hub imports the app's
 * dependencies.)
 *
 * @module
 */
import { LocalNetwork } from "../chat/bus.ts";
import { Hub } from "../chat/hub.ts";
import type { ChatMessage } from "../chat/protocol.ts";
import { parseArgs, round } from "./lib.ts";

const args = parseArgs(Deno.args);
const N = Number(args.clients ?? 500);
const M = Number(args.messages ?? 20_000);
let bytes = 0;

const hub = new Hub({
  node: "bench",
  log: { range: () => Promise.resolve([]), head: () => Promise.resolve(0) },
  bus: new LocalNetwork().join(),
  maxBufferedBytes: 1 << 30,
  resumeLimit: 500,
});
for (let i = 0; i < N; i++) {
  const conn = {
    id: `c${i}`,
    user: { id: `u${i}`, name: `U${i}` },
    send: (data: string) => void (bytes += data.length),
    bufferedAmount: () => 0,
    close: () => {},
  };
  hub.attach(conn, new Map([["g:bench", 0]]));
  hub.live(conn.id);
}
const bare = Array.from({ length: N }, () => ({
  send: (data: string) => void (bytes += data.length),
}));

// Each side numbers its own messages: the hub must see its conversation without gaps.
let hubSeq = 0;
let bareSeq = 0;
const message = (seq: number): ChatMessage => ({
  conv: "g:bench",
  seq,
  id: `m${seq}`,
  from: "u1",
  name: "U1",
  text: '{"t":123.456,"s":1,"i":2}',
  ts: Date.now(),
  kind: "text",
});

const rows = [];
for (let round_ = 0; round_ < 3; round_++) {
  let t = performance.now();
  for (let i = 0; i < M; i++) hub.appended([message(++hubSeq)]);
  const hubNs = ((performance.now() - t) * 1e6) / (M * N);
  t = performance.now();
  for (let i = 0; i < M; i++) {
    const data = JSON.stringify({ type: "message", ...message(++bareSeq) });
    for (const c of bare) c.send(data);
  }
  const bareNs = ((performance.now() - t) * 1e6) / (M * N);
  rows.push({ round: round_ + 1, hubNs: round(hubNs, 1), bareNs: round(bareNs, 1) });
}
if (hub.stats.delivered !== 3 * M * N || bytes === 0) {
  throw new Error(
    `Expected ${3 * M * N} deliveries, got ${hub.stats.delivered}`,
  );
}
console.log(`N = ${N}, ${M} messages per round; ns per delivery (round 1 includes warm-up)`);
console.table(rows);
hub.close();
Deno.exit(0);
