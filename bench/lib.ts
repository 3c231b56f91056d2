/**
 * Small helpers shared by the load generator and the orchestrator: process statistics from
 * /proc, a latency histogram, medians and argument parsing.
 *
 * @module
 */

/** Clock ticks per second of /proc/<pid>/stat (`getconf CLK_TCK`, 100 on Linux x86-64). */
export const CLK_TCK = 100;

/**
 * The shell prefix that raises a server's or generator's open-file limit before it `exec`s:
 * 65536 where allowed, else the hard limit.
 */
export const ULIMIT = 'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"';

/** User and system CPU microseconds in the text of a `/proc/<pid>[/task/<tid>]/stat` file. */
function statCpuUs(stat: string): { user: number; system: number } {
  // The command name may contain spaces: split after the closing parenthesis.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields[0] is field 3 (state); utime is field 14, stime field 15.
  const tick = 1e6 / CLK_TCK;
  return { user: Number(fields[11]) * tick, system: Number(fields[12]) * tick };
}

/** User + system CPU milliseconds in the text of a `/proc/<pid>[/task/<tid>]/stat` file. */
function statCpuMs(stat: string): number {
  const { user, system } = statCpuUs(stat);
  return (user + system) / 1000;
}

/** User and system CPU time of a process so far, in microseconds, apart (kernel time shows). */
export function cpuSplitUs(pid: number): { user: number; system: number } {
  return statCpuUs(Deno.readTextFileSync(`/proc/${pid}/stat`));
}

/** CPU time (user + system) of a process in milliseconds, or NaN when it is gone. */
export function cpuMs(pid: number): number {
  try {
    return statCpuMs(Deno.readTextFileSync(`/proc/${pid}/stat`));
  } catch {
    return NaN;
  }
}

/**
 * CPU time (user + system) in milliseconds of each thread of a process, summed by thread name
 * (`/proc/<pid>/task/<tid>/stat`): the main thread, KV's SQLite thread `sw-0`, V8's workers.
 * Threads that ended between two calls are missing from the second.
 */
export function threadCpuMs(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  try {
    for (const task of Deno.readDirSync(`/proc/${pid}/task`)) {
      try {
        const stat = Deno.readTextFileSync(`/proc/${pid}/task/${task.name}/stat`);
        const name = task.name === String(pid)
          ? "main"
          : stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
        out[name] = (out[name] ?? 0) + statCpuMs(stat);
      } catch {
        // The thread ended while we looked.
      }
    }
  } catch {
    // The process is gone.
  }
  return out;
}

/** Per-thread-name CPU milliseconds spent between two {@linkcode threadCpuMs} samples. */
export function threadCpuDelta(
  before: Record<string, number>,
  after: Record<string, number>,
): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, ms] of Object.entries(after)) {
    const d = ms - (before[name] ?? 0);
    if (d > 0) out[name] = d;
  }
  return out;
}

/** Resident and peak resident memory of a process in bytes (VmRSS, VmHWM). */
export function memory(pid: number): { rss: number; hwm: number } {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const kb = (name: string) => {
      const m = status.match(new RegExp(`^${name}:\\s+(\\d+) kB`, "m"));
      return m ? Number(m[1]) * 1024 : NaN;
    };
    return { rss: kb("VmRSS"), hwm: kb("VmHWM") };
  } catch {
    return { rss: NaN, hwm: NaN };
  }
}

/** A CPU sampler: percentage of one core used by a process between two calls. */
export class CpuMeter {
  #pid: number;
  #cpu0: number;
  #t0: number;
  constructor(pid: number) {
    this.#pid = pid;
    this.#cpu0 = cpuMs(pid);
    this.#t0 = performance.now();
  }
  /** Percent of one core since construction (100 = one full core). */
  percent(): number {
    const dt = performance.now() - this.#t0;
    return dt > 0 ? ((cpuMs(this.#pid) - this.#cpu0) / dt) * 100 : NaN;
  }
}

/** Busy CPU time of the whole machine in ms (user + nice + system, all cores; no irq, no idle). */
export function systemBusyMs(): number {
  try {
    const line = Deno.readTextFileSync("/proc/stat").split("\n", 1)[0];
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    return ((f[0] + f[1] + f[2]) * 1000) / CLK_TCK;
  } catch {
    return NaN;
  }
}

/** Latency histogram with 10 µs buckets up to 2 s, plus the exact maximum. */
export class Histogram {
  static readonly RES = 0.01;
  static readonly BUCKETS = 200_000;
  counts = new Uint32Array(Histogram.BUCKETS + 1);
  n = 0;
  max = 0;
  add(ms: number) {
    if (ms < 0) ms = 0;
    const b = Math.min(Histogram.BUCKETS, Math.floor(ms / Histogram.RES));
    this.counts[b]++;
    this.n++;
    if (ms > this.max) this.max = ms;
  }
  /** The q quantile (0..1) in ms, NaN when empty. */
  quantile(q: number): number {
    if (this.n === 0) return NaN;
    const target = Math.ceil(q * this.n);
    let seen = 0;
    for (let i = 0; i <= Histogram.BUCKETS; i++) {
      seen += this.counts[i];
      if (seen >= target) {
        return i === Histogram.BUCKETS ? this.max : Math.min(this.max, (i + 1) * Histogram.RES);
      }
    }
    return this.max;
  }
}

/** The median of the finite numbers given (NaN when none). */
export function median(values: number[]): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/** Parses `--key value` and `--flag` arguments. */
export function parseArgs(args: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith("--")) continue;
    const eq = a.indexOf("=");
    if (eq > 0) {
      out[a.slice(2, eq)] = a.slice(eq + 1);
    } else if (i + 1 < args.length && !args[i + 1].startsWith("--")) {
      out[a.slice(2)] = args[++i];
    } else {
      out[a.slice(2)] = "true";
    }
  }
  return out;
}

/** Rounds for display. */
export function round(x: number, digits = 2): number {
  if (!Number.isFinite(x)) return x;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** Resolves after `ms` milliseconds. */
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Whether a file or directory exists at `path`. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Environment for our server in every benchmark tool: the abuse limits raised so a run measures
 * throughput, not the limits.
 */
export const OURS_ENV: Record<string, string> = {
  CHAT_RATE_BURST: "100000",
  CHAT_RATE_PER_SECOND: "100000",
  CHAT_USER_RATE_BURST: "100000",
  CHAT_USER_RATE_PER_SECOND: "100000",
  CHAT_MAX_CONNECTIONS_PER_ADDRESS: "1000000",
  CHAT_MAX_CONNECTIONS_PER_USER: "1000",
  CHAT_SIGNIN_PER_MINUTE: "100000",
  CHAT_GROUP_CREATES_PER_HOUR: "100000",
  CHAT_MAX_BUFFERED_BYTES: String(64 << 20),
  // W7 pads messages to a few KB.
  CHAT_MAX_MESSAGE_BYTES: "16000",
  CHAT_LOG_LEVEL: "warn",
};

/** Targets that speak the load generator's `dm` mode: ours and the Deno relays. */
export const DM_TARGETS: readonly string[] = ["ours", "relay", "framed", "kvrelay"];

/** Polls `url` until it answers (true) or 20 s pass (false). */
export async function waitForHttp(url: string): Promise<boolean> {
  for (let i = 0; i < 200; i++) {
    try {
      await (await fetch(url)).body?.cancel();
      return true;
    } catch {
      await sleep(100);
    }
  }
  return false;
}

/** What {@linkcode loadCommand} runs: one server, one mode, and `flags` as `--key value`. */
export interface LoadCommandOptions {
  target: string;
  url: string;
  serverPid: number;
  mode: string;
  maxSeconds: number;
  flags?: Record<string, string | number>;
}

/** The command line of `bench/load.ts` (`deno run -A …`) against one server. */
export function loadCommand(options: LoadCommandOptions): string[] {
  return [
    "deno",
    "run",
    "-A",
    new URL("./load.ts", import.meta.url).pathname,
    "--target",
    options.target,
    "--url",
    options.url,
    "--server-pid",
    String(options.serverPid),
    "--mode",
    options.mode,
    "--max-seconds",
    String(options.maxSeconds),
    ...Object.entries(options.flags ?? {}).flatMap(([k, v]) => [`--${k}`, String(v)]),
  ];
}

/**
 * The run whose knee is the median of `runs`' (the lower one of an even count), with every
 * round's knee (`roundKnees`; null for a run that failed) and the other rounds' runs
 * (`otherRounds`). A lone run is returned as it is.
 */
export function medianRound<T extends Record<string, unknown>>(
  runs: T[],
): T & { roundKnees?: unknown[]; otherRounds?: T[] } {
  if (runs.length === 1) return runs[0];
  const kneeOf = (r: T) => typeof r.knee === "number" ? r.knee : -1;
  const order = runs.map((_, i) => i).sort((a, b) => kneeOf(runs[a]) - kneeOf(runs[b]));
  const mid = order[Math.floor((runs.length - 1) / 2)];
  return {
    ...runs[mid],
    roundKnees: runs.map((r) => r.knee ?? null),
    otherRounds: runs.filter((_, i) => i !== mid),
  };
}
