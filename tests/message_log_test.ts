/**
 * The log of record: sequence numbers without gaps or duplicates (several writers at once),
 * idempotent appends by client id, group commit within KV's limits, retention by count and by
 * age (with a filter on read, as `expireIn` is only a lower bound), relay entries, shutdown.
 */
import assert from "node:assert/strict";
import { messageKey, RELAY_COUNT_KEY, RELAY_LOG_PREFIX } from "../chat/keys.ts";
import type { AppendInput, MessageLogOptions, RelayEntry } from "../chat/message_log.ts";
import { getMany, MessageLog } from "../chat/message_log.ts";

const DAY = 86_400_000;

function input(conv: string, id: string, from = "u1", text = "hello"): AppendInput {
  return { conv, id, from, name: from.toUpperCase(), text, kind: "text" };
}

async function withLog(
  options: Partial<MessageLogOptions>,
  fn: (log: MessageLog, kv: Deno.Kv) => Promise<void>,
): Promise<void> {
  const kv = await Deno.openKv(":memory:");
  const log = new MessageLog(kv, { retentionCount: 10_000, retentionMs: 30 * DAY, ...options });
  try {
    await fn(log, kv);
  } finally {
    await log.close();
    kv.close();
  }
}

Deno.test("log: consecutive sequence numbers per conversation", async () => {
  await withLog({}, async (log) => {
    const a = await Promise.all([1, 2, 3].map((i) => log.append(input("lobby", `a${i}`))));
    const b = await log.append(input("g:x", "b1"));
    assert.deepEqual(a.map((r) => r.message.seq), [1, 2, 3]);
    assert.equal(b.message.seq, 1);
    assert.equal(await log.head("lobby"), 3);
    assert.equal(await log.head("g:x"), 1);
    assert.equal(await log.head("g:none"), 0);
    assert.ok(a.every((r) => !r.duplicate && r.message.ts > 0));
  });
});

Deno.test("log: the same client id is stored once (same tick, later, or another writer)", async () => {
  await withLog({}, async (log, kv) => {
    const [first, again] = await Promise.all([
      log.append(input("lobby", "m1")),
      log.append(input("lobby", "m1")),
    ]);
    assert.equal(first.duplicate, false);
    assert.equal(again.duplicate, true);
    assert.equal(again.message.seq, first.message.seq);
    const later = await log.append(input("lobby", "m1"));
    assert.deepEqual(later, { message: first.message, duplicate: true });
    // Another isolate resending after a reconnect.
    const other = new MessageLog(kv, { retentionCount: 10_000, retentionMs: 30 * DAY });
    const resent = await other.append(input("lobby", "m1"));
    assert.deepEqual(resent, { message: first.message, duplicate: true });
    // Ids are per sender.
    const fromOther = await other.append(input("lobby", "m1", "u2"));
    assert.equal(fromOther.message.seq, 2);
    await other.close();
    assert.equal(await log.head("lobby"), 2);
  });
});

Deno.test("log: concurrent writers never share or skip a sequence", async () => {
  await withLog({}, async (log, kv) => {
    const writers = [
      log,
      ...[1, 2].map(() => new MessageLog(kv, { retentionCount: 10_000, retentionMs: DAY })),
    ];
    const results = await Promise.all(
      Array.from(
        { length: 600 },
        (_, i) => writers[i % 3].append(input(i % 2 ? "lobby" : "g:x", `m${i}`, `u${i % 5}`)),
      ),
    );
    for (const conv of ["lobby", "g:x"]) {
      const seqs = results.filter((r) => r.message.conv === conv).map((r) => r.message.seq);
      assert.deepEqual(
        seqs.toSorted((a, b) => a - b),
        Array.from({ length: 300 }, (_, i) => i + 1),
      );
      const stored = await log.range(conv, 0, 300);
      assert.deepEqual(stored.map((m) => m.seq), Array.from({ length: 300 }, (_, i) => i + 1));
    }
    await Promise.all(writers.slice(1).map((w) => w.close()));
  });
});

Deno.test("log: a head heard from another writer spares the next commit its conflict", async () => {
  await withLog({}, async (a, kv) => {
    let stamp = "";
    const b = new MessageLog(kv, {
      retentionCount: 10_000,
      retentionMs: DAY,
      onCommit: (_messages, _ms, versionstamp) => (stamp = versionstamp),
    });
    // Both know the head of g:x (each has written to it).
    await a.append(input("g:x", "a1", "u1"));
    await b.append(input("g:x", "b1", "u2"));
    assert.equal(b.stats.commits, 1);

    // Not told of b's commit: a's check fails once, it reads the head back and retries.
    await b.append(input("g:x", "b2", "u2"));
    const blind = await a.append(input("g:x", "a2", "u1"));
    assert.equal(blind.message.seq, 4);
    assert.equal(a.stats.conflicts, 1);

    // Told (as the bus tells it, with the commit's versionstamp): no conflict.
    await b.append(input("g:x", "b3", "u2"));
    a.heard("g:x", 5, stamp);
    const told = await a.append(input("g:x", "a3", "u1"));
    assert.equal(told.message.seq, 6);
    assert.equal(a.stats.conflicts, 1);

    // An old report changes nothing, and a wrong one costs a conflict, never a wrong sequence.
    a.heard("g:x", 2, stamp);
    assert.equal((await a.append(input("g:x", "a4", "u1"))).message.seq, 7);
    assert.equal(a.stats.conflicts, 1);
    a.heard("g:x", 9, "00000000000000000000");
    assert.equal((await a.append(input("g:x", "a5", "u1"))).message.seq, 8);
    assert.equal(a.stats.conflicts, 2);

    // A conversation this log never wrote to is not cached from a report.
    a.heard("g:other", 3, stamp);
    assert.equal((await a.append(input("g:other", "a6", "u1"))).message.seq, 1);
    assert.equal(a.stats.conflicts, 2);
    assert.deepEqual((await a.range("g:x", 0, 100)).map((m) => m.id), [
      "a1",
      "b1",
      "b2",
      "a2",
      "b3",
      "a3",
      "a4",
      "a5",
    ]);
    await b.close();
  });
});

Deno.test("log: a burst larger than one commit is split within KV's limits", async () => {
  await withLog({}, async (log) => {
    const big = "x".repeat(3000);
    const results = await Promise.all(
      Array.from({ length: 450 }, (_, i) => log.append(input(`g:${i % 7}`, `m${i}`, "u1", big))),
    );
    assert.equal(results.length, 450);
    let total = 0;
    for (let g = 0; g < 7; g++) total += await log.head(`g:${g}`);
    assert.equal(total, 450);
  });
});

Deno.test("log: retention by count trims the oldest and hides them on read", async () => {
  await withLog({ retentionCount: 10 }, async (log, kv) => {
    for (let i = 0; i < 25; i++) await log.append(input("lobby", `m${i}`));
    const kept = await log.range("lobby", 0, 25);
    assert.deepEqual(kept.map((m) => m.seq), Array.from({ length: 10 }, (_, i) => 16 + i));
    assert.equal((await kv.get(messageKey("lobby", 15))).value, null, "trimmed in the commit");
    const page = await log.page("lobby", undefined, 50);
    assert.equal(page.messages.length, 10);
    assert.equal(page.more, false);
    assert.equal(await log.head("lobby"), 25);
    // One left behind below the floor (a trim that did not happen) is hidden all the same.
    await kv.set(messageKey("lobby", 15), { ...kept[0], seq: 15 });
    const again = await log.page("lobby", undefined, 10);
    assert.deepEqual([again.messages[0].seq, again.messages.length, again.more], [16, 10, false]);
    const part = await log.page("lobby", undefined, 4);
    assert.deepEqual([part.messages.map((m) => m.seq), part.more], [[22, 23, 24, 25], true]);
  });
});

Deno.test("log: retention by age filters on read (expireIn is only a lower bound)", async () => {
  let now = Date.now();
  await withLog({ retentionMs: 60_000, now: () => now }, async (log) => {
    for (let i = 0; i < 5; i++) await log.append(input("lobby", `old${i}`));
    now += 61_000;
    for (let i = 0; i < 5; i++) await log.append(input("lobby", `new${i}`));
    // Still in KV (expiry is lazy), but not shown.
    assert.deepEqual((await log.range("lobby", 0, 10)).map((m) => m.seq), [6, 7, 8, 9, 10]);
    assert.deepEqual((await log.page("lobby", undefined, 50)).messages.map((m) => m.seq), [
      6,
      7,
      8,
      9,
      10,
    ]);
    const five = await log.page("lobby", undefined, 5);
    assert.deepEqual(
      [five.messages.length, five.more],
      [5, false],
      "nothing newer than the cutoff",
    );
    const two = await log.page("lobby", undefined, 2);
    assert.deepEqual([two.messages.map((m) => m.seq), two.more], [[9, 10], true]);
    // Expired messages do not count towards a limit: a resume reading 3 gets 3.
    const three = await log.range("lobby", 0, Number.MAX_SAFE_INTEGER, 3);
    assert.deepEqual(three.map((m) => m.seq), [6, 7, 8]);
    now += 61_000;
    assert.deepEqual(await log.range("lobby", 0, 10), []);
  });
});

Deno.test("log: range and page", async () => {
  await withLog({}, async (log) => {
    for (let i = 0; i < 30; i++) await log.append(input("lobby", `m${i}`, "u1", `t${i}`));
    assert.deepEqual((await log.range("lobby", 10, 15)).map((m) => m.seq), [11, 12, 13, 14, 15]);
    assert.deepEqual((await log.range("lobby", 10, 30, 2)).map((m) => m.seq), [11, 12]);
    assert.deepEqual(await log.range("lobby", 15, 15), []);
    assert.deepEqual(
      (await log.range("lobby", 27, Number.MAX_SAFE_INTEGER)).map((m) => m.seq),
      [28, 29, 30],
    );
    const newest = await log.page("lobby", undefined, 10);
    assert.deepEqual(newest.messages.map((m) => m.seq), [21, 22, 23, 24, 25, 26, 27, 28, 29, 30]);
    assert.equal(newest.more, true);
    const older = await log.page("lobby", 21, 10);
    assert.deepEqual(older.messages.map((m) => m.seq), [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]);
    const oldest = await log.page("lobby", 3, 10);
    assert.deepEqual(oldest, { messages: await log.range("lobby", 0, 2), more: false });
    assert.equal(oldest.messages[1].text, "t1");
  });
});

Deno.test("log: each commit writes a relay entry with the new heads", async () => {
  await withLog({ relay: { node: "n1" } }, async (log, kv) => {
    await Promise.all([
      log.append(input("lobby", "a")),
      log.append(input("lobby", "b")),
      log.append(input("g:x", "c")),
    ]);
    await log.append(input("lobby", "d"));
    const entries: RelayEntry[] = [];
    for await (const e of kv.list<RelayEntry>({ prefix: RELAY_LOG_PREFIX })) entries.push(e.value);
    assert.deepEqual(entries, [
      { node: "n1", heads: { lobby: 2, "g:x": 1 } },
      { node: "n1", heads: { lobby: 3 } },
    ]);
  });
});

Deno.test("log: commits carry a relay entry only while the relay is active", async () => {
  let active = false;
  const committed: string[] = [];
  const relay = { node: "n1", active: () => active, committed: (v: string) => committed.push(v) };
  await withLog({ relay }, async (log, kv) => {
    await log.append(input("lobby", "alone"));
    const count = async () => (await kv.get<Deno.KvU64>(RELAY_COUNT_KEY)).value?.value ?? 0n;
    const entries = async () => {
      const out: RelayEntry[] = [];
      for await (const e of kv.list<RelayEntry>({ prefix: RELAY_LOG_PREFIX })) out.push(e.value);
      return out;
    };
    assert.deepEqual(await entries(), []);
    assert.equal(await count(), 0n);
    assert.deepEqual(committed, []);
    active = true;
    await log.append(input("lobby", "shared"));
    assert.deepEqual(await entries(), [{ node: "n1", heads: { lobby: 2 } }]);
    assert.equal(await count(), 1n);
    assert.equal(committed.length, 1);
    // The messages themselves are stored either way.
    assert.deepEqual((await log.range("lobby", 0, 2)).map((m) => m.id), ["alone", "shared"]);
  });
});

Deno.test("log: close finishes accepted appends, then refuses new ones", async () => {
  const kv = await Deno.openKv(":memory:");
  const committed: number[] = [];
  const log = new MessageLog(kv, {
    retentionCount: 100,
    retentionMs: DAY,
    onCommit: (messages) => committed.push(...messages.map((m) => m.seq)),
  });
  const pending = Array.from({ length: 50 }, (_, i) => log.append(input("lobby", `m${i}`)));
  await log.close();
  assert.equal((await Promise.all(pending)).length, 50);
  assert.equal(committed.length, 50);
  await assert.rejects(() => log.append(input("lobby", "late")), /closed/);
  kv.close();
});

Deno.test("log: a failing commit listener does not fail the append", async () => {
  const kv = await Deno.openKv(":memory:");
  const log = new MessageLog(kv, {
    retentionCount: 100,
    retentionMs: DAY,
    onCommit: () => {
      throw new Error("listener bug");
    },
  });
  const { message, duplicate } = await log.append(input("lobby", "m1"));
  assert.equal(message.seq, 1);
  assert.equal(duplicate, false);
  await log.close();
  kv.close();
});

Deno.test("log: an append refused by a present key stores nothing, and its batch goes on", async () => {
  await withLog({}, async (log, kv) => {
    const blocked = ["block", "u2", "u1"];
    const refused = new Error("blocked");
    const guard = { key: blocked, error: () => refused };
    // Absent: stored like any other.
    const first = await log.append({ ...input("d:u1:u2", "m1"), refuseIf: guard });
    assert.equal(first.message.seq, 1);

    await kv.set(blocked, true);
    // In one commit with others: only the guarded append fails, the others keep their order.
    const results = await Promise.allSettled([
      log.append(input("d:u1:u3", "m2")),
      log.append({ ...input("d:u1:u2", "m3"), refuseIf: guard }),
      log.append(input("d:u1:u2", "m4", "u2")),
    ]);
    assert.equal(results[0].status, "fulfilled");
    assert.deepEqual(results[1], { status: "rejected", reason: refused });
    assert.equal(results[2].status, "fulfilled");
    assert.equal(
      (results[2] as PromiseFulfilledResult<{ message: { seq: number } }>).value.message.seq,
      2,
    );
    assert.equal(await log.head("d:u1:u2"), 2);
    assert.deepEqual((await log.range("d:u1:u2", 0, 10)).map((m) => m.id), ["m1", "m4"]);
    // The refused id was not taken: once unblocked, the same id is stored.
    await kv.delete(blocked);
    const again = await log.append({ ...input("d:u1:u2", "m3"), refuseIf: guard });
    assert.deepEqual([again.duplicate, again.message.seq], [false, 3]);
  });
});

Deno.test("log: a quiet log commits at once; a busy one waits batchMs to fill the commit", async () => {
  const commits: number[] = [];
  const options = {
    batchMs: 400,
    busyGapMs: 150,
    onCommit: (messages: unknown[]) => commits.push(messages.length),
  };
  await withLog(options, async (log) => {
    // Quiet: the append does not wait for the 400 ms window.
    let t = performance.now();
    await log.append(input("g:a", "q1"));
    const quietMs = performance.now() - t;
    assert.ok(quietMs < 300, `expected a quiet append to commit at once, took ${quietMs} ms`);
    // Busy (a commit ended within 150 ms): appends of separate ticks share the next commit.
    await new Promise((r) => setTimeout(r, 10));
    t = performance.now();
    const first = log.append(input("d:u1:u2", "b1"));
    await new Promise((r) => setTimeout(r, 20));
    const second = log.append(input("d:u1:u3", "b2"));
    await Promise.all([first, second]);
    const busyMs = performance.now() - t;
    assert.ok(busyMs >= 350, `expected busy appends to wait for the window, took ${busyMs} ms`);
    assert.deepEqual(commits, [1, 2]);
    // Quiet again after 150 ms without a commit.
    await new Promise((r) => setTimeout(r, 250));
    t = performance.now();
    await log.append(input("g:a", "q2"));
    const againMs = performance.now() - t;
    assert.ok(againMs < 300, `expected an append after a quiet spell at once, took ${againMs} ms`);
    assert.deepEqual(commits, [1, 2, 1]);
  });
});

/** A real KV whose `getMany` calls are recorded (the keys of each call). */
async function countedKv(): Promise<{ kv: Deno.Kv; calls: Deno.KvKey[][] }> {
  const kv = await Deno.openKv(":memory:");
  const calls: Deno.KvKey[][] = [];
  const real = kv.getMany.bind(kv);
  kv.getMany = ((keys: Deno.KvKey[], options?: { consistency?: Deno.KvConsistencyLevel }) => {
    calls.push(keys);
    return real(keys, options);
  }) as Deno.Kv["getMany"];
  return { kv, calls };
}

Deno.test("getMany: reads asked for in one turn share calls of at most 10 keys, in order", async () => {
  const { kv, calls } = await countedKv();
  try {
    for (let i = 0; i < 45; i++) await kv.set(["k", i], i * 10);
    const keys = (from: number, n: number) => Array.from({ length: n }, (_, i) => ["k", from + i]);
    const sizes = [2, 4, 0, 3, 25, 1, 10];
    let from = 0;
    const asked = sizes.map((n) => {
      const promise = getMany<number>(kv, keys(from, n));
      from += n;
      return promise;
    });
    const answers = await Promise.all(asked);
    from = 0;
    sizes.forEach((n, i) => {
      assert.deepEqual(
        answers[i].map((e) => e.value),
        keys(from, n).map((k) => (k[1] as number) * 10),
      );
      from += n;
    });
    // 45 keys in 5 calls: 2+4+3 and the first of the 25; 10 more; 10 more; the last 4 and the
    // 1; the 10, which would not fit beside them.
    assert.deepEqual(calls.map((c) => c.length), [10, 10, 10, 5, 10]);
    // A request of 10 keys or fewer is read by one call: one snapshot.
    for (const n of [2, 4, 3, 1, 10]) {
      const first = sizes.slice(0, sizes.indexOf(n)).reduce((a, b) => a + b, 0);
      assert.ok(
        calls.some((c) => JSON.stringify(c).includes(JSON.stringify(keys(first, n)).slice(1, -1))),
        `the ${n} keys from ${first} were split across calls`,
      );
    }
    // Reads in separate turns do not wait for each other.
    calls.length = 0;
    await getMany(kv, keys(0, 2));
    await getMany(kv, keys(2, 2));
    assert.equal(calls.length, 2);
  } finally {
    kv.close();
  }
});

Deno.test("getMany: a failing call fails only the reads that were in it", async () => {
  const { kv, calls } = await countedKv();
  try {
    await kv.set(["ok"], 1);
    const good = getMany<number>(kv, [["ok"]]);
    const tooBig = getMany<number>(kv, Array.from({ length: 10 }, (_, i) => ["x".repeat(3000), i]));
    const after = getMany<number>(kv, [["ok"], ["missing"]]);
    await assert.rejects(tooBig, /key too large|too large/i);
    assert.deepEqual((await good).map((e) => e.value), [1]);
    assert.deepEqual((await after).map((e) => e.value), [1, null]);
    assert.equal(calls.length, 3);
  } finally {
    kv.close();
  }
});
