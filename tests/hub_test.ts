/**
 * The hub as pure logic: several hubs on a `LocalNetwork` (or a KV relay), one message log on an
 * in-memory KV, and fake connections that record their frames. No sockets.
 */
import assert from "node:assert/strict";
import type { Bus, Envelope } from "../chat/bus.ts";
import { LocalNetwork, MultiBus } from "../chat/bus.ts";
import { KvBus } from "../chat/bus_kv.ts";
import type { Connection, HubLog } from "../chat/hub.ts";
import { CLOSE_RESTARTING, CLOSE_SLOW_CONSUMER, Hub } from "../chat/hub.ts";
import { MessageLog } from "../chat/message_log.ts";
import type { ChatMessage, ServerFrame, UserInfo } from "../chat/protocol.ts";

// deno-lint-ignore no-explicit-any
type Frame = ServerFrame & Record<string, any>;

let connCounter = 0;

/** A connection that records frames; `buffered` makes it look slow. */
class FakeConn implements Connection {
  readonly id = `c${++connCounter}`;
  readonly user: UserInfo;
  readonly frames: Frame[] = [];
  buffered = 0;
  closed: { code: number; reason: string } | null = null;

  allPresence?: boolean;

  constructor(user: string, options: { allPresence?: boolean } = {}) {
    this.user = { id: user, name: user.toUpperCase() };
    this.allPresence = options.allPresence;
  }

  /** Users named by presence changes, in order, as `id:on|off`. */
  presence(): string[] {
    return this.frames.filter((f) => f.type === "presence").flatMap((f) =>
      f.changes.map((c: { user: UserInfo; online: boolean }) =>
        `${c.user.id}:${c.online ? "on" : "off"}`
      )
    );
  }

  /** The `count` of the newest presence frame. */
  lastCount(): number | undefined {
    return this.frames.findLast((f) => f.type === "presence")?.count;
  }

  send(data: string): void {
    if (this.closed) return;
    this.frames.push(JSON.parse(data));
  }

  bufferedAmount(): number {
    return this.buffered;
  }

  close(code: number, reason: string): void {
    this.closed ??= { code, reason };
  }

  /** Sequences of the message frames of `conv`, in arrival order. */
  seqs(conv: string): number[] {
    return this.frames.filter((f) => f.type === "message" && f.conv === conv).map((f) => f.seq);
  }
}

const range = (from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => from + i);
const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(check: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`Timed out waiting for ${what}`);
    await delay(5);
  }
}

interface TestNode {
  hub: Hub;
  log: MessageLog;
  bus: Bus;
}

/** Hubs sharing one log of record; each has its own `MessageLog` writer, as isolates do. */
async function cluster(
  n: number,
  options: {
    network?: LocalNetwork;
    buses?: (i: number, kv: Deno.Kv) => Bus;
    relay?: boolean;
    /** Whether node `i`'s commits carry relay entries (default: its KV bus decides). */
    relayActive?: (i: number) => boolean;
    resumeLimit?: number;
    maxBufferedBytes?: number;
    heartbeatMs?: number;
    holdMs?: number;
    presenceCrowd?: number;
    presenceCountMs?: number;
    logOf?: (log: MessageLog) => HubLog;
  } = {},
) {
  const kv = await Deno.openKv(":memory:");
  const network = options.network ?? new LocalNetwork();
  const nodes: TestNode[] = [];
  for (let i = 0; i < n; i++) {
    const bus = options.buses?.(i, kv) ?? network.join();
    const log = new MessageLog(kv, {
      retentionCount: 100_000,
      retentionMs: 86_400_000,
      // A KV bus decides when the log's commits carry relay entries, as in chat/node.ts.
      relay: options.relay
        ? bus instanceof KvBus
          ? {
            node: `n${i}`,
            committed: (versionstamp) => bus.committed(versionstamp),
            active: () => options.relayActive?.(i) ?? bus.relaying,
          }
          : { node: `n${i}` }
        : undefined,
      onCommit: (messages, _ms, versionstamp) => hub.appended(messages, versionstamp),
    });
    const hub: Hub = new Hub({
      node: `n${i}`,
      log: options.logOf?.(log) ?? log,
      bus,
      maxBufferedBytes: options.maxBufferedBytes ?? 1 << 20,
      resumeLimit: options.resumeLimit ?? 500,
      heartbeatMs: options.heartbeatMs,
      holdMs: options.holdMs,
      presenceCrowd: options.presenceCrowd,
      presenceCountMs: options.presenceCountMs,
    });
    nodes.push({ hub, log, bus });
  }
  let posted = 0;
  return {
    kv,
    network,
    nodes,
    /** Appends a message through node `i`'s log. */
    post(i: number, conv: string, text = "hi", from = "u0"): Promise<ChatMessage> {
      const id = `m${++posted}`;
      return nodes[i].log.append({ conv, id, from, name: from, text, kind: "text" })
        .then((r) => r.message);
    },
    async close() {
      await delay(10);
      for (const node of nodes) node.hub.close();
      for (const node of nodes) await node.log.close();
      for (const node of nodes) await node.bus.close();
      await delay(10);
      kv.close();
    },
  };
}

/** Attaches a connection that is live at once (as after a `resume` with nothing to replay). */
function attachLive(hub: Hub, conn: FakeConn, cursors: Record<string, number>): void {
  hub.attach(conn, new Map(Object.entries(cursors)));
  hub.live(conn.id);
}

/**
 * One hub whose log reads wait while the gate is shut, and `count` messages of `conv` written by
 * another node's log: this hub hears only notices, without the messages, so it reads them.
 */
async function gatedNode(conv: string, count: number) {
  let gate: Promise<void> = Promise.resolve();
  let release = () => {};
  const c = await cluster(1, {
    logOf: (log) => ({
      head: (id) => log.head(id),
      range: async (...args) => {
        await gate;
        return await log.range(...args);
      },
    }),
  });
  const writer = new MessageLog(c.kv, { retentionCount: 1000, retentionMs: 86_400_000 });
  for (let i = 0; i < count; i++) {
    await writer.append({ conv, id: `w${i}`, from: "w", name: "W", text: "t", kind: "text" });
  }
  return {
    c,
    hub: c.nodes[0].hub,
    writer,
    /** Log reads from now on wait for `open`. */
    shut: () => void (gate = new Promise((r) => release = r)),
    open: () => release(),
  };
}

Deno.test("hub: fans out every message once, in order, on every node", async () => {
  const c = await cluster(3);
  const conns = c.nodes.map((n, i) => {
    const conn = new FakeConn(`u${i}`);
    attachLive(n.hub, conn, { lobby: 0 });
    return conn;
  });
  await Promise.all(range(1, 300).map((i) => c.post(i % 3, "lobby", `m${i}`)));
  await until(() => conns.every((conn) => conn.seqs("lobby").length >= 300), "delivery");
  await delay(20);
  for (const conn of conns) assert.deepEqual(conn.seqs("lobby"), range(1, 300));
  await c.close();
});

Deno.test("hub: notices dropped by the bus are filled from the log (gap fill)", async () => {
  const c = await cluster(3, { heartbeatMs: 30 });
  let n = 0;
  // Drop two appends out of three: the next notice or a heartbeat shows the gap.
  c.network.drop = (e: Envelope) => e.k === "append" && n++ % 3 !== 0;
  for (const node of c.nodes) node.hub.start();
  const conns = c.nodes.map((node, i) => {
    const conn = new FakeConn(`u${i}`);
    attachLive(node.hub, conn, { lobby: 0, "g:x": 0 });
    return conn;
  });
  for (let round = 0; round < 20; round++) {
    await Promise.all(range(1, 15).map((i) => c.post(i % 3, i % 2 ? "lobby" : "g:x")));
  }
  const lobby = await c.nodes[0].log.head("lobby");
  const group = await c.nodes[0].log.head("g:x");
  await until(
    () => conns.every((x) => x.seqs("lobby").length >= lobby && x.seqs("g:x").length >= group),
    "repair",
  );
  await delay(50);
  for (const conn of conns) {
    assert.deepEqual(conn.seqs("lobby"), range(1, lobby));
    assert.deepEqual(conn.seqs("g:x"), range(1, group));
  }
  assert.ok(c.nodes.some((node) => node.hub.stats.gapFills > 0));
  await c.close();
});

Deno.test("hub: a bus that drops every append (a lagging BroadcastChannel) is repaired by heads", async () => {
  const c = await cluster(2, { heartbeatMs: 20 });
  c.network.drop = (e: Envelope) => e.k === "append";
  for (const node of c.nodes) node.hub.start();
  const far = new FakeConn("u1");
  attachLive(c.nodes[1].hub, far, { lobby: 0 });
  // A burst far over 256 from one node; the other hears only the heads heartbeat.
  await Promise.all(range(1, 700).map(() => c.post(0, "lobby")));
  await until(() => far.seqs("lobby").length >= 700, "repair by heads", 10_000);
  assert.deepEqual(far.seqs("lobby"), range(1, 700));
  await c.close();
});

Deno.test("hub: a connection joining while a gap fill is in flight misses nothing", async () => {
  const { c, hub, shut, open, writer } = await gatedNode("lobby", 10);
  const first = new FakeConn("u1");
  attachLive(hub, first, { lobby: 0 });
  hub.notify("lobby", 5);
  await until(() => first.seqs("lobby").length === 5, "first five");
  shut();
  hub.notify("lobby", 10); // the fill of 6..10 waits on the gate
  await delay(10);
  const late = new FakeConn("u2");
  attachLive(hub, late, { lobby: 2 }); // its welcome said 2: it needs 3..10
  open();
  await until(() => late.seqs("lobby").length >= 8 && first.seqs("lobby").length >= 10, "all");
  await delay(10);
  assert.deepEqual(first.seqs("lobby"), range(1, 10));
  assert.deepEqual(late.seqs("lobby"), range(3, 10));
  await writer.close();
  await c.close();
});

Deno.test("hub: a connection that leaves and joins again during its catch-up misses nothing", async () => {
  const { c, hub, shut, open, writer } = await gatedNode("g:x", 6);
  const first = new FakeConn("u1");
  attachLive(hub, first, { "g:x": 0 });
  hub.notify("g:x", 5);
  await until(() => first.seqs("g:x").length === 5, "first five");
  shut();
  const late = new FakeConn("u2");
  attachLive(hub, late, { "g:x": 2 }); // behind this node: its catch-up waits on the gate
  await delay(10);
  hub.unsubscribe("u2", "g:x");
  hub.subscribe("u2", "g:x", 4); // joined again, having seen 4: it needs 5, not 3..5
  open();
  // The second join's catch-up sends 5 now, not when a newer message comes.
  await until(() => late.seqs("g:x").length === 1, "the message after the second join");
  assert.deepEqual(late.seqs("g:x"), [5]);
  hub.notify("g:x", 6);
  await until(() => late.seqs("g:x").length === 2 && first.seqs("g:x").length === 6, "all");
  await delay(10);
  assert.deepEqual(late.seqs("g:x"), [5, 6]);
  assert.deepEqual(first.seqs("g:x"), range(1, 6));
  await writer.close();
  await c.close();
});

Deno.test("hub: resume replays what was missed, then the held live messages, no duplicates", async () => {
  const c = await cluster(1);
  const hub = c.nodes[0].hub;
  for (let i = 0; i < 20; i++) await c.post(0, "lobby");
  const conn = new FakeConn("u1");
  hub.attach(conn, new Map([["lobby", 20]])); // the welcome said 20
  for (let i = 0; i < 5; i++) await c.post(0, "lobby"); // 21..25 arrive before the resume
  assert.deepEqual(conn.seqs("lobby"), [], "live messages wait for the resume");
  await hub.resume(conn.id, { lobby: 12 }); // the client had seen 12
  for (let i = 0; i < 5; i++) await c.post(0, "lobby"); // 26..30 are live
  assert.deepEqual(conn.seqs("lobby"), range(13, 30));
  const resumed = conn.frames.findIndex((f) => f.type === "resumed");
  assert.deepEqual(conn.frames[resumed], {
    type: "resumed",
    conv: "lobby",
    from: 12,
    to: 25,
    reload: false,
  });
  assert.equal(conn.frames[resumed - 1].seq, 25);
  assert.equal(conn.frames[resumed + 1].seq, 26);
  await c.close();
});

Deno.test("hub: resume past the limit asks the client to reload, then goes live", async () => {
  const c = await cluster(1, { resumeLimit: 5 });
  const hub = c.nodes[0].hub;
  for (let i = 0; i < 20; i++) await c.post(0, "lobby");
  const conn = new FakeConn("u1");
  hub.attach(conn, new Map([["lobby", 20]]));
  await hub.resume(conn.id, { lobby: 3 });
  await c.post(0, "lobby");
  assert.deepEqual(conn.frames.filter((f) => f.type === "resumed"), [
    { type: "resumed", conv: "lobby", from: 3, to: 20, reload: true },
  ]);
  assert.deepEqual(conn.seqs("lobby"), [21]);
  await c.close();
});

Deno.test("hub: a resume after the connection went live never repeats or reorders", async () => {
  const c = await cluster(1);
  const hub = c.nodes[0].hub;
  for (let i = 0; i < 10; i++) await c.post(0, "lobby");
  const conn = new FakeConn("u1");
  attachLive(hub, conn, { lobby: 10 });
  await c.post(0, "lobby");
  await hub.resume(conn.id, { lobby: 4 });
  await c.post(0, "lobby");
  assert.deepEqual(conn.seqs("lobby"), [11, 12]);
  assert.deepEqual(conn.frames.find((f) => f.type === "resumed"), {
    type: "resumed",
    conv: "lobby",
    from: 4,
    to: 11,
    reload: true,
  });
  await c.close();
});

Deno.test("hub: live messages are released by the hold timer when no frame comes", async () => {
  const c = await cluster(1, { holdMs: 30 });
  const hub = c.nodes[0].hub;
  const conn = new FakeConn("u1");
  hub.attach(conn, new Map([["lobby", 0]]));
  await c.post(0, "lobby");
  assert.deepEqual(conn.seqs("lobby"), []);
  await until(() => conn.seqs("lobby").length === 1, "release");
  await c.close();
});

Deno.test("hub: a connection far behind when it joins is told to reload that range", async () => {
  const c = await cluster(1, { resumeLimit: 10 });
  const hub = c.nodes[0].hub;
  const first = new FakeConn("u1");
  attachLive(hub, first, { lobby: 0 });
  for (let i = 0; i < 30; i++) await c.post(0, "lobby");
  const late = new FakeConn("u2");
  attachLive(hub, late, { lobby: 5 });
  await until(() => late.frames.some((f) => f.type === "resumed"), "reload frame");
  await c.post(0, "lobby");
  assert.deepEqual(late.frames.find((f) => f.type === "resumed"), {
    type: "resumed",
    conv: "lobby",
    from: 5,
    to: 30,
    reload: true,
  });
  assert.deepEqual(late.seqs("lobby"), [31]);
  await c.close();
});

Deno.test("hub: a new direct conversation reaches both users from its first message", async () => {
  const c = await cluster(2);
  const [a, b] = c.nodes;
  const ann = new FakeConn("ann");
  const bob = new FakeConn("bob");
  attachLive(a.hub, ann, { lobby: 0 }); // neither welcome listed the conversation
  attachLive(b.hub, bob, { lobby: 0 });
  const conv = "d:ann:bob";
  for (let i = 0; i < 3; i++) await c.post(0, conv, "hi", "ann");
  await until(() => bob.seqs(conv).length === 3 && ann.seqs(conv).length === 3, "dm");
  assert.deepEqual(ann.seqs(conv), [1, 2, 3]);
  assert.deepEqual(bob.seqs(conv), [1, 2, 3]);
  // Heard only as a head (a relay notice without messages): still from the first message.
  const carl = new FakeConn("carl");
  attachLive(b.hub, carl, { lobby: 0 });
  const other = "d:ann:carl";
  for (let i = 0; i < 4; i++) {
    await a.log.append({
      conv: other,
      id: `x${i}`,
      from: "ann",
      name: "A",
      text: "t",
      kind: "text",
    });
  }
  b.hub.notify(other, 4);
  await until(() => carl.seqs(other).length === 4, "dm from a head");
  assert.deepEqual(carl.seqs(other), [1, 2, 3, 4]);
  await c.close();
});

Deno.test("hub: a slow consumer is closed with 1013; the others get everything", async () => {
  const c = await cluster(1, { maxBufferedBytes: 1000 });
  const hub = c.nodes[0].hub;
  const slow = new FakeConn("slow");
  const fast = new FakeConn("fast");
  attachLive(hub, slow, { lobby: 0 });
  attachLive(hub, fast, { lobby: 0 });
  await c.post(0, "lobby");
  slow.buffered = 5000; // stops reading
  for (let i = 0; i < 20; i++) await c.post(0, "lobby");
  assert.deepEqual(slow.closed, {
    code: CLOSE_SLOW_CONSUMER,
    reason: "Slow consumer: reconnect and resume",
  });
  // The send queue is checked every 8th frame: closed within 8 frames of stalling.
  const got = slow.seqs("lobby");
  assert.ok(got.length >= 2 && got.length <= 9, `${got.length} frames before the close`);
  assert.deepEqual(got, range(1, got.length));
  assert.deepEqual(fast.seqs("lobby"), range(1, 21));
  assert.equal(hub.stats.slowClosed, 1);
  await c.close();
});

Deno.test("hub: membership notices subscribe and unsubscribe in log order", async () => {
  const c = await cluster(2);
  const [a, b] = c.nodes;
  const owner = new FakeConn("own");
  const joiner = new FakeConn("joe");
  attachLive(b.hub, owner, { "g:x": 0 });
  attachLive(b.hub, joiner, { lobby: 0 });
  const notice = (event: "joined" | "left") =>
    a.log.append({
      conv: "g:x",
      id: `${event}-${Math.random()}`,
      from: "joe",
      name: "Joe",
      text: event,
      kind: "notice",
      meta: { event, user: { id: "joe", name: "Joe" } },
    });
  await c.post(0, "g:x", "before");
  await notice("joined");
  await c.post(0, "g:x", "while a member");
  await notice("left");
  await c.post(0, "g:x", "after");
  await until(() => owner.seqs("g:x").length === 5, "owner");
  await delay(10);
  assert.deepEqual(joiner.seqs("g:x"), [2, 3, 4]);
  assert.equal(b.hub.isSubscribed(joiner.id, "g:x"), false);
  await c.close();
});

Deno.test("hub: close sends reconnect and 1012; later commits still reach other nodes", async () => {
  const c = await cluster(2);
  const [a, b] = c.nodes;
  const leaving = new FakeConn("u1");
  const staying = new FakeConn("u2");
  attachLive(a.hub, leaving, { lobby: 0 });
  attachLive(b.hub, staying, { lobby: 0 });
  a.hub.close();
  assert.deepEqual(leaving.frames.at(-1), {
    type: "reconnect",
    reason: "Server restarting: reconnect",
  });
  assert.equal(leaving.closed?.code, CLOSE_RESTARTING);
  await c.post(0, "lobby", "committed while draining");
  await until(() => staying.seqs("lobby").length === 1, "delivery from a closed node");
  await c.close();
});

Deno.test("hub: hubs linked only by the KV relay deliver everything in order", async () => {
  const c = await cluster(3, {
    relay: true,
    buses: (i, kv) => new KvBus(kv, { node: `n${i}`, appendsInLog: true, pollMs: 200 }),
  });
  await Promise.all(c.nodes.map((n) => (n.bus as KvBus).ready()));
  const conns = c.nodes.map((node, i) => {
    const conn = new FakeConn(`u${i}`);
    attachLive(node.hub, conn, { lobby: 0, "g:y": 0 });
    return conn;
  });
  // A node that has heard no other writes no relay entries, and its envelopes (the presence of
  // the connections above) wait up to `aloneFlushMs` (50 ms); what it commits meanwhile reaches
  // the others through the heads heartbeat, not started here. Post once every node is relaying.
  await until(() => c.nodes.every((n) => (n.bus as KvBus).relaying), "nodes hearing each other");
  // Many small commits: the watch coalesces its updates; each read lists every new entry.
  for (let round = 0; round < 10; round++) {
    await Promise.all(range(1, 30).map((i) => c.post(i % 3, i % 4 ? "lobby" : "g:y")));
  }
  const lobby = await c.nodes[0].log.head("lobby");
  const group = await c.nodes[0].log.head("g:y");
  await until(
    () => conns.every((x) => x.seqs("lobby").length >= lobby && x.seqs("g:y").length >= group),
    "relay delivery",
  );
  for (const conn of conns) {
    assert.deepEqual(conn.seqs("lobby"), range(1, lobby));
    assert.deepEqual(conn.seqs("g:y"), range(1, group));
  }
  await c.close();
});

Deno.test("hub: nodes writing to one conversation learn each other's heads from the bus", async () => {
  for (
    const [label, options] of [
      ["in-process bus", {}],
      ["KV relay", {
        relay: true,
        buses: (i: number, kv: Deno.Kv) =>
          new KvBus(kv, { node: `n${i}`, appendsInLog: true, staleMs: 0 }),
      }],
    ] as const
  ) {
    const c = await cluster(2, options);
    const conns = c.nodes.map((node, i) => {
      const conn = new FakeConn(`u${i}`);
      attachLive(node.hub, conn, { "g:z": 0 });
      return conn;
    });
    // The two nodes take turns; each waits until the other node has delivered its message.
    for (let i = 1; i <= 40; i++) {
      await c.post(i % 2, "g:z", `m${i}`, `u${i % 2}`);
      await until(() => conns.every((x) => x.seqs("g:z").length >= i), `${label}: delivery ${i}`);
    }
    for (const conn of conns) assert.deepEqual(conn.seqs("g:z"), range(1, 40), label);
    // Without the versionstamp in the append envelope every turn after the first would fail
    // its check once (38 conflicts): each node's cached head is the other's previous one.
    const conflicts = c.nodes.reduce((sum, n) => sum + n.log.stats.conflicts, 0);
    assert.equal(conflicts, 0, `${label}: ${conflicts} commits refused by a stale head`);
    await c.close();
  }
});

Deno.test("hub: a node that writes no relay entries still reaches the others (heads heartbeat)", async () => {
  // n0's commits carry no relay entry, as for a node alone or one that has not heard of a new
  // node yet. Its hub's `heads` heartbeat is then all that tells n1 of its messages.
  const c = await cluster(2, {
    relay: true,
    relayActive: (i) => i !== 0,
    heartbeatMs: 50,
    buses: (i, kv) => new KvBus(kv, { node: `n${i}`, appendsInLog: true, pollMs: 100 }),
  });
  await Promise.all(c.nodes.map((n) => (n.bus as KvBus).ready()));
  for (const node of c.nodes) node.hub.start();
  const far = new FakeConn("far");
  attachLive(c.nodes[1].hub, far, { lobby: 0 });
  for (let i = 1; i <= 20; i++) {
    await c.post(0, "lobby");
    if (i % 5 === 0) await delay(30);
  }
  await until(() => far.seqs("lobby").length >= 20, "n0's messages at n1");
  assert.deepEqual(far.seqs("lobby"), range(1, 20));
  const entries = [];
  for await (
    const e of c.kv.list<{ node: string; heads?: unknown }>({ prefix: ["relay", "log"] })
  ) {
    entries.push(e.value);
  }
  assert.equal(entries.filter((v) => v.node === "n0" && v.heads).length, 0);
  assert.ok(entries.some((v) => v.node === "n0"), "n0's heartbeats are in the relay log");
  await c.close();
});

Deno.test("hub: the KV relay and a lossy bus together (MultiBus) lose nothing", async () => {
  const network = new LocalNetwork();
  network.drop = () => Math.random() < 0.5;
  const c = await cluster(2, {
    network,
    relay: true,
    buses: (i, kv) =>
      new MultiBus([network.join(), new KvBus(kv, { node: `n${i}`, appendsInLog: true })]),
  });
  await delay(20);
  const conns = c.nodes.map((node, i) => {
    const conn = new FakeConn(`u${i}`);
    attachLive(node.hub, conn, { lobby: 0 });
    return conn;
  });
  await Promise.all(range(1, 400).map((i) => c.post(i % 2, "lobby")));
  await until(() => conns.every((x) => x.seqs("lobby").length >= 400), "delivery");
  await delay(30);
  for (const conn of conns) assert.deepEqual(conn.seqs("lobby"), range(1, 400));
  await c.close();
});

Deno.test("hub: presence goes to everyone in a small crowd, with the online count", async () => {
  const c = await cluster(2, { presenceCrowd: 10 });
  const [a, b] = c.nodes;
  const ann = new FakeConn("ann");
  attachLive(a.hub, ann, { lobby: 0 });
  const others = ["bob", "cat", "dan"].map((u) => new FakeConn(u));
  for (const o of others) attachLive(b.hub, o, { lobby: 0 });
  await until(() => ann.presence().length === 4, "four changes");
  assert.deepEqual(ann.presence().sort(), ["ann:on", "bob:on", "cat:on", "dan:on"]);
  await until(() => ann.lastCount() === 4, "count 4");
  b.hub.detach(others[0]);
  await until(() => ann.presence().includes("bob:off"), "bob offline");
  await until(() => ann.lastCount() === 3, "count 3");
  await c.close();
});

Deno.test("hub: in a crowd, presence goes only to watchers; the count to everyone", async () => {
  const c = await cluster(2, { presenceCrowd: 3, presenceCountMs: 300 });
  const [a, b] = c.nodes;
  const ann = new FakeConn("ann"); // has a direct conversation with bob
  const wat = new FakeConn("wat"); // watches cat
  const pam = new FakeConn("pam"); // watches nobody
  const old = new FakeConn("old", { allPresence: true }); // a legacy user list
  attachLive(a.hub, ann, { lobby: 0, "d:ann:bob": 0 });
  attachLive(a.hub, wat, { lobby: 0 });
  attachLive(a.hub, pam, { lobby: 0 });
  attachLive(a.hub, old, { lobby: 0 });
  a.hub.watch(wat.id, ["cat"]);
  await delay(250); // the four above are announced while the crowd is small
  for (const f of [ann, wat, pam, old]) f.frames.length = 0;
  const crowd = ["bob", "cat", "dan", "eve", "fay"].map((u) => new FakeConn(u));
  for (const f of crowd) attachLive(b.hub, f, { lobby: 0 });
  await until(() => old.presence().length === 5, "every change for the legacy list");
  await until(() => ann.presence().length === 1 && wat.presence().length === 1, "watched");
  assert.deepEqual(ann.presence(), ["bob:on"]);
  assert.deepEqual(wat.presence(), ["cat:on"]);
  await until(() => pam.lastCount() === 9, "count-only frame with 9 online");
  assert.deepEqual(pam.presence(), []);
  assert.ok(pam.frames.every((f) => f.type !== "presence" || f.crowd === true));
  // Going offline reaches the watcher; watching nobody again stops it.
  a.hub.watch(wat.id, []);
  b.hub.detach(crowd[0]);
  b.hub.detach(crowd[1]);
  await until(() => ann.presence().includes("bob:off"), "bob offline to his DM peer");
  await until(() => pam.lastCount() === 7, "count 7 within presenceCountMs");
  assert.deepEqual(wat.presence(), ["cat:on"]);
  assert.ok(old.presence().includes("cat:off"));
  await c.close();
});
