/**
 * The Redis bus against a real `redis-server`, started by each test on a free port and killed at
 * its end. Fails, not skips, when `redis-server` is missing: `apt-get install -y redis-server`.
 */
import assert from "node:assert/strict";
import { createClient } from "redis";
import type { Envelope } from "../chat/bus.ts";
import { RedisBus } from "../chat/bus_redis.ts";
import { RedisServer } from "./_redis.ts";

/** Polls `check` every 10 ms until it is true; fails after `timeoutMs`. */
async function waitFor(
  check: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** A bus that records what it receives. */
function node(url: string, name: string): { bus: RedisBus; got: Envelope[] } {
  const bus = new RedisBus({ url, node: name, channel: "test" });
  const got: Envelope[] = [];
  bus.subscribe((e) => got.push(e));
  return { bus, got };
}

const heads = (node: string, n: number): Envelope => ({ node, n, k: "heads", heads: { c: n } });

Deno.test("RedisBus: two nodes exchange envelopes both ways, batched and in order", async () => {
  const server = new RedisServer();
  await server.start();
  const a = node(server.url, "a");
  const b = node(server.url, "b");
  // A plain subscriber counts the PUBLISHes.
  const spy = createClient({ url: server.url });
  spy.on("error", () => {});
  let published = 0;
  try {
    await spy.connect();
    await spy.subscribe("test", () => published++);
    await Promise.all([a.bus.ready(), b.bus.ready()]);
    assert.ok(a.bus.healthy() && b.bus.healthy());
    assert.equal(a.bus.name, "redis");

    a.bus.publish(heads("a", 1));
    a.bus.publish(heads("a", 2));
    b.bus.publish(heads("b", 1));
    await waitFor(() => a.got.length >= 1 && b.got.length >= 2, "first envelopes");
    // Each node's own publish comes back from Redis too; wait for that before asserting.
    await waitFor(() => published >= 2, "both PUBLISHes");
    assert.deepEqual(b.got, [heads("a", 1), heads("a", 2)]);
    assert.deepEqual(a.got, [heads("b", 1)]);
    assert.equal(published, 2, "one PUBLISH per node per tick");

    // 2,000 envelopes in one tick: one PUBLISH, all arrive, in order, none echoed.
    b.got.length = 0;
    a.got.length = 0;
    const batch = Array.from({ length: 2000 }, (_, i) => heads("a", 10 + i));
    for (const e of batch) a.bus.publish(e);
    await waitFor(() => b.got.length >= batch.length, "the batch of 2,000");
    await waitFor(() => published >= 3, "the batch's PUBLISH");
    assert.deepEqual(b.got, batch);
    assert.equal(published, 3, "2,000 envelopes of one tick in one PUBLISH");
    assert.deepEqual(a.got, [], "own envelopes are not echoed");
  } finally {
    await Promise.all([a.bus.close(), b.bus.close(), spy.close()]);
    await server.stop();
  }
});

Deno.test("RedisBus: survives a Redis restart and reconnects by itself", async () => {
  const server = new RedisServer();
  await server.start();
  const a = node(server.url, "a");
  const b = node(server.url, "b");
  try {
    await Promise.all([a.bus.ready(), b.bus.ready()]);
    a.bus.publish(heads("a", 1));
    await waitFor(() => b.got.length === 1, "an envelope before the restart");

    await server.stop("SIGKILL");
    await waitFor(() => !a.bus.healthy() && !b.bus.healthy(), "both buses unhealthy");
    // Publishing while disconnected drops the envelopes quietly.
    assert.doesNotThrow(() => {
      for (let n = 2; n < 100; n++) a.bus.publish(heads("a", n));
    });
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.ok(!a.bus.healthy() && !b.bus.healthy(), "still unhealthy with Redis down");

    await server.start();
    await waitFor(() => a.bus.healthy() && b.bus.healthy(), "both buses healthy again");
    a.got.length = 0;
    b.got.length = 0;
    a.bus.publish(heads("a", 100));
    b.bus.publish(heads("b", 100));
    await waitFor(() => a.got.length >= 1 && b.got.length >= 1, "envelopes after the restart");
    assert.deepEqual(b.got, [heads("a", 100)], "dropped envelopes are not replayed");
    assert.deepEqual(a.got, [heads("b", 100)]);
  } finally {
    await Promise.all([a.bus.close(), b.bus.close()]);
    await server.stop();
  }
});

Deno.test("RedisBus: close() leaves nothing behind, connected or not", async () => {
  const server = new RedisServer();
  await server.start();

  // Connected, with a batch still in the outbox: it is sent before the clients quit.
  const a = node(server.url, "a");
  const b = node(server.url, "b");
  await Promise.all([a.bus.ready(), b.bus.ready()]);
  a.bus.publish(heads("a", 1));
  await a.bus.close();
  await waitFor(() => b.got.length === 1, "the envelope published just before close");
  await b.bus.close();
  await b.bus.close(); // A second close is a no-op.
  assert.ok(!a.bus.healthy());
  assert.doesNotThrow(() => a.bus.publish(heads("a", 2)));

  // Closed at once, while the first connection attempts are in flight.
  const early = node(server.url, "early");
  await early.bus.close();

  // Disconnected, while waiting to reconnect.
  const c = node(server.url, "c");
  await c.bus.ready();
  await server.stop("SIGKILL");
  await waitFor(() => !c.bus.healthy(), "the bus to notice Redis is gone");
  await new Promise((resolve) => setTimeout(resolve, 100));
  await c.bus.close();

  // Never connected: nothing listens on the port.
  const d = node(server.url, "d");
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.ok(!d.bus.healthy());
  await d.bus.close();
  await d.bus.ready(); // Resolved by close, so nobody waits forever.
  const e = node(server.url, "e");
  await e.bus.close();
});
