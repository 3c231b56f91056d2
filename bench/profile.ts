/**
 * Profiles our server under the fan-out workload and names the hot functions.
 *
 *   deno run -A bench/profile.ts [--clients 500] [--rate 50000] [--seconds 8] [--top 25]
 *     [--kv-dir /dev/shm]
 *   deno run -A bench/profile.ts --summarize path/to/CPU.cpuprofile [--skip 6]
 *
 * `--skip S` leaves the profile's first S seconds out of the tables (the start, the sign-ins and
 * the opens), to see the steady state.
 *
 * Starts `deno serve --cpu-prof main.ts` on core 0 (limits raised as in bench/run.ts), runs one
 * open-loop fan-out step from core 1, stops the server with SIGTERM (the profile is written on
 * exit) and prints the functions by self time and by total time.
 *
 * @module
 */
import { loadCommand, OURS_ENV, parseArgs, round, waitForHttp } from "./lib.ts";

interface ProfileNode {
  id: number;
  callFrame: {
    functionName: string;
    url: string;
    lineNumber: number;
    columnNumber: number;
  };
  hitCount?: number;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

function where(n: ProfileNode): string {
  const f = n.callFrame;
  const name = f.functionName || "(anonymous)";
  if (!f.url) return name;
  const url = f.url.replace(`file://${ROOT}/`, "").replace(
    /^.*\/node_modules\/\.deno\//,
    "npm:",
  )
    .replace(/^.*\/registry\.npmjs\.org\//, "npm:");
  return `${name} ${url}:${f.lineNumber + 1}`;
}

/**
 * Self and total time per function (ms), largest first; `skipS` leaves out the first seconds of
 * the profile (a server's start, sign-ins and opens before the steady state).
 */
export function summarize(profile: Profile, top = 25, skipS = 0): string {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) {
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  // Time per node from samples and deltas (µs).
  const nodeTime = new Map<number, number>();
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  let at = 0;
  for (let i = 0; i < samples.length; i++) {
    at += deltas[i] ?? 0;
    if (at < skipS * 1e6) continue;
    const dt = deltas[i + 1] ?? 0;
    nodeTime.set(samples[i], (nodeTime.get(samples[i]) ?? 0) + dt);
  }
  const totalUs = [...nodeTime.values()].reduce((a, b) => a + b, 0);
  const self = new Map<string, number>();
  const total = new Map<string, number>();
  for (const [id, us] of nodeTime) {
    const n = byId.get(id)!;
    const key = where(n);
    self.set(key, (self.get(key) ?? 0) + us);
    // Total: every distinct function on the stack once.
    const seen = new Set<string>();
    for (
      let cur: number | undefined = id;
      cur !== undefined;
      cur = parent.get(cur)
    ) {
      const k = where(byId.get(cur)!);
      if (seen.has(k)) continue;
      seen.add(k);
      total.set(k, (total.get(k) ?? 0) + us);
    }
  }
  const pct = (us: number) => `${round((us / totalUs) * 100, 1)}%`;
  const lines = [
    `profile: ${round(totalUs / 1000, 0)} ms sampled`,
    "",
    "self time:",
  ];
  for (const [k, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    lines.push(`  ${pct(us).padStart(6)}  ${k}`);
  }
  lines.push("", "total time (inclusive):");
  for (const [k, us] of [...total].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    lines.push(`  ${pct(us).padStart(6)}  ${k}`);
  }
  return lines.join("\n");
}

if (import.meta.main) {
  const args = parseArgs(Deno.args);
  const top = Number(args.top ?? 25);
  const skip = Number(args.skip ?? 0);
  if (args.summarize) {
    console.log(
      summarize(JSON.parse(await Deno.readTextFile(args.summarize)), top, skip),
    );
    Deno.exit(0);
  }
  const dir = await Deno.makeTempDir({ prefix: "chatprof-", dir: args["kv-dir"] });
  const port = 20000 + Math.floor(Math.random() * 10000); // below the ephemeral range
  const env = { ...OURS_ENV, CHAT_KV_PATH: `${dir}/chat.kv` };
  const server = new Deno.Command("taskset", {
    args: [
      "-c",
      "0",
      "deno",
      "serve",
      "--allow-all",
      "--cpu-prof",
      `--cpu-prof-dir=${dir}`,
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      `${ROOT}/main.ts`,
    ],
    cwd: ROOT,
    env,
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  const url = `http://127.0.0.1:${port}`;
  await waitForHttp(url);
  const out = await new Deno.Command("taskset", {
    args: [
      "-c",
      "1",
      ...loadCommand({
        target: "ours",
        url,
        serverPid: server.pid,
        mode: args.mode ?? "fanout",
        maxSeconds: 120,
        flags: {
          clients: args.clients ?? 500,
          rates: args.rate ?? 50000,
          warmup: 1,
          seconds: args.seconds ?? 8,
          reps: 1,
        },
      }),
    ],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  const line = new TextDecoder().decode(out.stdout).split("\n").find((l) =>
    l.startsWith("RESULT ")
  );
  server.kill("SIGTERM");
  await server.status;
  const files = [...Deno.readDirSync(dir)].filter((f) => f.name.endsWith(".cpuprofile"));
  if (line) {
    const r = JSON.parse(line.slice(7));
    const s = r.steps?.[0];
    if (s) {
      console.log(
        `load: reach ${s.reachMin} delivered ${s.deliveredPerSec}/s p99 ${s.p99} ms server CPU ${
          round(s.serverCpu, 0)
        }%`,
      );
    }
  }
  if (!files.length) {
    console.error(`no profile written in ${dir}`);
    Deno.exit(1);
  }
  for (const f of files) {
    const path = `${dir}/${f.name}`;
    console.log(`\n${path}`);
    console.log(summarize(JSON.parse(await Deno.readTextFile(path)), top, skip));
  }
}
