/**
 * Batch frames on the wire: a client that opens `/ws?batch=1` gets the frames of one tick as a
 * single `batch` frame; every other client gets the same frames one by one, in the same order.
 */
import assert from "node:assert/strict";
import { signIn, startServer, TestClient, uniqueName, until } from "./_harness.ts";

const BURST = 60;
/** Rate limits above the burst: these tests are about framing, not limits. */
const config = {
  CHAT_RATE_BURST: 1000,
  CHAT_RATE_PER_SECOND: 1000,
  CHAT_USER_RATE_BURST: 1000,
  CHAT_USER_RATE_PER_SECOND: 1000,
};

Deno.test("a burst of messages: batch frames only for the client that asked, same order for both", async () => {
  await using server = await startServer({ config });
  const sender = await signIn(server.url, uniqueName("burst"));
  const batched = await signIn(server.url, uniqueName("bat"));
  const plain = await signIn(server.url, uniqueName("pla"));
  await using cs = await TestClient.connect(server, sender.token);
  await using cb = await TestClient.connect(server, batched.token, {}, true);
  await using cp = await TestClient.connect(server, plain.token, {}, false);

  // Sent without waiting: appends that arrive while a commit is in flight share the next one,
  // and the messages of one commit are fanned out in one tick.
  for (let i = 0; i < BURST; i++) {
    cs.send({ type: "send", id: `b-${i}`, conv: "lobby", text: `m${i}` });
  }
  const messages = (c: TestClient) => c.frames.filter((f) => f.type === "message");
  await until(() => messages(cb).length === BURST && messages(cp).length === BURST, 10_000);

  const order = (c: TestClient) => messages(c).map((f) => `${f.seq}:${f.id}:${f.text}`);
  assert.deepEqual(order(cb), order(cp), "both clients see the same messages in the same order");
  assert.deepEqual(
    messages(cb).map((f) => f.seq),
    Array.from({ length: BURST }, (_, i) => i + 1),
  );
  assert.deepEqual(new Set(messages(cb).map((f) => f.id)).size, BURST);

  const batches = cb.received.filter((r) => r.startsWith('{"type":"batch"'));
  assert.ok(
    batches.length > 0,
    `Expected batch frames for ?batch=1, got ${cb.received.length} frames`,
  );
  assert.ok(cb.received.length < cp.received.length, "fewer WebSocket frames with batches");
  for (const b of batches) {
    const parsed = JSON.parse(b);
    assert.ok(parsed.frames.length >= 2, "a batch holds at least two frames");
  }
  assert.equal(cp.received.filter((r) => r.startsWith('{"type":"batch"')).length, 0);
  // The plain client got one WebSocket frame per server frame.
  assert.equal(cp.received.length, cp.frames.length + 1 /* the welcome, taken by connect */);
});

Deno.test("the sender with batch frames gets every ack and its own messages, each once", async () => {
  await using server = await startServer({ config });
  const sender = await signIn(server.url, uniqueName("acks"));
  await using cs = await TestClient.connect(server, sender.token);
  for (let i = 0; i < BURST; i++) {
    cs.send({ type: "send", id: `a-${i}`, conv: "lobby", text: `m${i}` });
  }
  await until(() => cs.frames.filter((f) => f.type === "ack").length === BURST, 10_000);
  await until(() => cs.frames.filter((f) => f.type === "message").length === BURST, 10_000);
  const acks = cs.frames.filter((f) => f.type === "ack");
  assert.deepEqual(acks.map((f) => f.seq), Array.from({ length: BURST }, (_, i) => i + 1));
  assert.deepEqual(acks.map((f) => f.id), Array.from({ length: BURST }, (_, i) => `a-${i}`));
  // Each message frame comes before (or in the same batch as, earlier than) its ack.
  const at = (type: string, id: string) =>
    cs.frames.findIndex((f) => f.type === type && f.id === id);
  for (let i = 0; i < BURST; i++) assert.ok(at("message", `a-${i}`) < at("ack", `a-${i}`));
});

Deno.test("a resume catch-up of many messages comes in batch frames and in order", async () => {
  await using server = await startServer({ config });
  const sender = await signIn(server.url, uniqueName("res"));
  const reader = await signIn(server.url, uniqueName("rdr"));
  await using cs = await TestClient.connect(server, sender.token);
  for (let i = 0; i < 40; i++) await cs.post("lobby", `old ${i}`, `r-${i}`);
  await using cr = await TestClient.connect(server, reader.token, { lobby: 0 });
  const got = cr.frames.filter((f) => f.type === "message");
  assert.deepEqual(got.map((f) => f.seq), Array.from({ length: 40 }, (_, i) => i + 1));
  assert.ok(
    cr.received.some((r) => r.startsWith('{"type":"batch"')),
    "the replay leaves in batch frames",
  );
});
