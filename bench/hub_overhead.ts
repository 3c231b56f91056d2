/**
 * What the hub adds per delivery, without sockets: one group of N connections whose `send` only
 * counts bytes, messages appended one at a time, against a bare loop that builds the same frame
 * once per message and hands it to the same N no-op senders. The difference is the hub's own
 * bookkeeping (ordering cursors, hold and slow-consumer checks), to set beside the few
 * microseconds a real socket write costs.
 *
 *   taskset -c 0 deno run -A --config deno.json bench/hub_overhead.ts [--clients 500]
 *     [--messages 20000] [--outbox] [--touch-mb 0]
 *
 * `--outbox`: each connection sends through a real `SocketOutbox` (batch frames on, as the
 * benchmark's clients ask) in front of its no-op sink, and each message's tick ends (the outboxes
 * flush) before the next; the bare loop stays as it is. `--touch-mb`: between messages, both
 * sides read that many MB of other memory, as the kernel's socket work does between a server's
 * messages, so the hub's objects are not all in the cache.
 *
 * (`--config deno.json`: bench/ is an npm package of its own, and the hub imports the app's
 * dependencies.)
 *
 * @module
 */
import { LocalNetwork } from "../chat/bus.ts";
import { Hub } from "../chat/hub.ts";
import type { ChatMessage } from "../chat/protocol.ts";
import { SocketOutbox } from "../routes/socket_outbox.ts";
import { parseArgs, round } from "./lib.ts";

const args = parseArgs(Deno.args);
const N = Number(args.clients ?? 500);
const M = Number(args.messages ?? 20_000);
const OUTBOX = args.outbox !== undefined;
const TOUCH = new Int32Array((Number(args["touch-mb"] ?? 0) * (1 << 20)) / 4);
let bytes = 0;
let touched = 0;

/** Reads one int per cache line of `TOUCH`. */
function touch(): void {
  for (let i = 0; i < TOUCH.length; i += 16) touched += TOUCH[i];
}

const hub = new Hub({
  node: "bench",
  log: { range: () => Promise.resolve([]), head: () => Promise.resolve(0) },
  bus: new LocalNetwork().join(),
  maxBufferedBytes: 1 << 30,
  resumeLimit: 500,
});
for (let i = 0; i < N; i++) {
  const sink = { readyState: 1, send: (data: string) => void (bytes += data.length) };
  const outbox = OUTBOX ? new SocketOutbox(sink, { batch: true }) : sink;
  const conn = {
    id: `c${i}`,
    user: { id: `u${i}`, name: `U${i}` },
    send: (data: string) => outbox.send(data),
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
  for (let i = 0; i < M; i++) {
    hub.appended([message(++hubSeq)]);
    if (OUTBOX) await Promise.resolve();
    if (TOUCH.length) touch();
  }
  const hubNs = ((performance.now() - t) * 1e6) / (M * N);
  t = performance.now();
  for (let i = 0; i < M; i++) {
    const data = JSON.stringify({ type: "message", ...message(++bareSeq) });
    for (const c of bare) c.send(data);
    if (TOUCH.length) touch();
  }
  const bareNs = ((performance.now() - t) * 1e6) / (M * N);
  rows.push({ round: round_ + 1, hubNs: round(hubNs, 1), bareNs: round(bareNs, 1) });
}
if (hub.stats.delivered !== 3 * M * N || bytes === 0) {
  throw new Error(
    `Expected ${3 * M * N} deliveries, got ${hub.stats.delivered}`,
  );
}
console.log(
  `N = ${N}, ${M} messages per round${OUTBOX ? ", outboxes" : ""}${
    TOUCH.length ? `, ${args["touch-mb"]} MB touched per message (${touched})` : ""
  }; ns per delivery (round 1 includes warm-up)`,
);
console.table(rows);
hub.close();
Deno.exit(0);
