/**
 * The pure parts of the benchmark tools: how a knee is read from steps, how targets are named,
 * how CPU time is read from /proc, and the load generator's byte-level frame scanning.
 */
import assert from "node:assert/strict";
import { knee, parseTarget, type StepResult } from "../bench/interleave.ts";
import { cpuSplitUs, medianRound } from "../bench/lib.ts";
import { TARGETS } from "../bench/targets.ts";
import { batchElements, indexOfBytes, numberAt } from "../bench/rawws.ts";

const encoder = new TextEncoder();

function step(rate: number, p99: number, reach = 1): StepResult {
  return { rate, reach, p99, serverCpu: 50, clientCpu: 50 };
}

Deno.test("knee: the highest passing step, even above a failing one", () => {
  // At N = 1000 the lowest step can fail while higher ones pass.
  assert.equal(knee([step(25_000, 38.6), step(50_000, 23.1), step(75_000, 25.5)], 25), 50_000);
  assert.equal(knee([step(25_000, 12), step(50_000, 30), step(75_000, 20)], 25), 75_000);
  assert.equal(knee([step(25_000, 24.9), step(50_000, 25)], 25), 50_000, "p99 equal to the limit");
});

Deno.test("knee: a step short of full reach does not count, and none passing is 0", () => {
  assert.equal(knee([step(25_000, 10), step(50_000, 10, 0.9999)], 25), 25_000);
  assert.equal(knee([step(25_000, 40), step(50_000, 60)], 25), 0);
  assert.equal(knee([], 25), 0);
});

Deno.test("parseTarget: a name, optionally from another checkout", () => {
  assert.deepEqual(parseTarget("ours", "/repo"), {
    spec: "ours",
    name: "ours",
    root: "/repo",
    env: {},
  });
  assert.deepEqual(parseTarget("ours@/tmp/old/+CHAT_BUS=broadcast+X=a=b", "/repo"), {
    spec: "ours@/tmp/old/+CHAT_BUS=broadcast+X=a=b",
    name: "ours",
    root: "/tmp/old",
    env: { CHAT_BUS: "broadcast", X: "a=b" },
  });
  assert.equal(parseTarget("kvrelay@/tmp/x").root, "/tmp/x");
  assert.equal(parseTarget("socketio").name, "socketio");
  assert.throws(
    () => parseTarget("nginx@/tmp/x"),
    /Expected a target ours, single, relay, framed, kvrelay, ws, socketio, uws, bun \(optionally @DIR, \+KEY=VALUE\), got "nginx@\/tmp\/x"/,
  );
  assert.throws(
    () => parseTarget("ours+CHAT_BUS"),
    /Expected KEY=VALUE after "\+" in "ours\+CHAT_BUS", got "CHAT_BUS"/,
  );
});

Deno.test("TARGETS: a server from another checkout runs that checkout's files", () => {
  const opts = { dir: "/kv", root: "/tmp/old" };
  assert.ok(TARGETS.ours.cmd(8080, opts).includes("/tmp/old/main.ts"));
  assert.ok(TARGETS.socketio.cmd(8080, opts).includes("/tmp/old/bench/peers/socketio.mjs"));
  const env = TARGETS.ours.env!(opts);
  assert.match(env.CHAT_KV_PATH, /^\/kv\/ours-[0-9a-f]{8}\.kv$/);
  assert.equal(env.DENO_JOBS, "1");
  assert.equal(TARGETS.single.loadAs, "ours");
});

Deno.test("cpuSplitUs: this process's user and system time grows with work", () => {
  const before = cpuSplitUs(Deno.pid);
  assert.ok(before.user >= 0 && before.system >= 0);
  const until = performance.now() + 120;
  let x = 0;
  while (performance.now() < until) x += Math.sqrt(x + 1);
  const after = cpuSplitUs(Deno.pid);
  assert.ok(x > 0);
  // /proc counts in ticks of 10 ms: 120 ms of work shows as at least 50 ms.
  assert.ok(
    after.user + after.system - before.user - before.system >= 50_000,
    `expected at least 50,000 µs more CPU, got ${JSON.stringify({ before, after })}`,
  );
});

Deno.test("rawws: numbers and needles found on the bytes", () => {
  const bytes = encoder.encode('{"t":1234.5,"s":7}');
  const key = encoder.encode('"t":');
  const at = indexOfBytes(bytes, key, 0, bytes.length);
  assert.equal(at, 1);
  assert.equal(numberAt(bytes, at + key.length), 1234.5);
  assert.equal(numberAt(bytes, bytes.indexOf(0x37)), 7);
  assert.ok(Number.isNaN(numberAt(bytes, 0)), "no digits: NaN");
  assert.equal(indexOfBytes(bytes, encoder.encode('"x":'), 0, bytes.length), -1);
  // The range's end bounds the search.
  assert.equal(indexOfBytes(bytes, key, 0, 4), -1);
});

Deno.test("rawws: the elements of a batch frame, strings with brackets and quotes included", () => {
  const frames = [
    { type: "message", text: 'a } ] { [ "quoted" \\ end', n: [1, { d: 2 }] },
    { type: "ack", id: "x" },
  ];
  const prefix = '{"type":"batch","frames":[';
  const text = prefix + frames.map((f) => JSON.stringify(f)).join(",") + "]}";
  const bytes = encoder.encode(text);
  const ranges = batchElements(bytes, prefix.length, bytes.length);
  assert.equal(ranges.length, 2);
  const decoded = ranges.map(([s, e]) =>
    JSON.parse(new TextDecoder().decode(bytes.subarray(s, e)))
  );
  assert.deepEqual(decoded, frames);
});

Deno.test("medianRound: the median round's run, with every round's knee", () => {
  const runs = [{ knee: 100_000, id: "a" }, { knee: 60_000, id: "b" }, { knee: 70_000, id: "c" }];
  const m = medianRound(runs);
  assert.equal(m.id, "c");
  assert.deepEqual(m.roundKnees, [100_000, 60_000, 70_000]);
  assert.deepEqual(m.otherRounds?.map((r) => r.id), ["a", "b"]);
  // An even count takes the lower middle; a run without a knee (an error) counts as lowest.
  const even = medianRound([{ knee: 100_000 }, { error: "x" }, { knee: 60_000 }, { knee: 60_000 }]);
  assert.equal(even.knee, 60_000);
  assert.deepEqual(even.roundKnees, [100_000, null, 60_000, 60_000]);
  // One run is returned as it is.
  const one = { knee: 25_000 };
  assert.equal(medianRound([one]), one);
});
