/**
 * Interleaved rounds: the same steps against several servers (or several builds of ours), one
 * after another, round after round, every step measured even after one fails. Where a knee sits
 * on a limit (fan-out at N = 1000 here, for every server), one run's knee is where the first
 * unlucky window lands; how often each server passes each step, over rounds run side by side, is
 * the comparison that holds.
 *
 *   deno run -A bench/interleave.ts [--mode fanout|dm] [--clients 1000] [--rates 25000,50000]
 *     [--targets ours,relay] [--rounds 4] [--seconds 2] [--reps 3] [--limit 25] [--kv-dir DIR]
 *
 * A target is one of `bench/targets.ts` (`ours`, `relay`, `kvrelay`, `socketio`, …), optionally
 * `@DIR`: the same target from another checkout of this repository (`git worktree add /tmp/old
 * <commit>`; `ours@/tmp/old`), to set two builds side by side; and optionally `+KEY=VALUE` (more
 * than once): environment for its server (`ours+CHAT_BUS=broadcast`). Servers run on core 0 and
 * the load generator (`bench/load.ts`) on core 1, a fresh server (and KV file) per target and
 * round. Prints p99 ms and server CPU % per step and round, and how many rounds passed (reach 1.0
 * and p99 ≤ `--limit`).
 *
 * @module
 */
import { loadCommand, median, parseArgs, round, sleep, ULIMIT, waitForHttp } from "./lib.ts";
import { ensureNodeDeps, NODE_MODULES, TARGETS } from "./targets.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/** A target's name and the checkout it runs from. */
export interface TargetSpec {
  spec: string;
  name: string;
  root: string;
  /** Environment for the server beyond the benchmark's own (`+KEY=VALUE` in the spec). */
  env: Record<string, string>;
}

/**
 * Parses `name[@dir][+KEY=VALUE…]`: a target, the checkout it runs from, and environment
 * variables for its server (`ours+CHAT_BUS=broadcast`). Throws on a name this tool cannot start.
 */
export function parseTarget(spec: string, root = ROOT): TargetSpec {
  const [head, ...vars] = spec.split("+");
  const at = head.indexOf("@");
  const name = at < 0 ? head : head.slice(0, at);
  if (!TARGETS[name]) {
    throw new Error(
      `Expected a target ${Object.keys(TARGETS).join(", ")} (optionally @DIR, +KEY=VALUE), ` +
        `got "${spec}"`,
    );
  }
  const env: Record<string, string> = {};
  for (const v of vars) {
    const eq = v.indexOf("=");
    if (eq < 1) throw new Error(`Expected KEY=VALUE after "+" in "${spec}", got "${v}"`);
    env[v.slice(0, eq)] = v.slice(eq + 1);
  }
  return { spec, name, root: at < 0 ? root : head.slice(at + 1).replace(/\/$/, ""), env };
}

/** One step of one round, as `bench/load.ts` reported it. */
export interface StepResult {
  rate: number;
  reach: number;
  p99: number;
  serverCpu: number;
  clientCpu: number;
}

/** The knee of one run: its highest step with reach 1.0 and p99 ≤ `limit` ms; 0 when none. */
export function knee(steps: readonly StepResult[], limit: number): number {
  return Math.max(0, ...steps.filter((s) => passes(s, limit)).map((s) => s.rate));
}

/** Whether a step passed: reach 1.0 and p99 ≤ `limit` ms. */
export function passes(step: StepResult, limit: number): boolean {
  return step.reach >= 1 && step.p99 <= limit;
}

/** Starts `t` on core 0, runs the steps from core 1, stops it; the steps measured. */
async function measure(
  t: TargetSpec,
  options: {
    mode: string;
    clients: number;
    rates: number[];
    seconds: number;
    reps: number;
    limit: number;
  },
  dir: string,
): Promise<StepResult[]> {
  const port = 20000 + Math.floor(Math.random() * 10000); // below the ephemeral range
  const def = TARGETS[t.name];
  const opts = { dir, root: t.root };
  const server = new Deno.Command("bash", {
    args: [
      "-c",
      `${ULIMIT}; exec taskset -c 0 "$@"`,
      "bash",
      ...def.cmd(port, opts),
    ],
    cwd: t.root,
    env: { ...def.env?.(opts), ...t.env, NODE_PATH: NODE_MODULES },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    const url = `http://127.0.0.1:${port}`;
    if (!(await waitForHttp(url))) {
      throw new Error(`${t.spec} did not answer on ${url}`);
    }
    const cmd = loadCommand({
      target: def.loadAs ?? t.name,
      url,
      serverPid: server.pid,
      mode: options.mode,
      maxSeconds: 240,
      flags: {
        clients: options.clients,
        rates: options.rates.join(","),
        warmup: 1,
        seconds: options.seconds,
        reps: options.reps,
        "no-stop": "true",
        "p99-limit": options.limit,
        ...(options.mode === "dm" ? { offline: 0.1 } : {}),
        ...def.loadFlags,
      },
    });
    const out = await new Deno.Command("bash", {
      args: ["-c", `${ULIMIT}; exec taskset -c 1 "$@"`, "bash", ...cmd],
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).output();
    const line = new TextDecoder().decode(out.stdout).split("\n")
      .find((l) => l.startsWith("RESULT "));
    if (!line) {
      throw new Error(`${t.spec}: the load generator printed no result`);
    }
    const result = JSON.parse(line.slice(7));
    return (result.steps ?? []).map((s: Record<string, number>) => ({
      rate: s.rate,
      reach: s.reachMin ?? s.reach,
      p99: round(s.p99, 1),
      serverCpu: s.serverCpu,
      clientCpu: s.clientCpu,
    }));
  } finally {
    try {
      server.kill("SIGTERM");
    } catch { /* gone */ }
    await server.status;
  }
}

if (import.meta.main) {
  const args = parseArgs(Deno.args);
  const options = {
    mode: args.mode ?? "fanout",
    clients: Number(args.clients ?? 1000),
    rates: (args.rates ?? "25000,50000").split(",").map(Number),
    seconds: Number(args.seconds ?? 2),
    reps: Number(args.reps ?? 3),
    limit: Number(args.limit ?? (args.mode === "dm" ? 20 : 25)),
  };
  const limit = options.limit;
  const rounds = Number(args.rounds ?? 4);
  const targets = (args.targets ?? "ours,relay").split(",").map((s) => parseTarget(s));
  await ensureNodeDeps(targets.some((t) => TARGETS[t.name].node));
  const dir = await Deno.makeTempDir({
    prefix: "interleave-",
    dir: args["kv-dir"],
  });
  const results = new Map<string, StepResult[][]>(
    targets.map((t) => [t.spec, []]),
  );
  try {
    for (let r = 0; r < rounds; r++) {
      for (const t of targets) {
        const steps = await measure(t, options, dir);
        results.get(t.spec)!.push(steps);
        console.error(
          `round ${r + 1} ${t.spec}: ` +
            steps.map((s) =>
              `${s.rate / 1000}k p99 ${s.p99} (${round(s.serverCpu, 0)} %, client ${
                round(s.clientCpu, 0)
              } %)`
            )
              .join(", "),
        );
        await sleep(2000);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  console.log(
    `${options.mode}, ${options.clients} clients, ${rounds} rounds, ${options.reps} windows of ` +
      `${options.seconds} s per step; pass = reach 1.0 and p99 ≤ ${limit} ms; KV files in ` +
      `${args["kv-dir"] ?? "the system's temp dir"}\n`,
  );
  console.log(
    "| target | step | passed | p99 ms by round (server CPU %) | p99 median | reach min |",
  );
  console.log("| --- | --- | --- | --- | --- | --- |");
  for (const t of targets) {
    const knees = results.get(t.spec)!.map((run) => `${knee(run, limit) / 1000}k`);
    console.log(`| ${t.spec} | knee by round | ${knees.join(", ")} | | | |`);
    for (const rate of options.rates) {
      const steps = results.get(t.spec)!.map((run) => run.findLast((s) => s.rate === rate));
      const got = steps.filter((s): s is StepResult => s !== undefined);
      const passed = got.filter((s) => passes(s, limit)).length;
      const cells = steps.map((s) => s ? `${s.p99} (${round(s.serverCpu, 0)})` : "–").join("; ");
      console.log(
        `| ${t.spec} | ${rate / 1000}k | ${passed} of ${steps.length} | ${cells} | ` +
          `${got.length ? round(median(got.map((s) => s.p99)), 1) : "–"} | ` +
          `${got.length ? Math.min(...got.map((s) => s.reach)) : "–"} |`,
      );
    }
  }
}
