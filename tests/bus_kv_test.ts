/**
 * The KV relay bus: envelopes reach every other node in order, and a node that made every relay
 * commit since it last looked does not read the log back (the commits of a busy node would
 * otherwise each cost it a read of its own entries), and the log's commits carry relay entries
 * only while another node is heard.
 */
import assert from "node:assert/strict";
import type { Envelope } from "../chat/bus.ts";
import { KvBus } from "../chat/bus_kv.ts";
import { RELAY_COUNT_KEY, RELAY_LOG_PREFIX } from "../chat/keys.ts";

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

Deno.test("kv bus: a lone node's envelopes share a commit; a node heard cuts the wait", async () => {
  const dir = await Deno.makeTempDir();
  const kv = await Deno.openKv(`${dir}/kv.sqlite3`);
  const commits = async () => (await kv.get<Deno.KvU64>(RELAY_COUNT_KEY)).value?.value ?? 0n;
  const logged = async (node: string) => {
    const out: number[] = [];
    for await (
      const e of kv.list<{ node: string; envelopes?: Envelope[] }>({ prefix: RELAY_LOG_PREFIX })
    ) {
      if (e.value.node === node) out.push(...(e.value.envelopes ?? []).map((x) => x.n));
    }
    return out;
  };
  const one = new KvBus(kv, { node: "n1", appendsInLog: true, pollMs: 50, aloneFlushMs: 60_000 });
  await one.ready();
  assert.equal(one.relaying, false);
  // A storm of sign-ins on a lone node: nothing is written yet, and nothing is lost.
  for (let n = 1; n <= 100; n++) {
    one.publish({
      node: "n1",
      n,
      k: "presence",
      user: { id: `u${n}`, name: `U${n}` },
      online: true,
      v: n,
    });
    if (n % 10 === 0) await delay(5);
  }
  await delay(200);
  assert.equal(await commits(), 0n);

  // Another node speaks: n1 hears it, and its next publish flushes everything at once.
  const two = new KvBus(kv, { node: "n2", appendsInLog: true, pollMs: 50, aloneFlushMs: 0 });
  const heard: number[] = [];
  two.subscribe((e) => heard.push(e.n));
  await two.ready();
  two.publish({ node: "n2", n: 1, k: "node", v: 0 });
  await until(() => one.relaying, "n1 relaying after n2's entry");
  one.publish({ node: "n1", n: 101, k: "kick", user: "u1", reason: "test" });
  await until(() => heard.length === 101, "n1's 101 envelopes at n2");
  assert.deepEqual(heard, Array.from({ length: 101 }, (_, i) => i + 1));
  assert.deepEqual(await logged("n1"), heard);
  // n2's heartbeat, then n1's 101 envelopes in one commit (a few at most).
  assert.ok((await commits()) <= 3n, `expected at most 3 commits, got ${await commits()}`);

  // A lone node that closes writes what waits at once.
  const three = new KvBus(kv, { node: "n3", appendsInLog: true, staleMs: 1, aloneFlushMs: 60_000 });
  await three.ready();
  await Promise.all([one.close(), two.close()]);
  await delay(20);
  assert.equal(three.relaying, false);
  three.publish({ node: "n3", n: 1, k: "kick", user: "u2", reason: "test" });
  await three.close();
  assert.deepEqual(await logged("n3"), [1]);
  kv.close();
  await Deno.remove(dir, { recursive: true });
});
