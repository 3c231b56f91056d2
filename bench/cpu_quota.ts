/**
 * A CPU quota for a benchmark server: a cgroup that lets the processes in it run for at most
 * `cores` × `periodUs` microseconds of CPU per period, whatever their threads. W6 uses it on a
 * machine with too few cores to give each worker a core of its own and the load generator
 * another: each worker gets the same share of one core instead (see docs/benchmarks_history.md,
 * "W6 on two cores: a CPU quota per worker").
 *
 * Works with cgroup v2 (`cpu.max`, when the unified hierarchy has the `cpu` controller) and
 * with cgroup v1's `cpu` controller (`cpu.cfs_quota_us`). Needs root.
 *
 * @module
 */
import { exists } from "./lib.ts";

/** What a quota's group has seen since it was made. */
export interface QuotaStat {
  periods: number;
  throttled: number;
  throttledUs: number;
}

/** A cgroup with a CPU quota; a process joins it by writing its pid to `procs`. */
export interface CpuQuota {
  /** The file a process writes its pid to, to join (`echo $$ > procs`). */
  procs: string;
  /** Cores' worth of CPU the group may use. */
  cores: number;
  periodUs: number;
  /** Periods so far, how many of them ran out of quota, and the time spent waiting. */
  stat(): Promise<QuotaStat>;
  /** Removes the group (its processes must have exited). */
  remove(): Promise<void>;
}

/** Parses `key value` lines (`cpu.stat`). */
function parseStat(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    const [key, value] = line.trim().split(/\s+/);
    if (key && value !== undefined) out.set(key, Number(value));
  }
  return out;
}

/**
 * The quota of the group in `dir`. The hierarchies name the throttled time in `cpu.stat`
 * differently: v2 `throttled_usec` (µs), v1 `throttled_time` (ns, so `perUs` 1000).
 */
function quotaIn(
  dir: string,
  cores: number,
  periodUs: number,
  throttledKey: string,
  perUs: number,
): CpuQuota {
  return {
    procs: `${dir}/cgroup.procs`,
    cores,
    periodUs,
    async stat() {
      const stat = parseStat(await Deno.readTextFile(`${dir}/cpu.stat`));
      return {
        throttledUs: (stat.get(throttledKey) ?? 0) / perUs,
        periods: stat.get("nr_periods") ?? 0,
        throttled: stat.get("nr_throttled") ?? 0,
      };
    },
    remove: () => Deno.remove(dir).catch(() => {}),
  };
}

/**
 * Creates the cgroup `name` with a quota of `cores` (0.4 is 40 % of one core). Throws, saying
 * which hierarchy it tried, when the machine has no writable `cpu` controller.
 */
export async function createCpuQuota(
  name: string,
  cores: number,
  periodUs = 2_000,
): Promise<CpuQuota> {
  if (!(cores > 0)) {
    throw new Error(`cpu quota: expected cores > 0, got ${cores}`);
  }
  const quotaUs = Math.max(1_000, Math.round(cores * periodUs));
  const v2 = "/sys/fs/cgroup";
  const v2Controllers = await Deno.readTextFile(`${v2}/cgroup.controllers`)
    .catch(() => "");
  if (v2Controllers.split(/\s+/).includes("cpu")) {
    const dir = `${v2}/${name}`;
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(`${dir}/cpu.max`, `${quotaUs} ${periodUs}`);
    return quotaIn(dir, cores, periodUs, "throttled_usec", 1);
  }
  const v1 = "/sys/fs/cgroup/cpu";
  if (await exists(`${v1}/cpu.cfs_quota_us`)) {
    const dir = `${v1}/${name}`;
    await Deno.mkdir(dir, { recursive: true });
    // The period first: a quota is checked against the period in force.
    await Deno.writeTextFile(`${dir}/cpu.cfs_period_us`, String(periodUs));
    await Deno.writeTextFile(`${dir}/cpu.cfs_quota_us`, String(quotaUs));
    return quotaIn(dir, cores, periodUs, "throttled_time", 1000);
  }
  throw new Error(
    `cpu quota: expected a cgroup v2 "cpu" controller in ${v2}/cgroup.controllers or cgroup v1 ` +
      `at ${v1}, found neither (is this root on Linux?)`,
  );
}

/** Whether this machine lets us make a CPU quota (root, and a `cpu` controller). */
export async function canUseCpuQuota(): Promise<boolean> {
  try {
    const quota = await createCpuQuota(`chatbench-probe-${Deno.pid}`, 0.5);
    await quota.remove();
    return true;
  } catch {
    return false;
  }
}
