/**
 * Runs the whole test suite: makes sure the programs the tests drive are present (Chromium
 * for the web client, redis-server for the Redis bus; installed with apt-get when missing and
 * running as root on Debian), then `deno test`. Extra arguments go to `deno test`.
 * `CHAT_TEST_JUNIT=<file>` also writes a JUnit report (what `.ci/run` counts).
 *
 * @module
 */
const NEEDS = [
  { bin: "chromium", pkg: "chromium", what: "the web client tests" },
  { bin: "redis-server", pkg: "redis-server", what: "the Redis bus tests" },
];

async function has(bin: string): Promise<boolean> {
  const { success } = await new Deno.Command("sh", {
    args: ["-c", `command -v ${bin}`],
    stdout: "null",
    stderr: "null",
  }).output();
  return success;
}

async function run(cmd: string, args: string[]): Promise<boolean> {
  const { success } = await new Deno.Command(cmd, { args, stdout: "inherit", stderr: "inherit" })
    .spawn().status;
  return success;
}

const missing = [];
for (const need of NEEDS) if (!(await has(need.bin))) missing.push(need);
if (missing.length) {
  const root = Deno.uid?.() === 0;
  if (root && (await has("apt-get"))) {
    console.log(`Installing ${missing.map((m) => m.pkg).join(", ")} for the tests…`);
    await run("apt-get", ["update", "-qq"]);
    await run("apt-get", ["install", "-y", "-qq", ...missing.map((m) => m.pkg)]);
  } else {
    for (const m of missing) {
      console.warn(`Missing ${m.bin} (needed by ${m.what}): apt-get install ${m.pkg}`);
    }
  }
}

const junit = Deno.env.get("CHAT_TEST_JUNIT");
const args = ["test", "-A", "--parallel", ...(junit ? [`--junit-path=${junit}`] : [])];
args.push(...(Deno.args.length ? Deno.args : ["tests/"]));
const status = await new Deno.Command(Deno.execPath(), {
  args,
  env: { DENO_JOBS: Deno.env.get("DENO_JOBS") ?? "2" },
  stdout: "inherit",
  stderr: "inherit",
}).spawn().status;
Deno.exit(status.code);
