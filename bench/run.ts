/**
 * The benchmark orchestrator: starts each server (ours and the peers) pinned to core 0, runs the
 * load generator pinned to core 1, and writes `bench/results/<date>.json` and `.md`.
 *
 *   deno task bench                      # everything (about half an hour on 2 cores)
 *   deno task bench --quick              # CI smoke run: ours + Deno relay, small N, about a minute
 *   deno task bench --only w1,w4 --targets ours,relay,socketio
 *
 * Workloads (see docs/benchmarks.md): w1 group fan-out knee, w2 closed-loop rounds, w3 direct
 * messages (ours and the Deno relays), w4 idle connections, w5 history page and catch-up (ours),
 * w6 two workers, w7 slow consumers.
 *
 * Targets: `ours` (its clients ask for batch frames, as the web client does), `single` (ours with
 * clients that do not: one WebSocket frame per server frame, like every peer), and the peers
 * `relay`, `framed`, `kvrelay`, `ws`, `socketio`, `uws`, `bun`.
 *
 * @module
 */
import {
  cpuMs,
  DM_TARGETS,
  exists,
  loadCommand,
  medianRound,
  OURS_ENV,
  parseArgs,
  round,
  sleep,
  systemBusyMs,
  ULIMIT,
} from "./lib.ts";
import {
  BUN,
  ensureNodeDeps,
  NODE_MODULES,
  type ServerOpts as TargetOpts,
  TARGETS,
} from "./targets.ts";
import { canUseCpuQuota, type CpuQuota, createCpuQuota, type QuotaStat } from "./cpu_quota.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const BENCH = `${ROOT}/bench`;
const args = parseArgs(Deno.args);
const quick = args.quick === "true";
const only = args.only ? new Set(args.only.split(",")) : undefined;
const SERVER_CORES = args["server-cores"] ?? "0";
const CLIENT_CORES = args["client-cores"] ?? "1";
/**
 * `--kv-dir /dev/shm`: where the servers' KV files (and their logs) go; by default the system's
 * temp dir, on disk. In a tmpfs a commit's `fsync` costs nothing, which separates what the disk
 * costs from what the server's CPU costs (docs/benchmarks_history.md, "Direct messages without
 * the disk").
 */
const tmp = await Deno.makeTempDir({ prefix: "chatbench-", dir: args["kv-dir"] });
const started = Date.now();
const quickBudgetMs = 58_000;

// ---- Targets ------------------------------------------------------------------------------

/** How `startServer` starts one server; its KV file goes in this run's temp dir. */
type ServerOpts = Omit<TargetOpts, "dir">;

const haveMain = await exists(`${ROOT}/main.ts`);
const defaultTargets = quick
  ? ["ours", "relay"]
  : ["ours", "relay", "kvrelay", "ws", "socketio", "uws", "bun"];
const targets = (args.targets ? args.targets.split(",") : defaultTargets)
  .filter((t) => {
    if (!TARGETS[t]) {
      throw new Error(
        `unknown target ${t}; known: ${Object.keys(TARGETS).join(", ")}`,
      );
    }
    if ((TARGETS[t].loadAs ?? t) === "ours" && !haveMain) {
      console.error("main.ts does not exist yet: skipping ours");
      return false;
    }
    return true;
  });

// ---- Processes ----------------------------------------------------------------------------

// Below the ephemeral range (32768 and up), where the clients' own ports would collide.
let nextPort = 20000 + Math.floor(Math.random() * 10000);

function freePort(): number {
  for (;;) {
    const port = nextPort++;
    try {
      const l = Deno.listen({ hostname: "127.0.0.1", port });
      l.close();
      return port;
    } catch { /* taken */ }
  }
}

interface Server {
  target: string;
  port: number;
  pid: number;
  url: string;
  child: Deno.ChildProcess;
  log: string;
  /** Its CPU quota's counters, when it runs under one. */
  quotaStat?(): Promise<QuotaStat>;
  stop(): Promise<void>;
}

async function startServer(
  name: string,
  opts: ServerOpts = {},
): Promise<Server> {
  const def = TARGETS[name];
  const port = freePort();
  const log = `${tmp}/${name}-${port}.log`;
  const targetOpts = { dir: tmp, ...opts };
  const cmd = def.cmd(port, targetOpts);
  const cores = opts.cores ?? SERVER_CORES;
  let quota: CpuQuota | undefined;
  if (opts.quota) quota = await createCpuQuota(`chatbench-${port}`, opts.quota);
  // The shell joins the quota's group before it execs the server: every thread starts in it.
  const join = quota ? `echo $$ > ${quota.procs}; ` : "";
  const child = new Deno.Command("bash", {
    args: [
      "-c",
      `${join}${ULIMIT}; exec taskset -c ${cores} "$@" >${log} 2>&1`,
      "bash",
      ...cmd,
    ],
    cwd: ROOT,
    env: { ...def.env?.(targetOpts), ...opts.env, NODE_PATH: NODE_MODULES },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const url = `http://127.0.0.1:${port}`;
  let exited = false;
  child.status.then(() => (exited = true));
  const server: Server = {
    target: name,
    port,
    pid: child.pid,
    url,
    child,
    log,
    quotaStat: quota && (() => quota.stat()),
    async stop() {
      live.delete(server);
      if (exited) return quota?.remove();
      try {
        child.kill("SIGTERM");
      } catch { /* gone */ }
      const done = await Promise.race([
        child.status.then(() => true),
        sleep(5000).then(() => false),
      ]);
      if (!done) {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
        await child.status;
      }
      await quota?.remove();
    },
  };
  live.add(server);
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (exited) break;
    try {
      const res = await fetch(`${url}/`, { signal: AbortSignal.timeout(1000) });
      await res.body?.cancel();
      return server;
    } catch {
      await sleep(150);
    }
  }
  await server.stop();
  let tail = "";
  try {
    tail = (await Deno.readTextFile(log)).slice(-2000);
  } catch { /* none */ }
  throw new Error(`${name} did not start on ${port}:\n${tail}`);
}

type Result = Record<string, unknown> & { error?: string };

/** Every server started and not yet stopped, to stop them on SIGINT/SIGTERM. */
const live = new Set<Server>();
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, async () => {
    console.error(`bench: ${signal}: stopping ${live.size} server(s)`);
    await Promise.all([...live].map((s) => s.stop()));
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    Deno.exit(130);
  });
}

/** CPU (% of one core) used by other processes than `pids`, over `ms`. */
async function otherCpu(pids: number[], ms = 1000): Promise<number> {
  const mine = () => pids.reduce((a, p) => a + (cpuMs(p) || 0), 0);
  const a0 = systemBusyMs();
  const m0 = mine();
  const t0 = performance.now();
  await sleep(ms);
  return Math.max(
    0,
    ((systemBusyMs() - a0 - (mine() - m0)) / (performance.now() - t0)) * 100,
  );
}

const quietLimit = Number(args["quiet-limit"] ?? 15);
const quietWaitS = Number(args["quiet-wait"] ?? (quick ? 0 : 120));
const noiseLog: { at: string; otherCpu: number; waitedS: number }[] = [];

/**
 * Waits (up to --quiet-wait seconds) until other processes use less than --quiet-limit % of a
 * core: this machine is shared, and a benchmark beside a test suite measures the test suite.
 */
async function waitQuiet(server: Server, what: string) {
  if (quietWaitS <= 0) return;
  const t0 = Date.now();
  let other = await otherCpu([server.pid, Deno.pid]);
  while (other > quietLimit && Date.now() - t0 < quietWaitS * 1000) {
    if (Date.now() - t0 < 1500) {
      console.error(
        `bench: other processes use ${round(other, 0)}% CPU; waiting for quiet before ${what}`,
      );
    }
    await sleep(2000);
    other = await otherCpu([server.pid, Deno.pid]);
  }
  noiseLog.push({
    at: what,
    otherCpu: round(other, 1),
    waitedS: round((Date.now() - t0) / 1000, 1),
  });
}

/** Runs the load generator (pinned to the client cores) and returns its result line. */
async function load(
  server: Server,
  mode: string,
  opts: Record<string, string | number>,
  timeoutS = 300,
  onJoined?: () => void,
): Promise<Result> {
  await waitQuiet(server, `${server.target} ${mode} ${opts.clients ?? ""}`);
  // The smoke run stays within its minute: no second measurement of noisy steps.
  if (quick && opts.retries === undefined) opts = { ...opts, retries: 0 };
  const def = TARGETS[server.target];
  const cmd = loadCommand({
    target: def?.loadAs ?? server.target,
    url: server.url,
    serverPid: server.pid,
    mode,
    maxSeconds: timeoutS,
    flags: { ...def?.loadFlags, ...opts },
  });
  const child = new Deno.Command("bash", {
    args: [
      "-c",
      `${ULIMIT}; exec taskset -c ${opts.cores ?? CLIENT_CORES} "$@"`,
      "bash",
      ...cmd,
    ],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const killer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  }, (timeoutS + 15) * 1000);
  // Read stdout as it comes: `JOINED` (fan-out mode) calls `onJoined`; `RESULT …` is the result.
  let text = "";
  let joined = false;
  const decoder = new TextDecoder();
  for await (const chunk of child.stdout) {
    text += decoder.decode(chunk, { stream: true });
    if (onJoined && !joined && text.includes("JOINED\n")) {
      joined = true;
      onJoined();
    }
  }
  const status = await child.status;
  clearTimeout(killer);
  const line = text.split("\n").find((l) => l.startsWith("RESULT "));
  if (!line) {
    return { error: `load generator exited ${status.code} without a result` };
  }
  return JSON.parse(line.slice(7));
}

async function withServer<T>(
  name: string,
  opts: ServerOpts,
  fn: (s: Server) => Promise<T>,
): Promise<T> {
  const server = await startServer(name, opts);
  try {
    return await fn(server);
  } finally {
    await server.stop();
  }
}

// ---- Environment --------------------------------------------------------------------------

async function sh(cmd: string): Promise<string> {
  try {
    const out = await new Deno.Command("bash", {
      args: ["-c", cmd],
      stdout: "piped",
      stderr: "null",
    }).output();
    return new TextDecoder().decode(out.stdout).trim();
  } catch {
    return "";
  }
}

async function pkgVersion(name: string): Promise<string> {
  try {
    return JSON.parse(
      await Deno.readTextFile(`${NODE_MODULES}/${name}/package.json`),
    ).version;
  } catch {
    return "not installed";
  }
}

async function environment() {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const meminfo = await Deno.readTextFile("/proc/meminfo").catch(() => "");
  return {
    cpu: cpuinfo.match(/model name\s*:\s*(.*)/)?.[1] ?? "unknown",
    cores: navigator.hardwareConcurrency,
    memoryGiB: round(
      Number(meminfo.match(/MemTotal:\s+(\d+)/)?.[1] ?? 0) / 1048576,
      1,
    ),
    kernel: await sh("uname -r"),
    loadAverageAtStart: await sh("cut -d' ' -f1-3 /proc/loadavg"),
    versions: {
      deno: Deno.version.deno,
      v8: Deno.version.v8,
      node: await sh("node --version"),
      bun: await sh(`${BUN} --version`),
      "socket.io": await pkgVersion("socket.io"),
      ws: await pkgVersion("ws"),
      "@trufflesuite/uws-js-unofficial": await pkgVersion(
        "@trufflesuite/uws-js-unofficial",
      ),
      autocannon: await pkgVersion("autocannon"),
      hono: await sh(
        `grep -o 'npm:hono@[^"]*' ${ROOT}/deno.json | head -1 | cut -d@ -f2`,
      ),
    },
    pinning: { server: SERVER_CORES, client: CLIENT_CORES },
    command: `deno task bench ${Deno.args.join(" ")}`.trim(),
    oursEnv: OURS_ENV,
  };
}

// ---- Workloads ----------------------------------------------------------------------------

const P = quick
  ? {
    w1: { ns: [50], rates: [10_000, 25_000], warmup: 0.5, seconds: 1, reps: 3 },
    w2: { ns: [32], warmup: 0.5, seconds: 1, reps: 3 },
    w3: { n: 100, rates: [2_000], warmup: 0.5, seconds: 1, reps: 2 },
    w4: { n: 500, seconds: 1 },
    w5: {
      missed: 300,
      reps: 1,
      warmup: 1,
      duration: 2,
      busyClients: 50,
      busyRate: 5_000,
      busyHistoryRate: 50,
    },
    w6: { n: 50, rates: [10_000], bursts: [100], reps: 1, rounds: 1 },
    w7: { n: 100, rate: 10_000, pad: 200, warmup: 0.5, seconds: 1, reps: 2 },
  }
  : {
    w1: {
      ns: [100, 500, 1000],
      // Steps of 25k all the way: with 50k steps above 100k, a knee one step below another's
      // read as 0.75x (150k against 200k) whatever the difference in CPU was.
      rates: Array.from({ length: 12 }, (_, i) => (i + 1) * 25_000),
      warmup: 1,
      seconds: 2,
      reps: 3,
    },
    w2: { ns: [32, 100, 500], warmup: 1, seconds: 3, reps: 3 },
    w3: {
      n: 1000,
      // The issue's steps are 5k → 50k; 2k–4k below them find the knee when 5k fails.
      rates: [
        2_000,
        3_000,
        4_000,
        5_000,
        10_000,
        20_000,
        30_000,
        40_000,
        50_000,
      ],
      warmup: 1,
      seconds: 2,
      reps: 3,
    },
    w4: { n: 10_000, seconds: 5 },
    w5: {
      missed: 300,
      reps: 3,
      warmup: 2,
      duration: 5,
      busyClients: 500,
      busyRate: 50_000,
      busyHistoryRate: 100,
    },
    w6: {
      n: 500,
      rates: [
        25_000,
        50_000,
        75_000,
        100_000,
        150_000,
        200_000,
        250_000,
        300_000,
      ],
      bursts: [100, 300, 1000],
      reps: 3,
      rounds: 2,
    },
    w7: { n: 500, rate: 50_000, pad: 4000, warmup: 2, seconds: 10, reps: 3 },
  };

/**
 * W6 on a machine without a core per worker plus one for the generator: every worker gets this
 * many cores' worth of CPU (a cgroup quota), all of them on the server's cores, so one worker and
 * two get the same CPU per worker. `--w6-quota 0` gives each worker a core of its own instead.
 * `--w6-shared` runs both configurations on the server's cores with no quota: what splitting the
 * members across two workers costs, with the same CPU for both.
 */
const W6_SHARED = args["w6-shared"] === "true";
const W6_QUOTA = W6_SHARED ? 0 : Number(
  args["w6-quota"] ??
    (!quick && navigator.hardwareConcurrency < 3 && await canUseCpuQuota() ? 0.5 : 0),
);
if ((W6_QUOTA > 0 || W6_SHARED) && !quick) {
  // A share of a core reaches a fraction of W1's knees: finer steps.
  P.w6.rates = [10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 80, 90, 100, 120, 150]
    .map((k) => k * 1000);
}

// `--w1-rates 50000,60000,...` and `--w3-rates 1000,1500,...`: other steps (finer near a knee).
for (const w of ["w1", "w3", "w6"] as const) {
  const list = args[`${w}-rates`];
  if (list) P[w].rates = list.split(",").map(Number);
}
// `--w1-ns 100,500`: fewer group sizes.
if (args["w1-ns"]) P.w1.ns = args["w1-ns"].split(",").map(Number);
// `--w7-rate 25000`: W7's delivery rate, where the baseline is below a server's knee.
if (args["w7-rate"]) P.w7.rate = Number(args["w7-rate"]);
/**
 * `--w1-rounds 3`: W1 in rounds side by side, every target and group size once per round with a
 * fresh server; each knee is the median round's. One run's knee moves by a step or two with this
 * machine's phase (docs/benchmarks_history.md, "Session of 2026-12-07, third"), and servers
 * measured in the same round share it.
 */
const W1_ROUNDS = Math.max(1, Number(args["w1-rounds"] ?? 1));

const results: Record<string, unknown> = {};
const want = (w: string) => !only || only.has(w);

/**
 * Stepped workloads (W1, W3, W6) go on past a failing step and stop at the second failure in a
 * row: the knee is the highest step that passes. At N = 1000 every server's p99 is highest at the
 * first step, where the machine idles between messages (docs/benchmarks_history.md, "The lowest
 * step is the hardest"); stopping there would call a server that passes 50k and 70k a knee of 0.
 */
const STEP_FAILS = 2;

function fanoutArgs(
  p: { rates: number[]; warmup: number; seconds: number; reps: number },
  n: number,
) {
  return {
    clients: n,
    rates: p.rates.join(","),
    warmup: p.warmup,
    seconds: p.seconds,
    reps: p.reps,
    fails: STEP_FAILS,
  };
}

/** W1: group fan-out, open loop, stepped rate; the knee per target and N. */
async function w1(shared?: Map<string, Server>) {
  const rounds: Record<string, Record<string, Result[]>> = {};
  for (let round_ = 1; round_ <= W1_ROUNDS; round_++) {
    for (const n of P.w1.ns) {
      for (const t of targets) {
        const run = (s: Server) => load(s, "fanout", fanoutArgs(P.w1, n), 240);
        const r = shared?.get(t) ? await run(shared.get(t)!) : await withServer(t, {}, run);
        ((rounds[t] ??= {})[n] ??= []).push(r);
        const of = W1_ROUNDS > 1 ? ` (round ${round_} of ${W1_ROUNDS})` : "";
        console.error(`w1 ${t} N=${n}: knee ${r.knee ?? r.error}${of}`);
      }
    }
  }
  const out: Record<string, Record<string, Result>> = {};
  for (const [t, byN] of Object.entries(rounds)) {
    for (const [n, runs] of Object.entries(byN)) (out[t] ??= {})[n] = medianRound(runs);
  }
  results.w1 = out;
}

async function w2(shared?: Map<string, Server>) {
  const out: Record<string, Record<string, Result>> = {};
  for (const n of P.w2.ns) {
    for (const t of targets) {
      const run = (s: Server) =>
        load(s, "rounds", {
          clients: n,
          warmup: P.w2.warmup,
          seconds: P.w2.seconds,
          reps: P.w2.reps,
        }, 180);
      const r = shared?.get(t) ? await run(shared.get(t)!) : await withServer(t, {}, run);
      (out[t] ??= {})[n] = r;
      console.error(
        `w2 ${t} N=${n}: ${r.deliveredPerSec ?? r.error} deliveries/s`,
      );
    }
  }
  results.w2 = out;
}

/** W3: direct messages in random pairs, stepped rate; the knee per target. */
async function w3(shared?: Map<string, Server>) {
  const p = P.w3;
  const out: Record<string, Result> = {};
  for (const t of targets.filter((t) => DM_TARGETS.includes(t))) {
    const run = (s: Server) =>
      load(s, "dm", {
        clients: p.n,
        rates: p.rates.join(","),
        warmup: p.warmup,
        seconds: p.seconds,
        reps: p.reps,
        "p99-limit": 20,
        offline: 0.1,
        fails: STEP_FAILS,
      }, 300);
    out[t] = shared?.get(t) ? await run(shared.get(t)!) : await withServer(t, {}, run);
    console.error(`w3 ${t}: knee ${out[t].knee ?? out[t].error}`);
  }
  results.w3 = out;
}

async function w4(shared?: Map<string, Server>) {
  const out: Record<string, Result> = {};
  for (const t of targets) {
    const run = (s: Server) =>
      load(s, "idle", {
        clients: P.w4.n,
        seconds: P.w4.seconds,
        concurrency: 500,
      }, 240);
    out[t] = shared?.get(t) ? await run(shared.get(t)!) : await withServer(t, {}, run);
    console.error(
      `w4 ${t}: ${out[t].rssPerConnKB ?? out[t].error} KB/conn, open ${out[t].openMs} ms`,
    );
  }
  results.w4 = out;
}

/**
 * Runs autocannon (pinned to the client core) against a URL with 10 connections, as fast as they
 * go, or at `rate` requests/s in all; latency in ms.
 */
async function autocannon(
  url: string,
  headers: Record<string, string>,
  duration: number,
  rate?: number,
): Promise<Result> {
  const h = Object.entries(headers).flatMap(([k, v]) => ["-H", `${k}=${v}`]);
  if (rate) h.push("--overallRate", String(rate));
  const out = await new Deno.Command("taskset", {
    args: [
      "-c",
      CLIENT_CORES,
      "node",
      `${NODE_MODULES}/autocannon/autocannon.js`,
      "-j",
      "-c",
      "10",
      "-d",
      String(duration),
      ...h,
      url,
    ],
    stdout: "piped",
    stderr: "null",
  }).output();
  try {
    const j = JSON.parse(new TextDecoder().decode(out.stdout));
    return {
      requestsPerSec: j.requests?.average,
      p50: j.latency?.p50,
      p99: j.latency?.p99,
      max: j.latency?.max,
      errors: j.errors,
      non2xx: j.non2xx,
      total: j.requests?.total,
    };
  } catch {
    return { error: `autocannon failed (${out.code})` };
  }
}

async function w5(shared?: Map<string, Server>) {
  if (!targets.includes("ours")) return;
  const p = P.w5;
  const out: Record<string, unknown> = {};
  const haveAutocannon = await exists(
    `${NODE_MODULES}/autocannon/autocannon.js`,
  );
  const run = async (s: Server) => {
    const catchup = await load(
      s,
      "catchup",
      { missed: p.missed, reps: p.reps },
      120,
    );
    out.catchup = catchup;
    if (haveAutocannon && catchup.token) {
      const url = `${s.url}/api/conversations/lobby/messages?limit=50`;
      const headers = { authorization: `Bearer ${catchup.token}` };
      // Warmed up first like every other workload (JIT, KV's page cache), and the raw floor too.
      await autocannon(url, headers, p.warmup);
      out.history = await autocannon(url, headers, p.duration);
      // The same page while workload 1 runs: a group fan-out at about half the N = 500 knee,
      // with autocannon started a second into it (after the warm-up) on the generator's core, at
      // a fixed `busyHistoryRate` requests/s (readers scrolling back, not a flood).
      let during: Promise<Result> | undefined;
      const fanout = await load(
        s,
        "fanout",
        {
          clients: p.busyClients,
          rates: p.busyRate,
          warmup: 1,
          seconds: Math.ceil((p.duration + 2) / 3),
          reps: 3,
        },
        120,
        () => {
          during = sleep(1000).then(() => autocannon(url, headers, p.duration, p.busyHistoryRate));
        },
      );
      out.historyUnderFanout = during ? await during : { error: "the fan-out never joined" };
      out.fanoutWithHistory = fanout;
    }
  };
  if (shared?.get("ours")) await run(shared.get("ours")!);
  else await withServer("ours", {}, run);
  if (haveAutocannon) {
    // The floor: a raw kv.list page from a tiny Deno server.
    const port = freePort();
    const child = new Deno.Command("bash", {
      args: [
        "-c",
        `exec taskset -c ${SERVER_CORES} deno run -A --unstable-kv ${BENCH}/peers/kv_history.ts ${port} ${tmp}/kvh-${port}.kv ${p.missed} >${tmp}/kvh.log 2>&1`,
      ],
      stdin: "null",
    }).spawn();
    try {
      for (let i = 0; i < 100; i++) {
        try {
          const r = await fetch(`http://127.0.0.1:${port}/messages?limit=50`);
          await r.body?.cancel();
          break;
        } catch {
          await sleep(150);
        }
      }
      const raw = `http://127.0.0.1:${port}/messages?limit=50`;
      await autocannon(raw, {}, p.warmup);
      out.rawKvList = await autocannon(raw, {}, p.duration);
    } finally {
      child.kill("SIGTERM");
      await child.status;
    }
  } else out.note = "autocannon not installed (npm install --prefix bench): history not measured";
  results.w5 = out;
}

async function w6() {
  if (!targets.includes("ours")) return;
  const p = P.w6;
  const out: Record<string, unknown> = {};
  // With a quota: both configurations on the server's cores, each worker W6_QUOTA of a core.
  // Without: one worker on the server's core, two workers on a core each (on a 2-core machine
  // the second shares the generator's core, so that figure is a lower bound).
  const configs: [string, ServerOpts][] = W6_QUOTA > 0
    ? [["1 worker", { workers: 1, quota: W6_QUOTA }], ["2 workers", {
      workers: 2,
      quota: 2 * W6_QUOTA,
    }]]
    : [["1 worker", { workers: 1 }], ["2 workers", {
      workers: 2,
      cores: W6_SHARED ? SERVER_CORES : "0,1",
    }]];
  out.setup = {
    quotaPerWorker: W6_QUOTA > 0 ? W6_QUOTA : null,
    shared: W6_SHARED,
    cores: W6_QUOTA > 0 || W6_SHARED ? [SERVER_CORES, SERVER_CORES] : [SERVER_CORES, "0,1"],
  };
  // The machine's speed drifts over minutes: the runs go one, two, two, one (`rounds: 2`), so
  // each configuration sees the same phases, and each keeps its better run.
  const order = p.rounds > 1 ? [configs[0], configs[1], configs[1], configs[0]] : configs;
  const runs: Any[] = [];
  for (const [label, opts] of order) {
    const run = await withServer("ours", opts, async (s) => {
      const before = await s.quotaStat?.();
      const fanout = await load(s, "fanout", {
        clients: p.n,
        rates: p.rates.join(","),
        warmup: 1,
        seconds: 2,
        reps: p.reps,
        fails: STEP_FAILS,
      }, 600);
      const after = await s.quotaStat?.();
      const burst = await load(s, "burst", {
        clients: p.n,
        bursts: p.bursts.join(","),
        reps: p.reps,
      }, 240);
      const quota = before && after
        ? {
          periods: after.periods - before.periods,
          throttled: after.throttled - before.throttled,
          throttledMs: Math.round((after.throttledUs - before.throttledUs) / 1000),
        }
        : undefined;
      return { label, fanout, burst, quota };
    });
    runs.push(run);
    const best = out[label] as Any;
    if (!best || (run.fanout?.knee ?? 0) > (best.fanout?.knee ?? 0)) out[label] = run;
    console.error(`w6 ${label} done`);
  }
  out.runs = runs;
  results.w6 = out;
}

async function w7() {
  const p = P.w7;
  const out: Record<string, Record<string, Result>> = {};
  for (const t of targets) {
    // Ours keeps its default slow-consumer limit (4 MiB queued) here.
    const env: Record<string, string> = t === "ours"
      ? { CHAT_MAX_BUFFERED_BYTES: String(4 << 20) }
      : {};
    for (const slow of [0, 0.01]) {
      const r: Result = await withServer(t, { env }, (s) =>
        load(s, "fanout", {
          clients: p.n,
          rates: String(p.rate),
          warmup: p.warmup,
          seconds: p.seconds,
          reps: p.reps,
          pad: p.pad,
          slow,
          "p99-limit": 1e9,
        }, 180));
      (out[t] ??= {})[slow ? "slow" : "baseline"] = r;
      console.error(`w7 ${t} slow=${slow}: done`);
    }
  }
  results.w7 = out;
}

// ---- Reporting ----------------------------------------------------------------------------

const fmt = (x: unknown, d = 1) =>
  typeof x === "number" && Number.isFinite(x)
    ? String(round(x, d))
    : x === undefined
    ? "–"
    : String(x);
const k = (x: unknown) =>
  typeof x === "number" && Number.isFinite(x) ? `${round(x / 1000, 1)}k` : "–";
const ratio = (a: unknown, b: unknown) =>
  typeof a === "number" && typeof b === "number" && b > 0 ? `${round(a / b, 2)}×` : "–";
const label = (t: string) => TARGETS[t]?.label ?? t;

function table(head: string[], rows: (string | number)[][]): string {
  return [
    `| ${head.join(" | ")} |`,
    `| ${head.map(() => "---").join(" | ")} |`,
    ...rows.map((r) => `| ${r.join(" | ")} |`),
  ].join("\n");
}

// deno-lint-ignore no-explicit-any
type Any = any;

function stepAt(r: Any, rate: number): Any {
  return r?.steps?.filter((s: Any) => s.rate === rate && !s.retried).at(-1);
}

/** The passing measurement of the knee's step (a retried step was measured more than once). */
function kneeStep(r: Any): Any {
  return r?.steps?.find((s: Any) => s.rate === r.knee && s.pass);
}

/** The first failing step (its last measurement); the stepping may have gone on past it. */
function failStep(r: Any): Any {
  const steps: Any[] = (r?.steps ?? []).filter((s: Any) => !s.retried);
  return steps.find((s: Any) => !s.pass);
}

function markdown(): string {
  const parts: string[] = [];
  const w1 = results.w1 as Any;
  if (w1) {
    parts.push(
      "### W1 group fan-out (open loop): knee = highest delivery rate with reach 1.000 and p99 ≤ 25 ms",
    );
    const rounds = Object.values(w1).flatMap((byN: Any) => Object.values(byN))
      .map((r: Any) => r?.roundKnees?.length ?? 1);
    const most = Math.max(1, ...rounds);
    if (most > 1) {
      parts.push(
        `Each knee is the median of ${most} rounds side by side; the other ` +
          "columns are the median round's.\n",
      );
    }
    const rows: (string | number)[][] = [];
    for (const n of P.w1.ns) {
      const relayKnee = w1.relay?.[n]?.knee;
      const kvKnee = w1.kvrelay?.[n]?.knee;
      for (const t of targets) {
        const r = w1[t]?.[n];
        const s = kneeStep(r);
        const f = failStep(r);
        rows.push([
          n,
          label(t),
          r?.error
            ? `error: ${r.error}`
            : k(r?.knee) + (r?.roundKnees ? ` (rounds: ${r.roundKnees.map(k).join(", ")})` : ""),
          ratio(r?.knee, relayKnee),
          ratio(r?.knee, kvKnee),
          fmt(s?.reachMin, 3),
          k(s?.deliveredPerSec),
          `${fmt(s?.p50, 2)} / ${fmt(s?.p99, 2)} / ${fmt(s?.max, 1)}`,
          fmt(s?.serverCpu, 0),
          fmt(s?.serverPeakRssMB, 0),
          `${fmt(s?.clientCpu, 0)}${s?.clientBound ? " client-bound" : ""}`,
          fmt(s?.otherCpu, 0),
          f
            ? `${k(f.rate)}: reach ${fmt(f.reachMin, 3)}, p99 ${fmt(f.p99, 1)}, cli ${
              fmt(f.clientCpu, 0)
            }%`
            : "none (top step passed)",
        ]);
      }
    }
    parts.push(table([
      "N",
      "server",
      "knee (deliveries/s)",
      "vs relay",
      "vs KV relay",
      "reach",
      "delivered/s",
      "p50 / p99 / max ms",
      "server CPU %",
      "peak RSS MB",
      "client CPU %",
      "other CPU %",
      "first failing step",
    ], rows));
    const at = (t: string) => stepAt(w1[t]?.[500], 100_000);
    if (P.w1.ns.includes(500)) {
      parts.push("\nAt N = 500 and 100k deliveries/s:\n");
      parts.push(table(
        [
          "server",
          "reach",
          "delivered/s",
          "p50 / p99 / max ms",
          "server CPU %",
          "client CPU %",
        ],
        targets.map((t) => {
          const s = at(t);
          return s
            ? [
              label(t),
              fmt(s.reachMin, 3),
              k(s.deliveredPerSec),
              `${fmt(s.p50, 2)} / ${fmt(s.p99, 2)} / ${fmt(s.max, 1)}`,
              fmt(s.serverCpu, 0),
              fmt(s.clientCpu, 0),
            ]
            : [
              label(t),
              "not reached (an earlier step failed)",
              "",
              "",
              "",
              "",
            ];
        }),
      ));
    }
  }
  const w2 = results.w2 as Any;
  if (w2) {
    parts.push(
      "\n### W2 closed-loop rounds (every client sends one message; next round when all have all)",
    );
    const rows: (string | number)[][] = [];
    for (const n of P.w2.ns) {
      for (const t of targets) {
        const r = w2[t]?.[n];
        rows.push([
          n,
          label(t),
          r?.error ? `error: ${r.error}` : fmt(r?.roundsPerSec, 1),
          k(r?.deliveredPerSec),
          ratio(r?.deliveredPerSec, w2.relay?.[n]?.deliveredPerSec),
          fmt(r?.reach, 3),
          `${fmt(r?.p50, 2)} / ${fmt(r?.p99, 2)} / ${fmt(r?.max, 1)}`,
          fmt(r?.serverCpu, 0),
          fmt(r?.serverPeakRssMB, 0),
          `${fmt(r?.clientCpu, 0)}${r?.clientBound ? " client-bound" : ""}`,
          fmt(r?.otherCpu, 0),
        ]);
      }
    }
    parts.push(table([
      "N",
      "server",
      "rounds/s",
      "deliveries/s",
      "vs relay",
      "reach",
      "p50 / p99 / max ms",
      "server CPU %",
      "peak RSS MB",
      "client CPU %",
      "other CPU %",
    ], rows));
  }
  // Files before the relays spoke `dm` hold ours' result alone.
  const w3all = results.w3 as Any;
  const w3s: Record<string, Any> = w3all && (w3all.steps || w3all.error) ? { ours: w3all } : w3all;
  if (w3s) {
    parts.push(
      `\n### W3 direct messages (${P.w3.n} online users in fixed random pairs, 10 % to offline users)`,
    );
    const relayKnee = w3s.relay?.knee;
    parts.push(table(
      [
        "server",
        "knee (msgs/s, p99 ≤ 20 ms)",
        "vs relay",
        "first failing step",
      ],
      Object.entries(w3s).map(([t, r]) => {
        const fail = (r.steps ?? []).find((s: Any) => !s.pass);
        return [
          label(t),
          r.error ? `error: ${r.error}` : r.knee ? k(r.knee) : "none",
          ratio(r.knee ?? 0, relayKnee),
          fail
            ? `${k(fail.rate)}: reach ${fmt(fail.reachMin, 3)}, p99 ${fmt(fail.p99, 1)}, srv ${
              fmt(fail.serverCpu, 0)
            }%, cli ${fmt(fail.clientCpu, 0)}%`
            : "none (top step passed)",
        ];
      }),
    ));
  }
  for (const [t, r] of Object.entries(w3s ?? {})) {
    parts.push(`\n${label(t)}:`);
    if (r.error) parts.push(`error: ${r.error}`);
    parts.push(table(
      [
        "msgs/s offered",
        "reach (online)",
        "delivered/s",
        "p50 / p99 / max ms",
        "server CPU %",
        "peak RSS MB",
        "client CPU %",
        "pass (p99 ≤ 20 ms)",
      ],
      (r.steps ?? []).map((s: Any) => [
        k(s.rate),
        fmt(s.reachMin, 3),
        k(s.deliveredPerSec),
        `${fmt(s.p50, 2)} / ${fmt(s.p99, 2)} / ${fmt(s.max, 1)}`,
        fmt(s.serverCpu, 0),
        fmt(s.serverPeakRssMB, 0),
        `${fmt(s.clientCpu, 0)}${s.clientBound ? " client-bound" : ""}`,
        s.pass ? "yes" : "no",
      ]),
    ));
    if (r.offline) {
      parts.push(
        `\nOffline users: ${r.offline.users}; messages sent to them in the measured windows: ${r.offline.sent}; ` +
          `delivered on return: ${r.offline.deliveredOnReturn} (reach ${
            fmt(r.offline.reach, 3)
          }), ` +
          `all back in ${fmt(r.offline.returnMs, 0)} ms.`,
      );
    }
  }
  const w4 = results.w4 as Any;
  if (w4) {
    parts.push(
      `\n### W4 idle connections (${P.w4.n} signed-in sockets, nothing sent)`,
    );
    const relay = w4.relay;
    parts.push(table(
      [
        "server",
        "open all (ms)",
        "RSS / conn KB",
        "vs relay (KB)",
        "RSS before → after MB",
        "idle server CPU %",
        "still open",
        "client CPU % while opening",
        "server CPU µs per open",
        "of which main / KV (sw-0) / V8 workers",
        "10k opens in server CPU s",
      ],
      targets.map((t) => {
        const r = w4[t];
        if (!r || r.error) {
          return [
            label(t),
            `error: ${r?.error}`,
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
          ];
        }
        const th = r.openThreadUs;
        return [
          label(t),
          fmt(r.openMs, 0),
          fmt(r.rssPerConnKB, 2),
          relay && !relay.error
            ? `${r.rssPerConnKB - relay.rssPerConnKB >= 0 ? "+" : ""}${
              fmt(r.rssPerConnKB - relay.rssPerConnKB, 2)
            }`
            : "–",
          `${fmt(r.rssBeforeMB, 0)} → ${fmt(r.rssAfterMB, 0)}`,
          fmt(r.idleServerCpu, 2),
          `${r.stillOpen}/${r.connections}`,
          fmt(r.openClientCpu, 0),
          fmt(r.serverCpuUsPerOpen, 0),
          th
            ? [
              th.main,
              th["sw-0"] ?? 0,
              Object.entries(th).filter(([n]) => n.startsWith("V8"))
                .reduce((a, [, us]) => a + Number(us), 0),
            ].map((us) => fmt(Number(us), 0)).join(" / ")
            : "–",
          r.serverCpuUsPerOpen === undefined ? "–" : fmt(r.serverCpuUsPerOpen / 100, 2),
        ];
      }),
    ));
  }
  const w5 = results.w5 as Any;
  if (w5) {
    parts.push(
      "\n### W5 history page (50 messages, HTTP, autocannon -c 10) and 300-message catch-up",
    );
    const h = w5.history;
    const raw = w5.rawKvList;
    if (h || raw) {
      parts.push(table(
        ["endpoint", "req/s", "p50 ms", "p99 ms", "max ms", "errors / non-2xx"],
        [
          [
            "ours GET /api/conversations/lobby/messages?limit=50",
            fmt(h?.requestsPerSec, 0),
            fmt(h?.p50, 2),
            fmt(h?.p99, 2),
            fmt(h?.max, 1),
            `${h?.errors ?? "–"} / ${h?.non2xx ?? "–"}`,
          ],
          [
            "raw kv.list (tiny Deno server)",
            fmt(raw?.requestsPerSec, 0),
            fmt(raw?.p50, 2),
            fmt(raw?.p99, 2),
            fmt(raw?.max, 1),
            `${raw?.errors ?? "–"} / ${raw?.non2xx ?? "–"}`,
          ],
          ...(w5.historyUnderFanout
            ? [[
              `ours, the same page at ${P.w5.busyHistoryRate} req/s while W1 runs (N = ${P.w5.busyClients} at ${
                k(P.w5.busyRate)
              } deliveries/s)`,
              fmt(w5.historyUnderFanout.requestsPerSec, 0),
              fmt(w5.historyUnderFanout.p50, 2),
              fmt(w5.historyUnderFanout.p99, 2),
              fmt(w5.historyUnderFanout.max, 1),
              `${w5.historyUnderFanout.errors ?? "–"} / ${w5.historyUnderFanout.non2xx ?? "–"}`,
            ]]
            : []),
        ],
      ));
      const f = w5.fanoutWithHistory?.steps?.[0];
      if (f) {
        parts.push(
          `\nThe fan-out meanwhile: reach ${fmt(f.reachMin, 3)}, p50 / p99 / max ${
            fmt(f.p50, 2)
          } / ${fmt(f.p99, 2)} / ${fmt(f.max, 1)} ms, server CPU ${
            fmt(f.serverCpu, 0)
          } %, client CPU ${fmt(f.clientCpu, 0)} % (autocannon shares the generator's core).`,
        );
      }
      if (typeof h?.p99 === "number" && typeof raw?.p99 === "number") {
        parts.push(
          `\nTarget p99 ≤ 3 × ${raw.p99} + 2 = ${3 * raw.p99 + 2} ms: ours ${h.p99} ms.`,
        );
      }
    }
    if (w5.note) parts.push(w5.note);
    const c = w5.catchup;
    if (c) {
      parts.push(
        `\nCatch-up after missing ${c.missed} lobby messages (connect → welcome → resume → resumed): ` +
          `median ${fmt(c.medianMs, 1)} ms over ${c.runs?.length ?? 0} runs ` +
          `(${
            (c.runs ?? []).map((r: Any) => `${r.received} msgs in ${r.totalMs} ms`).join("; ")
          }).`,
      );
    }
  }
  const w6 = results.w6 as Any;
  if (w6) {
    parts.push(
      `\n### W6 one worker vs two (\`deno serve --parallel\`, DENO_JOBS=2), N = ${P.w6.n}`,
    );
    const one = w6["1 worker"];
    const two = w6["2 workers"];
    const q = w6.setup?.quotaPerWorker;
    const labels = q
      ? [
        `1 worker (${q} of core ${w6.setup.cores[0]})`,
        `2 workers (${round(2 * q, 2)} of core ${w6.setup.cores[1]})`,
      ]
      : w6.setup?.shared
      ? [`1 worker (core ${w6.setup.cores[0]})`, `2 workers (both on core ${w6.setup.cores[1]})`]
      : ["1 worker (core 0)", "2 workers (cores 0-1, generator on core 1 too)"];
    if (w6.setup?.shared) {
      parts.push(
        "\nBoth configurations on the server's core, no quota: the same CPU for one worker and " +
          "for two, so the ratio is what splitting the members across workers costs (1× = " +
          "nothing).\n",
      );
    }
    if (q) {
      parts.push(
        `\nEach worker may use ${q} of a core (a cgroup CPU quota, 2 ms periods), both ` +
          "configurations on the server's core, the generator alone on its own: two workers " +
          "get twice one worker's CPU, as they would with a core each. See " +
          'docs/benchmarks_history.md "W6 on two cores: a CPU quota per worker" for what this ' +
          "measures and what not.\n",
      );
    }
    const row = (l: string, r: Any, base: Any) => {
      const s = kneeStep(r?.fanout);
      const f = failStep(r?.fanout);
      return [
        l,
        k(r?.fanout?.knee),
        ratio(r?.fanout?.knee, base?.fanout?.knee),
        fmt(s?.reachMin, 3),
        fmt(s?.p99, 2),
        fmt(s?.serverCpu, 0),
        fmt(s?.clientCpu, 0),
        f ? `${k(f.rate)}: p99 ${fmt(f.p99, 1)}, srv ${fmt(f.serverCpu, 0)}%` : "none",
        r?.quota ? `${r.quota.throttled} of ${r.quota.periods}` : "–",
      ];
    };
    const head = [
      "config",
      "fan-out knee",
      "vs 1 worker",
      "reach at knee",
      "p99 at knee ms",
      "server CPU %",
      "client CPU %",
      "first failing step",
      "periods throttled",
    ];
    parts.push(table(head, [row(labels[0], one, one), row(labels[1], two, one)]));
    const runs: Any[] = w6.runs ?? [];
    if (runs.length > 2) {
      parts.push(
        "\nEach run, in the order run (the table above keeps each configuration's better run; " +
          '"vs 1 worker" here is against the 1-worker run of the same round):\n',
      );
      parts.push(table(
        head,
        runs.map((r, i) => {
          const base = r.label === "1 worker" ? r : runs[i < 2 ? 0 : 3];
          return row(`${r.label === "1 worker" ? labels[0] : labels[1]}, run ${i + 1}`, r, base);
        }),
      ));
    }
    parts.push(
      "\nBursts (every message sent at once; time until every client has all of them):\n",
    );
    const rows: (string | number)[][] = [];
    for (
      const [l, r] of [["1 worker", one], ["2 workers", two]] as [string, Any][]
    ) {
      for (const b of r?.burst?.bursts ?? []) {
        rows.push([
          l,
          b.burst,
          fmt(b.reachMin, 3),
          fmt(b.ms, 1),
          k(b.deliveredPerSec),
          `${fmt(b.p50, 2)} / ${fmt(b.p99, 2)} / ${fmt(b.max, 1)}`,
          fmt(b.serverCpu, 0),
          fmt(b.clientCpu, 0),
        ]);
      }
    }
    parts.push(
      table([
        "config",
        "burst",
        "reach",
        "all delivered in ms",
        "deliveries/s",
        "p50 / p99 / max ms",
        "server CPU %",
        "client CPU %",
      ], rows),
    );
  }
  const w7 = results.w7 as Any;
  if (w7) {
    parts.push(
      `\n### W7 slow consumers (N = ${P.w7.n}, ${
        k(P.w7.rate)
      } deliveries/s, ${P.w7.pad}-byte padding; 1 % extra clients stop reading)`,
    );
    parts.push(table(
      [
        "server",
        "healthy p99 without → with ms",
        "ratio",
        "reach (healthy)",
        "peak RSS without → with MB",
        "slow clients closed by server",
        "client CPU %",
      ],
      targets.map((t) => {
        const b = w7[t]?.baseline;
        const s = w7[t]?.slow;
        const bs = b?.steps?.[0];
        const ss = s?.steps?.[0];
        return [
          label(t),
          `${fmt(bs?.p99, 2)} → ${fmt(ss?.p99, 2)}`,
          ratio(ss?.p99, bs?.p99),
          fmt(ss?.reachMin, 3),
          `${fmt(bs?.serverPeakRssMB, 0)} → ${fmt(ss?.serverPeakRssMB, 0)}`,
          s?.slow ? `${s.slow.closedByServer}/${s.slow.slowClients}` : "–",
          fmt(ss?.clientCpu, 0),
        ];
      }),
    ));
  }
  return parts.join("\n");
}

/** Keeps what is measured so far, so an interrupted run still leaves its figures. */
async function savePartial() {
  await Deno.mkdir(`${BENCH}/results/tmp`, { recursive: true });
  await Deno.writeTextFile(
    `${BENCH}/results/tmp/partial.json`,
    JSON.stringify(
      { date: new Date().toISOString(), params: P, results },
      null,
      2,
    ) + "\n",
  );
}

if (args.render) {
  // Re-renders the tables of a results file: deno run -A bench/run.ts --render <file.json>
  const file = JSON.parse(await Deno.readTextFile(args.render));
  Object.assign(P, file.params);
  Object.assign(results, file.results);
  const seen = ["w1", "w2", "w4", "w7"].flatMap((w) => Object.keys(file.results?.[w] ?? {}));
  const w3 = file.results?.w3;
  if (w3 && !w3.steps && !w3.error) seen.push(...Object.keys(w3));
  if (w3 || file.results?.w5 || file.results?.w6) {
    seen.push("ours");
  }
  targets.splice(
    0,
    targets.length,
    ...Object.keys(TARGETS).filter((t) => seen.includes(t)),
  );
  console.log(markdown());
  Deno.exit(0);
}

// ---- Main ---------------------------------------------------------------------------------

const needNode = targets.some((t) => TARGETS[t].node) || want("w5");
await ensureNodeDeps(needNode);
const env = await environment();
/** The file system of the KV files: `tmpfs` (no fsync cost) or a disk's (`ext2/ext3`, say). */
const kvFilesystem = await sh(`stat -f -c %T ${tmp}`);
console.error(
  `bench: targets ${targets.join(", ")}; ${quick ? "quick" : "full"} run; tmp ${tmp}`,
);
let failed = false;
const overBudget = () => quick && Date.now() - started > quickBudgetMs;
try {
  if (quick) {
    // One server per target, shared by the workloads, to stay within a minute.
    const shared = new Map<string, Server>();
    try {
      for (const t of targets) shared.set(t, await startServer(t));
      if (want("w1")) await w1(shared);
      if (want("w2") && !overBudget()) await w2(shared);
      if (want("w3") && !overBudget()) await w3(shared);
      if (want("w4") && !overBudget()) await w4(shared);
      if (want("w5") && !overBudget()) await w5(shared);
    } finally {
      for (const s of shared.values()) await s.stop();
    }
    if (only?.has("w6")) await w6();
    if (only?.has("w7")) await w7();
  } else {
    if (want("w1")) await w1().then(savePartial);
    if (want("w2")) await w2().then(savePartial);
    if (want("w3")) await w3().then(savePartial);
    if (want("w4")) await w4().then(savePartial);
    if (want("w5")) await w5().then(savePartial);
    if (want("w6")) await w6().then(savePartial);
    if (want("w7")) await w7().then(savePartial);
  }
} catch (error) {
  failed = true;
  console.error(`bench: ${error instanceof Error ? error.stack : error}`);
  results.error = String(error);
}

const errors = JSON.stringify(results).match(/"error":"[^"]*"/g) ?? [];
if (errors.length) failed = true;
const date = new Date().toISOString().replace(/[:]/g, "-").replace(/\..*/, "");
const doc = {
  date: new Date().toISOString(),
  quick,
  durationS: round((Date.now() - started) / 1000, 1),
  environment: env,
  loadAverageAtEnd: await sh("cut -d' ' -f1-3 /proc/loadavg"),
  kvFilesystem,
  params: P,
  backgroundCpuBeforeRuns: noiseLog,
  results,
};
const outDir = quick ? `${BENCH}/results/tmp` : `${BENCH}/results`;
await Deno.mkdir(outDir, { recursive: true });
const md = `## Benchmark ${doc.date}${quick ? " (quick)" : ""}\n\n` +
  `Machine: ${env.cpu}, ${env.cores} cores, ${env.memoryGiB} GiB, Linux ${env.kernel}; load average at start ${env.loadAverageAtStart}.\n` +
  `Versions: ${Object.entries(env.versions).map(([n, v]) => `${n} ${v}`).join(", ")}.\n` +
  `Server on core ${SERVER_CORES}, generator on core ${CLIENT_CORES}; KV files on ${kvFilesystem}. Command: \`${env.command}\`.\n\n` +
  markdown() + "\n";
await Deno.writeTextFile(
  `${outDir}/${date}.json`,
  JSON.stringify(doc, null, 2) + "\n",
);
// The tables go to the git-ignored tmp/ folder (deno fmt would realign them); `--render` redoes them.
await Deno.mkdir(`${BENCH}/results/tmp`, { recursive: true });
await Deno.writeTextFile(`${BENCH}/results/tmp/${date}.md`, md);
console.log(md);
console.log(`results: ${outDir}/${date}.json (${doc.durationS} s)`);
if (errors.length) {
  console.error(
    `bench: ${errors.length} run(s) failed: ${errors.slice(0, 5).join(", ")}`,
  );
}
await Deno.remove(tmp, { recursive: true }).catch(() => {});
Deno.exit(failed ? 1 : 0);
