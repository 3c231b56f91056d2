/**
 * Delivery across `deno serve --parallel` workers, checked end to end by the delivery checker
 * (`tests/delivery_checker.ts`): with BroadcastChannel alone, the KV relay alone and both; under
 * faults (SIGKILL and restart on the same port and KV file, random disconnects) with each; and
 * with a client that stops reading. Each run prints its verdict; every run must end with zero
 * lost, duplicated and reordered, and every message stored once.
 */
import assert from "node:assert/strict";
import type { CheckerOptions, Verdict } from "./delivery_checker.ts";
import { runChecker, summary } from "./delivery_checker.ts";

function assertClean(v: Verdict): void {
  console.log(summary(v));
  if (v.problems.length) console.log(v.problems.slice(0, 20).join("\n"));
  assert.equal(v.lost, 0, "lost");
  assert.equal(v.duplicated, 0, "duplicated");
  assert.equal(v.reordered, 0, "reordered");
  assert.equal(v.mismatched, 0, "mismatched");
  assert.equal(v.storeErrors, 0, "store errors");
  assert.equal(v.logGaps, 0, "log gaps");
  assert.deepEqual(v.problems, []);
  assert.ok(v.firstNodes >= 2, `clients on ${v.firstNodes} worker(s), expected at least 2`);
  assert.equal(v.deliveriesReceived, v.deliveriesExpected);
  assert.ok(v.deliveriesExpected > v.messagesSent, "every message reaches several clients");
}

const base: Omit<CheckerOptions, "bus"> = {
  workers: 2,
  users: 14,
  doubleConnected: 4,
  groups: 3,
  groupSize: 6,
  perClient: 100,
  // Bursts far over BroadcastChannel's 256 pending posts.
  bursts: [{ target: "group", count: 700 }, { target: "lobby", count: 400 }],
  log: (line) => console.log(`  ${line}`),
};

const faults: Omit<CheckerOptions, "bus"> = {
  ...base,
  perClient: 300,
  kills: 3,
  disconnects: 60,
  resumeLimit: 200,
};

function assertFaults(v: Verdict): void {
  assertClean(v);
  assert.equal(v.faults.kills, 3);
  assert.equal(v.restarts.length, 3);
  assert.equal(v.catchUpMs.length, 3, "clients caught up after each restart");
  assert.equal(v.faults.disconnects, 60);
}

for (const bus of ["broadcast", "kv", "broadcast,kv"]) {
  Deno.test(`delivery: CHAT_BUS=${bus}`, async () => {
    assertClean(await runChecker({ ...base, bus }));
  });
}

for (const bus of ["broadcast", "kv", "broadcast,kv"]) {
  Deno.test(`delivery under faults: CHAT_BUS=${bus}, SIGKILL and restart ×3, 60 disconnects`, async () => {
    assertFaults(await runChecker({ ...faults, bus }));
  });
}

Deno.test("delivery with a client that stops reading: closed with 1013, resumes; others unaffected", async () => {
  const v = await runChecker({
    ...base,
    bus: "broadcast,kv",
    bursts: [],
    // Loopback TCP buffers take about 4 MB before the server's bufferedAmount grows.
    stall: { messages: 2500, bytes: 3500 },
    maxBufferedBytes: 2 << 20,
    resumeLimit: 200,
  });
  assertClean(v);
  assert.equal(v.stall?.closeCode, 1013, "the stalled socket was closed as a slow consumer");
  assert.equal(v.stall?.othersSlowClosed, 0, "no other client was closed");
  assert.ok((v.stall?.framesBeforeClose ?? 0) > 100);
});
