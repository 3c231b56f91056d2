/**
 * What one delivery costs on each side of loopback TCP, and whether a generator in another runtime
 * would read faster. Starts the minimal Deno relay (`bench/peers/deno_relay.ts`) on core 0; on
 * core 1, round after round, a Deno receiver (`bench/rawws.ts`, as `bench/load.ts` uses) and a
 * Node one (`bench/receive_cost_node.mjs`, `node:net` with the same scan of the bytes) open
 * `--clients` sockets, and one of them sends `--rate` messages a second for `--seconds`, each to
 * everyone. Prints, per receiver and round: the latency of every copy (p50, p99, max), the
 * receiver's user and kernel CPU per delivery, and the relay's (from `/proc/<pid>/stat` over the
 * same span).
 *
 *   deno run -A bench/receive_cost.ts [--clients 1000] [--rate 25] [--seconds 6] [--rounds 2]
 *
 * `--receiver` runs the Deno receiver itself (the driver starts it so).
 *
 * @module
 */
import { cpuSplitUs, parseArgs, round, sleep, waitForHttp } from "./lib.ts";
import { RawSocket } from "./rawws.ts";

const BENCH = new URL(".", import.meta.url).pathname;

/** What a receiver prints on its `RESULT` line. */
export interface ReceiveResult {
  runtime: string;
  deliveries: number;
  p50: number;
  p99: number;
  max: number;
  cpuPercent: number;
  userUs: number;
  systemUs: number;
}

async function receiver(port: number, clients: number, rate: number, seconds: number) {
  const latencies: number[] = [];
  let measuring = false;
  const now = () => performance.timeOrigin + performance.now();
  const sockets: RawSocket[] = [];
  for (let i = 0; i < clients; i++) {
    const socket = new RawSocket('"t":', '{"t":', {
      onBench(t) {
        if (measuring) latencies.push(now() - t);
      },
      onText() {},
      onClose() {},
    });
    await socket.connect(new URL(`ws://127.0.0.1:${port}/`));
    sockets.push(socket);
  }
  await sleep(1000);
  console.log("START");
  const cpu0 = cpuSplitUs(Deno.pid);
  const t0 = performance.now();
  measuring = true;
  const timer = setInterval(
    () => sockets[0].send(`{"t":${now().toFixed(3)},"pad":"${"x".repeat(40)}"}`),
    1000 / rate,
  );
  await sleep(seconds * 1000);
  clearInterval(timer);
  await sleep(500);
  measuring = false;
  const cpu1 = cpuSplitUs(Deno.pid);
  const elapsed = performance.now() - t0;
  console.log("STOP");
  latencies.sort((a, b) => a - b);
  const q = (p: number) =>
    latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
  const user = cpu1.user - cpu0.user;
  const system = cpu1.system - cpu0.system;
  const result: ReceiveResult = {
    runtime: `deno ${Deno.version.deno}`,
    deliveries: latencies.length,
    p50: q(0.5),
    p99: q(0.99),
    max: latencies[latencies.length - 1],
    cpuPercent: ((user + system) / 1000 / elapsed) * 100,
    userUs: user / latencies.length,
    systemUs: system / latencies.length,
  };
  console.log("RESULT " + JSON.stringify(result));
  Deno.exit(0);
}

/** Runs one receiver on core 1; the relay's CPU per delivery over its measured span. */
async function measure(cmd: string[], relayPid: number) {
  const child = new Deno.Command("taskset", {
    args: ["-c", "1", ...cmd],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let text = "";
  let before: { user: number; system: number } | undefined;
  let after: { user: number; system: number } | undefined;
  const decoder = new TextDecoder();
  for await (const chunk of child.stdout) {
    text += decoder.decode(chunk, { stream: true });
    if (!before && text.includes("START\n")) before = cpuSplitUs(relayPid);
    if (!after && text.includes("STOP\n")) after = cpuSplitUs(relayPid);
  }
  await child.status;
  const line = text.split("\n").find((l) => l.startsWith("RESULT "));
  if (!line || !before || !after) throw new Error(`Expected a RESULT line from ${cmd.join(" ")}`);
  const r: ReceiveResult = JSON.parse(line.slice(7));
  return {
    ...r,
    relayUserUs: (after.user - before.user) / r.deliveries,
    relaySystemUs: (after.system - before.system) / r.deliveries,
  };
}

if (import.meta.main) {
  const args = parseArgs(Deno.args);
  const clients = Number(args.clients ?? 1000);
  const rate = Number(args.rate ?? 25);
  const seconds = Number(args.seconds ?? 6);
  if (args.receiver === "true") {
    await receiver(Number(args.port), clients, rate, seconds);
  }
  const port = 20000 + Math.floor(Math.random() * 10000); // below the ephemeral range
  const relay = new Deno.Command("taskset", {
    args: ["-c", "0", "deno", "run", "-A", `${BENCH}peers/deno_relay.ts`, String(port)],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    if (!(await waitForHttp(`http://127.0.0.1:${port}`))) {
      throw new Error("the relay did not start");
    }
    const common = ["--port", port, "--clients", clients, "--rate", rate, "--seconds", seconds]
      .map(String);
    const rows = [];
    for (let r = 0; r < Number(args.rounds ?? 2); r++) {
      for (
        const cmd of [
          ["deno", "run", "-A", `${BENCH}receive_cost.ts`, "--receiver", "true", ...common],
          ["node", `${BENCH}receive_cost_node.mjs`, ...common],
        ]
      ) {
        const m = await measure(cmd, relay.pid);
        rows.push({
          round: r + 1,
          receiver: m.runtime,
          deliveries: m.deliveries,
          "p50 ms": round(m.p50, 1),
          "p99 ms": round(m.p99, 1),
          "max ms": round(m.max, 1),
          "receiver CPU %": round(m.cpuPercent, 0),
          "receiver user / kernel µs": `${round(m.userUs, 1)} / ${round(m.systemUs, 1)}`,
          "relay user / kernel µs": `${round(m.relayUserUs, 1)} / ${round(m.relaySystemUs, 1)}`,
        });
        await sleep(1000);
      }
    }
    console.log(
      `${clients} clients on the relay, one message to all ${rate} times a second for ${seconds} s; ` +
        "CPU per delivery",
    );
    console.table(rows);
  } finally {
    relay.kill("SIGTERM");
    await relay.status;
  }
}
