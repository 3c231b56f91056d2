/**
 * The ceiling of a local Deno KV file for the message log: how many messages a second one core
 * can commit when KV does nothing else, for the layout `chat/message_log.ts` writes and for
 * cut-down layouts. Direct messages are the worst case: each message is alone in its
 * conversation within a commit, so each carries its own head.
 *
 *   taskset -c 0 deno run -A --unstable-kv bench/kv_ceiling.ts [--seconds 3] [--json]
 *
 * Layouts (per message):
 * - `log`: what the log writes today: message (expiring), dedupe key (expiring) and head, with
 *   a check on the head and on the dedupe key, plus a relay entry per commit (the KV bus);
 * - `no-relay`: the same without the relay entry;
 * - `no-dedupe`: message and head only, head checked;
 * - `message-head`: message and head, nothing expiring, head checked;
 * - `message-expiring`: the message alone, expiring, nothing checked;
 * - `message-only`: one `set` per message, nothing checked: the floor of any log in KV.
 *
 * Each runs with 50 messages per commit (the log's largest direct-message commit: 100 checks)
 * and 10 per commit, commits one after another, as the log does. CPU is the process's (main
 * thread and KV's SQLite thread), from /proc/self/stat.
 *
 * @module
 */
import { cpuMs, parseArgs } from "./lib.ts";

interface Result {
  layout: string;
  perCommit: number;
  messagesPerSecond: number;
  commitsPerSecond: number;
  cpuPercent: number;
  cpuMicrosPerMessage: number;
}

const args = parseArgs(Deno.args);
const seconds = Number(args.seconds ?? 3);
const LAYOUTS = [
  "log",
  "no-relay",
  "no-dedupe",
  "message-head",
  "message-expiring",
  "message-only",
] as const;
type Layout = typeof LAYOUTS[number];
const CONVERSATIONS = 500;

async function run(layout: Layout, perCommit: number): Promise<Result> {
  const dir = await Deno.makeTempDir();
  const kv = await Deno.openKv(`${dir}/kv.sqlite3`);
  const heads = new Map<string, { seq: number; versionstamp: string | null }>();
  let n = 0;
  let commits = 0;
  const t0 = performance.now();
  const cpu0 = cpuMs(Deno.pid);
  while (performance.now() - t0 < seconds * 1000) {
    const atomic = kv.atomic();
    const touched = new Map<string, number>();
    for (let i = 0; i < perCommit; i++) {
      const conv = `d:u${(n + i) % CONVERSATIONS}:v${(n + i) % CONVERSATIONS}`;
      const head = heads.get(conv) ?? { seq: 0, versionstamp: null };
      const seq = (touched.get(conv) ?? head.seq) + 1;
      const headed = layout !== "message-only" && layout !== "message-expiring";
      if (!touched.has(conv) && headed) {
        atomic.check({ key: ["head", conv], versionstamp: head.versionstamp });
      }
      touched.set(conv, seq);
      const message = {
        conv,
        seq,
        id: `c-${n + i}`,
        from: `u${(n + i) % CONVERSATIONS}`,
        name: "Ann",
        text: `hello ${n + i}`,
        ts: Date.now(),
        kind: "text",
      };
      const expiring = layout === "message-only" ? undefined : { expireIn: 86_400_000 };
      atomic.set(["msg", conv, seq], message, expiring);
      if (layout === "log" || layout === "no-relay") {
        const dedupe = ["dedupe", message.from, message.id];
        atomic.check({ key: dedupe, versionstamp: null });
        atomic.set(dedupe, { conv, seq, ts: message.ts }, expiring);
      }
    }
    const headed = layout !== "message-only" && layout !== "message-expiring";
    if (headed) {
      for (const [conv, seq] of touched) atomic.set(["head", conv], seq);
    }
    if (layout === "log") {
      atomic.set(["relay", "log", kv.commitVersionstamp()], {
        node: "n",
        heads: {},
      }, {
        expireIn: 600_000,
      });
      atomic.sum(["relay", "count"], 1n);
    }
    const result = await atomic.commit();
    if (!result.ok) {
      throw new Error(`Expected the commit to pass its checks (${layout})`);
    }
    if (headed) {
      for (const [conv, seq] of touched) {
        heads.set(conv, { seq, versionstamp: result.versionstamp });
      }
    }
    n += perCommit;
    commits++;
  }
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = (cpuMs(Deno.pid) - cpu0) / 1000;
  kv.close();
  await Deno.remove(dir, { recursive: true });
  return {
    layout,
    perCommit,
    messagesPerSecond: Math.round(n / elapsed),
    commitsPerSecond: Math.round(commits / elapsed),
    cpuPercent: Math.round((cpu / elapsed) * 100),
    cpuMicrosPerMessage: Math.round((cpu / n) * 1e6 * 10) / 10,
  };
}

if (import.meta.main) {
  const results: Result[] = [];
  for (const perCommit of [50, 10]) {
    for (const layout of LAYOUTS) results.push(await run(layout, perCommit));
  }
  if (args.json) console.log(JSON.stringify(results));
  else {
    console.log(
      "| layout | messages per commit | messages/s | commits/s | CPU % | CPU µs per message |",
    );
    console.log("| --- | --- | --- | --- | --- | --- |");
    for (const r of results) {
      console.log(
        `| ${r.layout} | ${r.perCommit} | ${r.messagesPerSecond} | ${r.commitsPerSecond} | ${r.cpuPercent} | ${r.cpuMicrosPerMessage} |`,
      );
    }
  }
}
