/**
 * The CPU and wall time one commit costs on a local Deno KV file when commits are spread out (a
 * message every few milliseconds, as in the fan-out workload), not back to back as in
 * `bench/kv_ceiling.ts`. Commits at a fixed rate for a few seconds, each after a timer, and
 * reports the process's CPU (main thread and KV's SQLite thread, from /proc/self/stat) per commit
 * and the commit's wall time (p50, p99), for shapes that add our log's parts one at a time:
 * - `timer`: the timer alone, no commit (the price of waking up);
 * - `one`: one `set`;
 * - `kvrelay`: the message and the head, as `bench/peers/deno_kv_relay.ts` writes;
 * - `checks`: and the head and dedupe checks;
 * - `dedupe`: and the dedupe key;
 * - `solo`: and `expireIn` on the message and the dedupe key: what `chat/message_log.ts` writes
 *   for one message on a node alone on its KV;
 * - `solo+prune`: and the delete of an older message (retention by count);
 * - `log`: `solo` with the KV bus's relay entry and counter;
 * - `log+watch`: the same while the process watches the relay counter, as the KV bus does;
 * - `solo+watch`: `solo` while the process watches the relay counter and the node registry,
 *   keys these commits do not write (what the KV bus of a node alone keeps).
 *
 *   taskset -c 0 deno run -A --unstable-kv bench/kv_commit_cost.ts [--rate 200] [--seconds 4]
 *
 * @module
 */
import { dedupeKey, headKey, messageKey, RELAY_COUNT_KEY, RELAY_LOG_PREFIX } from "../chat/keys.ts";
import { cpuMs, Histogram, parseArgs, round } from "./lib.ts";

/** What one commit writes: each part is a piece of our message log's commit. */
interface Shape {
  /** The message, under its sequence number. */
  message?: boolean;
  /** The conversation's head. */
  head?: boolean;
  /** Checks of the head's versionstamp and of the dedupe key's absence. */
  checks?: boolean;
  /** The dedupe key. */
  dedupe?: boolean;
  /** `expireIn` on the message and the dedupe key. */
  expire?: boolean;
  /** The delete of the message `PRUNE_BEHIND` older (retention by count). */
  prune?: boolean;
  /** The KV bus's relay entry and counter. */
  relay?: boolean;
}

const LOG: Shape = { message: true, head: true, checks: true, dedupe: true, expire: true };
const SHAPES: Record<string, Shape> = {
  timer: {},
  one: { message: true },
  kvrelay: { message: true, head: true },
  checks: { message: true, head: true, checks: true },
  dedupe: { message: true, head: true, checks: true, dedupe: true },
  solo: LOG,
  "solo+prune": { ...LOG, prune: true },
  log: { ...LOG, relay: true },
};
const PRUNE_BEHIND = 100;

const args = parseArgs(Deno.args);
const rate = Number(args.rate ?? 200);
const seconds = Number(args.seconds ?? 4);

async function run(shape: string): Promise<Record<string, unknown>> {
  const dir = await Deno.makeTempDir({ prefix: "kvcommit-" });
  const kv = await Deno.openKv(`${dir}/x.kv`);
  let watching = true;
  if (shape.endsWith("+watch")) {
    const keys = shape === "log+watch" ? [RELAY_COUNT_KEY] : [RELAY_COUNT_KEY, ["relay", "nodes"]];
    (async () => {
      for await (const _ of kv.watch(keys)) if (!watching) break;
    })().catch(() => {});
  }
  const walls = new Histogram();
  let seq = 0;
  let head: string | null = null;
  const parts = SHAPES[shape.replace("+watch", "")];
  if (!parts) throw new Error(`Expected a shape of ${Object.keys(SHAPES)}, got "${shape}"`);
  const commit = async () => {
    seq++;
    const message = {
      conv: "g:bench",
      seq,
      id: `m${seq}`,
      from: "u_bench",
      name: "bench",
      text: '{"t":123.456,"s":1,"i":2}',
      ts: Date.now(),
      kind: "text",
    };
    const atomic = kv.atomic();
    const expire = parts.expire ? { expireIn: 30 * 86_400_000 } : undefined;
    if (parts.message) atomic.set(messageKey("g:bench", seq), message, expire);
    if (parts.checks) {
      atomic.check({ key: headKey("g:bench"), versionstamp: head });
      atomic.check({ key: dedupeKey("u_bench", message.id), versionstamp: null });
    }
    if (parts.dedupe) {
      atomic.set(dedupeKey("u_bench", message.id), { conv: "g:bench", seq }, expire);
    }
    if (parts.head) atomic.set(headKey("g:bench"), seq);
    if (parts.prune && seq > PRUNE_BEHIND) atomic.delete(messageKey("g:bench", seq - PRUNE_BEHIND));
    if (parts.relay) {
      atomic.set([...RELAY_LOG_PREFIX, kv.commitVersionstamp()], { heads: { "g:bench": seq } }, {
        expireIn: 600_000,
      });
      atomic.sum(RELAY_COUNT_KEY, 1n);
    }
    const started = performance.now();
    const result = await atomic.commit();
    walls.add(performance.now() - started);
    if (!result.ok) throw new Error(`Expected the commit to pass its checks, it failed`);
    head = result.versionstamp;
  };
  const n = rate * seconds;
  const c0 = cpuMs(Deno.pid);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const wait = t0 + (i * 1000) / rate - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    if (shape !== "timer") await commit();
  }
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = cpuMs(Deno.pid) - c0;
  watching = false;
  kv.close();
  await Deno.remove(dir, { recursive: true });
  return {
    shape,
    rate,
    cpuPercent: round((cpu / 10) / elapsed, 1),
    cpuMicrosPerCommit: round((cpu * 1000) / n, 0),
    wallP50Ms: round(walls.quantile(0.5), 2),
    wallP99Ms: round(walls.quantile(0.99), 2),
  };
}

const rows = [];
const shapes = (args.shapes ?? "timer,one,kvrelay,checks,dedupe,solo,solo+prune,log,log+watch")
  .split(",");
for (const shape of shapes) rows.push(await run(shape));
console.table(rows);
Deno.exit(0);
