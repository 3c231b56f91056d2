/**
 * Graceful shutdown: on SIGTERM or SIGINT every worker of `deno serve --parallel` stops taking
 * sockets, tells its clients to reconnect (1012), finishes the KV writes it accepted, and the
 * process exits within 5 s (Deno Deploy sends SIGKILL 5 s after SIGINT). Clients then resume on
 * the restarted server with nothing lost and nothing doubled.
 */
import assert from "node:assert/strict";
import type { Verdict } from "./delivery_checker.ts";
import { runChecker, summary } from "./delivery_checker.ts";
import { signIn, startServer, TestClient, uniqueName } from "./_harness.ts";

Deno.test("shutdown: draining refuses new sockets and closes open ones with 1012", async () => {
  await using server = await startServer();
  const a = await signIn(server.url, uniqueName("ann"));
  const b = await signIn(server.url, uniqueName("bob"));
  const ca = await TestClient.connect(server, a.token);
  const cb = await TestClient.connect(server, b.token);
  await ca.post("lobby", "before");
  await server.node.shutdown();
  for (const client of [ca, cb]) {
    const frame = await client.next("reconnect");
    assert.equal(frame.reason, "Server restarting: reconnect");
    const closed = await client.closed;
    assert.equal(closed.code, 1012);
  }
  const health = await fetch(`${server.url}/healthz`);
  assert.equal(health.status, 503);
  assert.equal((await health.json()).draining, true);
  const refused = new TestClient(`${server.ws}/ws`, { token: a.token });
  await assert.rejects(refused.opened);
  await refused.closed;
  // What was acked before is in the log.
  assert.equal(await server.node.log.head("lobby"), 1);
});

function assertGraceful(v: Verdict, signal: string): void {
  console.log(summary(v));
  console.log(`  restarts: ${JSON.stringify(v.restarts)}`);
  if (v.problems.length) console.log(v.problems.slice(0, 20).join("\n"));
  assert.equal(v.lost, 0, "lost");
  assert.equal(v.duplicated, 0, "duplicated");
  assert.equal(v.reordered, 0, "reordered");
  assert.equal(v.mismatched, 0, "mismatched");
  assert.equal(v.storeErrors, 0, "store errors");
  assert.deepEqual(v.problems, []);
  assert.equal(v.restarts.length, 1);
  const [restart] = v.restarts;
  assert.equal(restart.signal, signal);
  assert.equal(restart.code, 0, "exit code");
  assert.ok(restart.exitMs < 5000, `exited after ${restart.exitMs} ms`);
  // Every client, on both workers, was told to reconnect (not cut off by the first worker
  // to finish: Deno.exit in one worker ends the whole process).
  assert.ok(
    (v.closeCodes["1012"] ?? 0) >= v.clients,
    `1012 closes: ${v.closeCodes["1012"]}, clients: ${v.clients}`,
  );
  assert.ok(v.firstNodes >= 2);
}

Deno.test("shutdown: SIGTERM under load, two workers, then resume", async () => {
  const v = await runChecker({
    bus: "broadcast,kv",
    workers: 2,
    users: 10,
    doubleConnected: 2,
    perClient: 120,
    kills: 1,
    restartSignal: "SIGTERM",
    log: (line) => console.log(`  ${line}`),
  });
  assertGraceful(v, "SIGTERM");
});

Deno.test("shutdown: SIGINT under load with the KV relay alone, then resume", async () => {
  const v = await runChecker({
    bus: "kv",
    workers: 2,
    users: 10,
    doubleConnected: 2,
    perClient: 120,
    kills: 1,
    restartSignal: "SIGINT",
    log: (line) => console.log(`  ${line}`),
  });
  assertGraceful(v, "SIGINT");
});
