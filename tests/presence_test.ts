/**
 * Presence across nodes, with envelopes carried by hand: deltas, heartbeats, snapshots after a
 * dropped delta, silent nodes, nodes that go down, and late copies from a second bus.
 */
import assert from "node:assert/strict";
import type { Envelope, EnvelopeBody } from "../chat/bus.ts";
import { Presence } from "../chat/presence.ts";
import type { UserInfo } from "../chat/protocol.ts";

const user = (id: string): UserInfo => ({ id, name: id.toUpperCase() });

/** Nodes whose envelopes wait in a queue until `deliver`; `drop` loses some. */
function network(names: string[]) {
  let now = 1_000_000;
  const queue: Envelope[] = [];
  const counters = new Map<string, number>();
  const changes = new Map<string, string[]>();
  const nodes = new Map<string, Presence>();
  let drop: (e: Envelope) => boolean = () => false;
  for (const name of names) {
    changes.set(name, []);
    nodes.set(
      name,
      new Presence({
        node: name,
        publish: (body: EnvelopeBody) => {
          const n = (counters.get(name) ?? 0) + 1;
          counters.set(name, n);
          const envelope = { ...body, node: name, n } as Envelope;
          if (!drop(envelope)) queue.push(envelope);
        },
        onChange: (u, online) => changes.get(name)!.push(`${u.id}:${online ? "on" : "off"}`),
        timeoutMs: 7000,
        now: () => now,
      }),
    );
  }
  return {
    nodes,
    changes,
    queue,
    get: (name: string) => nodes.get(name)!,
    set drop(fn: (e: Envelope) => boolean) {
      drop = fn;
    },
    advance(ms: number) {
      now += ms;
    },
    /** Delivers queued envelopes to every other node, and those they cause (snapshots wait 20 ms). */
    async deliver() {
      for (let round = 0; round < 10; round++) {
        while (queue.length) {
          const e = queue.shift()!;
          for (const [name, p] of nodes) if (name !== e.node) p.receive(e);
        }
        await new Promise((r) => setTimeout(r, 30));
        if (!queue.length) return;
      }
    },
    tickAll() {
      for (const p of nodes.values()) p.tick();
    },
  };
}

Deno.test("presence: online while any node has a connection of the user", async () => {
  const net = network(["a", "b", "c"]);
  net.get("a").connect(user("ann"));
  net.get("b").connect(user("ann"));
  net.get("b").connect(user("bob"));
  net.tickAll();
  await net.deliver();
  for (const p of net.nodes.values()) {
    assert.deepEqual(p.online().map((u) => u.id).sort(), ["ann", "bob"]);
  }
  net.get("a").disconnect(user("ann"));
  await net.deliver();
  assert.equal(net.get("c").isOnline("ann"), true, "still on b");
  net.get("b").disconnect(user("ann"));
  await net.deliver();
  for (const p of net.nodes.values()) assert.equal(p.isOnline("ann"), false);
  assert.equal(net.get("c").count, 1);
  assert.equal(net.get("c").nodes, 2);
});

Deno.test("presence: a dropped change is repaired by a snapshot after the next heartbeat", async () => {
  const net = network(["a", "b"]);
  net.tickAll();
  await net.deliver();
  net.drop = (e) => e.k === "presence";
  net.get("a").connect(user("ann"));
  net.get("a").connect(user("amy"));
  await net.deliver();
  assert.equal(net.get("b").isOnline("ann"), false);
  net.drop = () => false;
  net.advance(2000);
  net.tickAll(); // the heartbeat's version shows b missed something: it asks for a snapshot
  await net.deliver();
  assert.deepEqual(net.get("b").online().map((u) => u.id).sort(), ["amy", "ann"]);
});

Deno.test("presence: a silent node is forgotten after the timeout", async () => {
  const net = network(["a", "b"]);
  net.get("a").connect(user("ann"));
  net.tickAll();
  await net.deliver();
  net.get("a").tick();
  await net.deliver();
  assert.equal(net.get("b").isOnline("ann"), true);
  net.advance(8000);
  net.get("b").tick();
  assert.equal(net.get("b").isOnline("ann"), false);
  assert.ok(net.changes.get("b")!.includes("ann:off"));
});

Deno.test("presence: a node going down takes its users offline; its late envelopes are ignored", async () => {
  const net = network(["a", "b"]);
  net.get("a").connect(user("ann"));
  net.tickAll();
  await net.deliver();
  assert.equal(net.get("b").isOnline("ann"), true);
  const late = net.queue.length;
  net.get("a").tick(); // a heartbeat that a slower bus will deliver after the "down"
  const heartbeat = net.queue.splice(late)[0];
  net.get("a").leave();
  await net.deliver();
  assert.equal(net.get("b").isOnline("ann"), false);
  net.get("b").receive(heartbeat);
  net.get("b").receive({ node: "a", n: 99, k: "node", v: 1, users: [user("ann")] });
  await net.deliver();
  assert.equal(net.get("b").isOnline("ann"), false);
  assert.equal(net.get("b").nodes, 0);
});

Deno.test("presence: an older snapshot arriving late does not undo newer changes", () => {
  const net = network(["a", "b"]);
  const b = net.get("b");
  b.receive({ node: "a", n: 1, k: "node", v: 2, users: [user("ann")] });
  assert.equal(b.isOnline("ann"), true);
  b.receive({ node: "a", n: 2, k: "presence", user: user("ann"), online: false, v: 3 });
  assert.equal(b.isOnline("ann"), false);
  // The same snapshot again, from the second bus.
  b.receive({ node: "a", n: 1, k: "node", v: 2, users: [user("ann")] });
  assert.equal(b.isOnline("ann"), false);
  // A stale heartbeat does not ask for a snapshot.
  const asked = net.queue.length;
  b.receive({ node: "a", n: 5, k: "node", v: 2 });
  assert.equal(net.queue.length, asked);
});

Deno.test("presence: a snapshot in parts, with parts repeated by a second bus", () => {
  const net = network(["a", "b"]);
  const b = net.get("b");
  const users = Array.from({ length: 900 }, (_, i) => user(`u${i}`));
  const part = (i: number) => ({
    node: "a",
    n: 10 + i,
    k: "node" as const,
    v: 7,
    users: users.slice(i * 400, (i + 1) * 400),
    part: i,
    parts: 3,
  });
  b.receive(part(0));
  b.receive(part(1));
  b.receive(part(1)); // a repeated part must not stand in for the missing one
  assert.equal(b.count, 0);
  b.receive(part(2));
  assert.equal(b.count, 900);
  b.receive(part(2)); // a stray part after completion starts nothing
  assert.equal(b.count, 900);
});

Deno.test("presence: the online list's JSON is kept until a listed user leaves or it can grow", async () => {
  const net = network(["a", "b"]);
  const a = net.get("a");
  const listed = (limit: number) => a.onlineJson(limit);
  for (const id of ["u1", "u2"]) a.connect(user(id));
  // Below the limit, every newcomer is listed.
  assert.deepEqual(listed(3), { json: JSON.stringify(a.online(3)), count: 2 });
  a.connect(user("u3"));
  const full = listed(3);
  assert.deepEqual(JSON.parse(full.json).map((u: UserInfo) => u.id), ["u1", "u2", "u3"]);
  assert.equal(full.count, 3);
  // Past the limit, newcomers and their departures leave the list (and its string) as it was.
  a.connect(user("u4"));
  net.get("b").connect(user("v1"));
  await net.deliver();
  assert.equal(listed(3).json, full.json);
  a.disconnect(user("u4"));
  assert.equal(listed(3).json, full.json);
  // A listed user leaving changes it: the next in line moves up.
  a.disconnect(user("u2"));
  const after = listed(3);
  assert.deepEqual(JSON.parse(after.json).map((u: UserInfo) => u.id), ["u1", "u3", "v1"]);
  assert.equal(after.json, JSON.stringify(a.online(3)));
  // Another limit is another list.
  assert.deepEqual(JSON.parse(listed(1).json), [user("u1")]);
});
