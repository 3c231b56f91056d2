/**
 * The KV relay bus: envelopes reach every other node in order, and a node that made every relay
 * commit since it last looked does not read the log back (the commits of a busy node would
 * otherwise each cost it a read of its own entries), and the log's commits carry relay entries
 * only while another node is heard.
 */
import assert from "node:assert/strict";
import type { Envelope } from "../chat/bus.ts";
import { KvBus } from "../chat/bus_kv.ts";

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(check: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`Timed out waiting for ${what}`);
    await delay(5);
  }
}

Deno.test("kv bus: a node's own commits are not read back; another node's are", async () => {
  const dir = await Deno.makeTempDir();
  const kv = await Deno.openKv(`${dir}/kv.sqlite3`);
  // No poll within the test: every read comes from a watch event.
  const one = new KvBus(kv, { node: "n1", appendsInLog: true, pollMs: 60_000 });
  const two = new KvBus(kv, { node: "n2", appendsInLog: true, pollMs: 60_000 });
  const heardByTwo: Envelope[] = [];
  const heardByOne: Envelope[] = [];
  two.subscribe((e) => heardByTwo.push(e));
  one.subscribe((e) => heardByOne.push(e));
  await Promise.all([one.ready(), two.ready()]);
  await delay(50);
  const readsBefore = one.stats.reads;

  const COMMITS = 40;
  for (let n = 1; n <= COMMITS; n++) {
    one.publish({ node: "n1", n, k: "kick", user: `u${n}`, reason: "test" });
    // One commit per envelope, each heard by the watch on its own.
    await until(() => heardByTwo.length >= n, `envelope ${n} at n2`);
  }
  assert.deepEqual(heardByTwo.map((e) => e.n), Array.from({ length: COMMITS }, (_, i) => i + 1));
  assert.equal(heardByOne.length, 0);
  // n2 read the log for n1's commits; n1 left most of its own watch events unread. (An event that
  // arrives before its commit's versionstamp is known is read: a read too many, never too few.)
  assert.ok(two.stats.reads > 0);
  assert.ok(one.stats.skipped >= COMMITS / 2, `skipped ${one.stats.skipped} of ${COMMITS}`);
  assert.ok(one.stats.reads - readsBefore <= COMMITS / 2, `read ${one.stats.reads - readsBefore}`);

  // A commit of n2 among n1's: n1 reads and hears it.
  two.publish({ node: "n2", n: 1, k: "kick", user: "x", reason: "test" });
  one.publish({ node: "n1", n: COMMITS + 1, k: "kick", user: "y", reason: "test" });
  await until(() => heardByOne.length === 1, "n2's envelope at n1");
  assert.equal(heardByOne[0].node, "n2");

  await Promise.all([one.close(), two.close()]);
  kv.close();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("kv bus: relays the log's commits only while another node is heard", async () => {
  const dir = await Deno.makeTempDir();
  const kv = await Deno.openKv(`${dir}/kv.sqlite3`);
  const one = new KvBus(kv, { node: "n1", appendsInLog: true, pollMs: 50, staleMs: 1000 });
  await one.ready();
  // Alone on a new KV: nothing to relay to.
  assert.equal(one.relaying, false);

  // Another node speaks (every hub publishes a heartbeat at start): n1 hears it and relays.
  const two = new KvBus(kv, { node: "n2", appendsInLog: true, pollMs: 50, staleMs: 1000 });
  await two.ready();
  two.publish({ node: "n2", n: 1, k: "node", v: 0 });
  await until(() => one.relaying, "n1 relaying after n2's entry");

  // A node that starts after n2's entry relays from the start.
  const three = new KvBus(kv, { node: "n3", appendsInLog: true, pollMs: 50, staleMs: 1000 });
  await three.ready();
  assert.equal(three.relaying, true);

  // n2 falls silent: after staleMs the others stop relaying; it speaks again, they resume.
  await until(() => !one.relaying && !three.relaying, "relaying stops after staleMs", 6000);
  two.publish({ node: "n2", n: 2, k: "node", v: 0 });
  await until(() => one.relaying && three.relaying, "relaying again");

  // staleMs 0: always.
  const always = new KvBus(kv, { node: "n4", appendsInLog: true, staleMs: 0 });
  await always.ready();
  assert.equal(always.relaying, true);

  await Promise.all([one.close(), two.close(), three.close(), always.close()]);
  kv.close();
  await Deno.remove(dir, { recursive: true });
});
