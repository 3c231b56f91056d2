/**
 * The real service under `deno serve --parallel`: clients that land on different workers
 * exchange direct and group messages and see each other's presence; history survives a
 * restart on the same KV file.
 */
import assert from "node:assert/strict";
import { signIn, startServe, tempKvPath, TestClient, uniqueName, until } from "./_harness.ts";

/** Rate limits high enough for a burst test. */
const FAST = {
  CHAT_RATE_BURST: "2000",
  CHAT_RATE_PER_SECOND: "2000",
  CHAT_USER_RATE_BURST: "2000",
  CHAT_USER_RATE_PER_SECOND: "2000",
};

/** Connects with `token` until the welcome names a node not in `avoid` (kernel spreads them). */
async function connectOn(
  server: { ws: string },
  token: string,
  avoid: Set<string>,
): Promise<TestClient> {
  for (let attempt = 0; attempt < 60; attempt++) {
    const client = await TestClient.connect(server, token);
    if (!avoid.has(client.welcome.node)) return client;
    await client.close();
  }
  throw new Error(`Could not reach a worker other than ${[...avoid].join(", ")}`);
}

Deno.test("clients on different workers chat by DM and group and see presence", async () => {
  const kvPath = await tempKvPath();
  await using server = await startServe({ env: { CHAT_KV_PATH: kvPath, ...FAST }, workers: 2 });
  const a = await signIn(server.url, uniqueName("ann"));
  const b = await signIn(server.url, uniqueName("bob"));
  await using ca = await TestClient.connect(server, a.token);
  await using cb = await connectOn(server, b.token, new Set([ca.welcome.node]));
  // Proof: two different workers (node ids are per isolate).
  assert.notEqual(ca.welcome.node, cb.welcome.node);

  // Presence crosses workers.
  await ca.next(
    "presence",
    (f) => f.changes.some((c: { user: { id: string } }) => c.user.id === b.user.id),
    10_000,
  );

  // DM both ways.
  const dm = await ca.post({ to: b.user.id }, "across workers", "x-1");
  assert.equal((await cb.next("message", (f) => f.id === "x-1", 10_000)).conv, dm.conv);
  await cb.post(dm.conv, "and back", "x-2");
  assert.equal((await ca.next("message", (f) => f.id === "x-2", 10_000)).seq, 2);

  // Group across workers: create on A, join on B, send both ways.
  const created = await ca.request({ type: "group.create", name: "Across" }, "conversation");
  const conv = created.conversation.id;
  cb.send({ type: "group.join", group: created.conversation.group.id });
  await cb.next("conversation");
  await ca.next("message", (f) => f.conv === conv && f.meta?.event === "joined", 10_000);
  await ca.post(conv, "group hello", "x-3");
  await cb.next("message", (f) => f.id === "x-3", 10_000);
  await cb.post(conv, "group reply", "x-4");
  await ca.next("message", (f) => f.id === "x-4", 10_000);

  // A burst far over BroadcastChannel's 256 arrives complete and in order on the other worker.
  for (let i = 0; i < 600; i++) {
    ca.send({ type: "send", id: `b-${i}`, conv: "lobby", text: `burst ${i}` });
    if (i % 15 === 14) await ca.next("ack", (f) => f.id === `b-${i}`, 10_000);
  }
  await cb.next("message", (f) => f.id === "b-599", 20_000);
  const lobby = cb.frames.filter((f) => f.type === "message" && f.conv === "lobby");
  const seqs = lobby.map((f) => f.seq);
  // The last one was taken out by next(); the rest are consecutive and unique.
  assert.equal(new Set(seqs).size, seqs.length);
  for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1);

  // Offline crosses workers too.
  await cb.close();
  await ca.next(
    "presence",
    (f) =>
      f.changes.some((c: { user: { id: string }; online: boolean }) =>
        c.user.id === b.user.id && !c.online
      ),
    10_000,
  );
});

Deno.test("history survives a restart of the service on the same KV file", async () => {
  const kvPath = await tempKvPath();
  let token: string;
  let conv: string;
  {
    await using server = await startServe({ env: { CHAT_KV_PATH: kvPath }, workers: 2 });
    const a = await signIn(server.url, uniqueName("ann"));
    const b = await signIn(server.url, uniqueName("bob"));
    token = a.token;
    await using ca = await TestClient.connect(server, a.token);
    conv = (await ca.post({ to: b.user.id }, "before restart", "r-1")).conv;
    await ca.post("lobby", "lobby before restart", "r-2");
    await ca.close();
    assert.equal(await server.stop("SIGTERM"), 0);
  }
  await using server = await startServe({ env: { CHAT_KV_PATH: kvPath }, workers: 2 });
  // The same token still works (the signing secret is kept in KV), and history is there.
  await using ca = await TestClient.connect(server, token);
  const listed = ca.welcome.conversations.find((c: { id: string }) => c.id === conv);
  assert.equal(listed.lastSeq, 1);
  const page = await ca.request({ type: "history", conv }, "history");
  assert.deepEqual(page.messages.map((m: { text: string }) => m.text), ["before restart"]);
  const rest = await fetch(`${server.url}/api/conversations/lobby/messages`, {
    headers: { authorization: `Bearer ${token}` },
  });
  const body = await rest.json();
  assert.ok(body.messages.some((m: { id: string }) => m.id === "r-2"));
  // New messages continue the sequence.
  assert.equal((await ca.post(conv, "after restart")).seq, 2);
  await until(() => true);
});
