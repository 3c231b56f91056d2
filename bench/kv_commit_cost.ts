/**
 * The CPU one commit costs on a local Deno KV file when commits are spread out (a message every
 * few milliseconds, as in the fan-out workload), not back to back as in `bench/kv_ceiling.ts`.
 * Commits at a fixed rate for a few seconds, each after a timer, and reports the process's CPU
 * (main thread and KV's SQLite thread, from /proc/self/stat) per commit, for:
 * - `timer`: the timer alone, no commit (the price of waking up);
 * - `one`: one `set`;
 * - `log`: what `chat/message_log.ts` writes for one message (head and dedupe checks, message and
 *   dedupe key expiring, head, relay entry and counter);
 * - `log+watch`: the same while the process watches the relay counter, as the KV bus does;
 * - `solo`: the log's commit without the relay entry and counter (a node alone on its KV);
 * - `solo+watch`: the same while the process watches the relay counter and the node registry,
 *   keys these commits do not write (what the KV bus of a node alone keeps).
 *
 *   taskset -c 0 deno run -A --unstable-kv bench/kv_commit_cost.ts [--rate 200] [--seconds 4]
 *
 * @module
 */
import { cpuMs, parseArgs, round } from "./lib.ts";

const args = parseArgs(Deno.args);
const rate = Number(args.rate ?? 200);
const seconds = Number(args.seconds ?? 4);

async function run(shape: string): Promise<Record<string, unknown>> {
  const dir = await Deno.makeTempDir({ prefix: "kvcommit-" });
  const kv = await Deno.openKv(`${dir}/x.kv`);
  let watching = true;
  if (shape.endsWith("+watch")) {
    const keys = shape === "log+watch"
      ? [["relay", "count"]]
      : [["relay", "count"], ["relay", "nodes"]];
    (async () => {
      for await (const _ of kv.watch(keys)) if (!watching) break;
    })().catch(() => {});
  }
  let seq = 0;
  let head: string | null = null;
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
    if (shape === "one") atomic.set(["m", seq], message);
    else {
      const expireIn = 30 * 86_400_000;
      atomic.check({ key: ["head", "g:bench"], versionstamp: head });
      atomic.check({ key: ["d", "u_bench", message.id], versionstamp: null });
      atomic.set(["m", "g:bench", seq], message, { expireIn });
      atomic.set(["d", "u_bench", message.id], { conv: "g:bench", seq }, { expireIn });
      atomic.set(["head", "g:bench"], seq);
      if (!shape.startsWith("solo")) {
        atomic.set(["relay", "log", kv.commitVersionstamp()], { heads: { "g:bench": seq } }, {
          expireIn: 600_000,
        });
        atomic.sum(["relay", "count"], 1n);
      }
    }
    const result = await atomic.commit();
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
  };
}

const rows = [];
const shapes = (args.shapes ?? "timer,one,log,log+watch,solo,solo+watch").split(",");
for (const shape of shapes) rows.push(await run(shape));
console.table(rows);
Deno.exit(0);
