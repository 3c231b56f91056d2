/**
 * Where a server's CPU goes, by thread and by code (kernel, the Deno binary with V8's builtins,
 * libc, JIT-compiled JavaScript), for ours and the minimal Deno relay under the same load.
 * The V8 profile (`bench/profile.ts`) sees only JavaScript; `perf` sees every thread, KV's
 * SQLite thread (`sw-0`) included, and the kernel's share of each socket write.
 *
 *   deno run -A bench/perf_split.ts [--mode fanout|dm] [--clients 500] [--rate 50000]
 *     [--seconds 4] [--targets ours,relay,kvrelay] [--top 8] [--kv-dir /dev/shm]
 *
 * For each target: starts the server on core 0 (`--v8-flags=--perf-basic-prof`, so JIT frames
 * have names), starts `bench/load.ts` on core 1, waits for every client's join and a second of
 * warm-up, then samples the server with `perf record -F 1999` for `--seconds` while the load
 * runs. Prints samples per thread and object, as a share of one core, and the hottest
 * JavaScript functions. Needs `perf` (Debian: `apt-get install linux-perf`) and root.
 *
 * @module
 */
import { loadCommand, OURS_ENV, parseArgs, round, sleep, waitForHttp } from "./lib.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const FREQ = 1999;

/** Samples per (thread, object) of one `perf record`, and the top JIT symbols. */
export interface Split {
  target: string;
  seconds: number;
  rows: {
    thread: string;
    object: string;
    samples: number;
    corePercent: number;
  }[];
  js: { symbol: string; samples: number }[];
  load: string;
}

async function run(
  cmd: string[],
  options: Deno.CommandOptions = {},
): Promise<string> {
  const out = await new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    ...options,
    stdout: "piped",
  })
    .output();
  return new TextDecoder().decode(out.stdout);
}

/** Parses `perf report --sort comm,dso -n` lines: `  12.34%  567  thread  object`. */
export function parseReport(
  text: string,
): { thread: string; object: string; samples: number }[] {
  const rows = [];
  for (const line of text.split("\n")) {
    const m = line.match(/^\s+[\d.]+%\s+(\d+)\s+(\S.*?)\s{2,}(\S.*?)\s*$/);
    if (m) rows.push({ samples: Number(m[1]), thread: m[2], object: m[3] });
  }
  return rows;
}

function startServer(
  target: string,
  port: number,
  dir: string,
): Deno.ChildProcess {
  // `--perf-basic-prof` also turns on V8's log: keep it out of the working tree.
  const flags = [
    "--allow-all",
    `--v8-flags=--perf-basic-prof,--logfile=${dir}/v8.log`,
  ];
  const args = target === "ours"
    ? [
      "deno",
      "serve",
      ...flags,
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "main.ts",
    ]
    : target === "kvrelay"
    ? [
      "deno",
      "run",
      ...flags,
      "--unstable-kv",
      "bench/peers/deno_kv_relay.ts",
      String(port),
      `${dir}/kvrelay.kv`,
    ]
    : ["deno", "run", ...flags, "bench/peers/deno_relay.ts", String(port)];
  return new Deno.Command("taskset", {
    args: ["-c", "0", ...args],
    cwd: ROOT,
    env: { ...OURS_ENV, CHAT_KV_PATH: `${dir}/chat.kv` },
    stdout: "null",
    stderr: "null",
  }).spawn();
}

/** Runs one target under load and samples it. */
export async function split(
  target: string,
  options: {
    mode: string;
    clients: number;
    rate: number;
    seconds: number;
    top: number;
    /** Where the KV files go (`/dev/shm`: no fsync cost); the system's temp dir by default. */
    kvDir?: string;
  },
): Promise<Split> {
  const dir = await Deno.makeTempDir({ prefix: "perfsplit-", dir: options.kvDir });
  const port = 20000 + Math.floor(Math.random() * 10000); // below the ephemeral range
  const server = startServer(target, port, dir);
  const url = `http://127.0.0.1:${port}`;
  await waitForHttp(url);
  const load = new Deno.Command("taskset", {
    args: [
      "-c",
      "1",
      ...loadCommand({
        target,
        url,
        serverPid: server.pid,
        mode: options.mode,
        maxSeconds: 120,
        flags: {
          clients: options.clients,
          rates: options.rate,
          warmup: 1,
          seconds: options.seconds + 3,
          reps: 1,
          "no-stop": "true",
        },
      }),
    ],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Sample once every client has joined and the warm-up is over.
  const stderr = load.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!/joined/.test(seen)) {
    const { value, done } = await stderr.read();
    if (done) break;
    seen += value;
  }
  const rest = (async () => {
    for (;;) {
      const { value, done } = await stderr.read();
      if (done) return;
      seen += value;
    }
  })();
  await sleep(1500);
  const data = `${dir}/perf.data`;
  await run([
    ...["perf", "record", "-F", String(FREQ), "-g", "-p", String(server.pid)],
    ...["-o", data, "--", "sleep", String(options.seconds)],
  ], { stderr: "null" });
  await load.status;
  await rest;
  const loadOut = await new Response(load.stdout).text();
  server.kill("SIGTERM");
  await server.status;
  const report = await run([
    ...[
      "perf",
      "report",
      "-i",
      data,
      "--no-children",
      "-n",
      "--sort",
      "comm,dso",
    ],
    ...["--stdio", "-g", "none"],
  ], { stderr: "null" });
  const jsReport = await run([
    ...["perf", "report", "-i", data, "--no-children", "-n", "--sort", "sym"],
    ...["--stdio", "-g", "none"],
  ], { stderr: "null" });
  const js = jsReport.split("\n").flatMap((line) => {
    const m = line.match(/^\s+[\d.]+%\s+(\d+)\s+\[\.\]\s+JS:\S?(.*)$/);
    return m ? [{ samples: Number(m[1]), symbol: m[2].replace(`file://${ROOT}/`, "") }] : [];
  }).slice(0, options.top);
  await Deno.remove(dir, { recursive: true });
  const total = FREQ * options.seconds;
  const rows = parseReport(report).map((r) => ({
    ...r,
    // One JIT map per process: "[JIT] tid 123" is the same object in every run.
    object: r.object.startsWith("[JIT]") ? "[JIT] JavaScript" : r.object,
    corePercent: round((r.samples / total) * 100, 1),
  }));
  const line = seen.split("\n").find((l) => /rate .*\/s:/.test(l)) ?? "";
  return {
    target,
    seconds: options.seconds,
    rows,
    js,
    load: line.trim() || loadOut.slice(0, 200),
  };
}

if (import.meta.main) {
  const args = parseArgs(Deno.args);
  const options = {
    mode: args.mode ?? "fanout",
    clients: Number(args.clients ?? 500),
    rate: Number(args.rate ?? 50000),
    seconds: Number(args.seconds ?? 4),
    top: Number(args.top ?? 8),
    kvDir: args["kv-dir"],
  };
  const targets = (args.targets ?? "ours,relay").split(",");
  const splits: Split[] = [];
  for (const target of targets) splits.push(await split(target, options));
  const keys = [
    ...new Set(
      splits.flatMap((s) => s.rows.map((r) => `${r.thread} | ${r.object}`)),
    ),
  ];
  const cell = (s: Split, key: string) =>
    s.rows.filter((r) => `${r.thread} | ${r.object}` === key)
      .reduce((a, r) => a + r.corePercent, 0);
  console.log(
    `${options.mode}, ${options.clients} clients, ${options.rate}/s, ${options.seconds} s sampled`,
  );
  for (const s of splits) console.log(`${s.target}: ${s.load}`);
  console.log(
    `\n| thread | object | ${targets.map((t) => `${t} (% of a core)`).join(" | ")} |`,
  );
  console.log(`| --- | --- | ${targets.map(() => "---").join(" | ")} |`);
  const rows = keys.map((k) => ({ k, v: splits.map((s) => cell(s, k)) }))
    .filter((r) => r.v.some((v) => v >= 0.2))
    .sort((a, b) => b.v[0] - a.v[0]);
  for (const r of rows) {
    console.log(`| ${r.k} | ${r.v.map((v) => round(v, 1)).join(" | ")} |`);
  }
  const totals = splits.map((s) => round(s.rows.reduce((a, r) => a + r.corePercent, 0), 1));
  console.log(`| all | | ${totals.join(" | ")} |`);
  for (const s of splits) {
    console.log(`\nhottest JavaScript (${s.target}, samples):`);
    for (const j of s.js) {
      console.log(`  ${String(j.samples).padStart(5)}  ${j.symbol}`);
    }
  }
}
