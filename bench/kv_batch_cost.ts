/**
 * What a direct message costs in a batched commit, part by part: the main thread's share
 * (building the atomic operation, and the synchronous part of `commit()`, where Deno converts
 * the checks and mutations) and the wait for the result (KV's SQLite thread writing the rows),
 * per message, with `--batch` messages in each commit, back to back. Shapes add our log's parts
 * to what `bench/peers/deno_kv_relay.ts` writes, one at a time:
 * - `kvrelay`: the message and its conversation's head;
 * - `+dedupe`: and the dedupe key (a second row per message);
 * - `+expire`: and `expireIn` on the message and the dedupe key;
 * - `+checks`: and the checks of the head's versionstamp and of the dedupe key's absence;
 * - `ours`: and the block check, as `chat/message_log.ts` commits a direct message.
 *
 * Keys come from `chat/keys.ts`, so the rows are the log's own. Every message is in a
 * conversation of its own, as direct messages between random pairs are.
 * Rounds repeat the shapes in turn, so a drift of the machine shows as a spread.
 *
 *   taskset -c 0 deno run -A --unstable-kv bench/kv_batch_cost.ts [--batch 10] [--commits 3000]
 *     [--rounds 2] [--kv-dir /dev/shm]
 *
 * @module
 */
import { blockKey, dedupeKey, headKey, messageKey } from "../chat/keys.ts";
import { parseArgs, round } from "./lib.ts";

/** Which parts of our log's commit a shape writes, beyond the message and the head. */
interface Shape {
  dedupe: boolean;
  expire: boolean;
  checks: boolean;
  block: boolean;
}

const SHAPES: Record<string, Shape> = {
  kvrelay: { dedupe: false, expire: false, checks: false, block: false },
  "+dedupe": { dedupe: true, expire: false, checks: false, block: false },
  "+expire": { dedupe: true, expire: true, checks: false, block: false },
  "+checks": { dedupe: true, expire: true, checks: true, block: false },
  ours: { dedupe: true, expire: true, checks: true, block: true },
};
/** `expireIn` of the message and its dedupe key: the log's default retention, 30 days. */
const EXPIRE = { expireIn: 30 * 86_400_000 };

const args = parseArgs(Deno.args);
const batch = Number(args.batch ?? 10);
const commits = Number(args.commits ?? 3000);
const rounds = Number(args.rounds ?? 2);
/** Message numbers, unique across runs: a dedupe key is never written twice. */
let seq = 0;

/** Per message, in µs: building, the `commit()` call, and the wait for its result. */
async function run(kv: Deno.Kv, name: string, shape: Shape, tag: number) {
  const heads = new Map<string, string | null>();
  let build = 0;
  let call = 0;
  let wait = 0;
  const started = performance.now();
  for (let c = 0; c < commits; c++) {
    const t0 = performance.now();
    const atomic = kv.atomic();
    const convs: string[] = [];
    for (let i = 0; i < batch; i++) {
      const k = c * batch + i;
      const from = `u${k % 1000}`;
      const to = `u${(k + 7) % 1000}`;
      const conv = `d:${from}:${to}:${name}:${tag}`;
      convs.push(conv);
      seq++;
      const message = {
        conv,
        seq,
        id: `m${seq}`,
        from,
        name: `User ${from}`,
        text: `hello there ${seq}`,
        ts: Date.now(),
        kind: "text",
      };
      const expire = shape.expire ? EXPIRE : undefined;
      if (shape.checks) {
        atomic.check({ key: headKey(conv), versionstamp: heads.get(conv) ?? null });
        if (shape.dedupe) atomic.check({ key: dedupeKey(from, message.id), versionstamp: null });
      }
      if (shape.block) atomic.check({ key: blockKey(to, from), versionstamp: null });
      atomic.set(messageKey(conv, seq), message, expire);
      if (shape.dedupe) {
        atomic.set(dedupeKey(from, message.id), { conv, seq, ts: message.ts }, expire);
      }
      atomic.set(headKey(conv), seq);
    }
    const t1 = performance.now();
    const pending = atomic.commit();
    const t2 = performance.now();
    const result = await pending;
    wait += performance.now() - t2;
    build += t1 - t0;
    call += t2 - t1;
    if (!result.ok) throw new Error(`Expected every commit to pass its checks, ${name} failed one`);
    for (const conv of convs) heads.set(conv, result.versionstamp);
  }
  const n = commits * batch;
  return {
    shape: name,
    buildUs: round((build * 1000) / n, 1),
    callUs: round((call * 1000) / n, 1),
    waitUs: round((wait * 1000) / n, 1),
    perSecond: round(n / ((performance.now() - started) / 1000)),
  };
}

const dir = await Deno.makeTempDir({ prefix: "kvbatch-", dir: args["kv-dir"] });
const kv = await Deno.openKv(`${dir}/x.kv`);
try {
  console.log(`${batch} messages per commit, ${commits} commits per shape, KV in ${dir}`);
  for (let r = 0; r < rounds; r++) {
    for (const [name, shape] of Object.entries(SHAPES)) {
      const x = await run(kv, name, shape, r);
      console.log(
        `round ${r + 1} ${name.padEnd(8)} per message: build ${x.buildUs} µs, commit() call ` +
          `${x.callUs} µs, wait ${x.waitUs} µs; ${x.perSecond} messages/s`,
      );
    }
  }
} finally {
  kv.close();
  await Deno.remove(dir, { recursive: true });
}
