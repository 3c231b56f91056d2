import assert from "node:assert/strict";
import { batchFrame, SocketOutbox } from "../routes/socket_outbox.ts";

/** A socket stand-in that records what is sent (the outbox's only contact with the socket). */
function sink(readyState = 1) {
  const sent: string[] = [];
  return { sent, readyState, send: (data: string) => void sent.push(data) };
}

const tick = () => new Promise<void>((r) => queueMicrotask(r));

Deno.test("outbox without batch: every frame goes out at once, on its own", () => {
  const s = sink();
  const outbox = new SocketOutbox(s, { batch: false });
  outbox.send('{"type":"pong","t":1}');
  outbox.send('{"type":"pong","t":2}');
  assert.deepEqual(s.sent, ['{"type":"pong","t":1}', '{"type":"pong","t":2}']);
  assert.equal(outbox.pendingChars, 0);
});

Deno.test("outbox with batch: a tick's frames go out as one batch frame, in order", async () => {
  const s = sink();
  const outbox = new SocketOutbox(s, { batch: true });
  const frames = ['{"type":"pong","t":1}', '{"type":"message","seq":2}', '{"type":"ack","id":"x"}'];
  for (const f of frames) outbox.send(f);
  assert.deepEqual(s.sent, [], "nothing is sent before the end of the tick");
  assert.equal(outbox.pendingChars, frames.join("").length);
  await tick();
  assert.equal(s.sent.length, 1);
  assert.deepEqual(JSON.parse(s.sent[0]), {
    type: "batch",
    frames: frames.map((f) => JSON.parse(f)),
  });
  assert.equal(s.sent[0], batchFrame(frames));
  assert.equal(outbox.pendingChars, 0);
});

Deno.test("outbox with batch: a lone frame is not wrapped; each tick flushes its own", async () => {
  const s = sink();
  const outbox = new SocketOutbox(s, { batch: true });
  outbox.send('{"type":"pong","t":1}');
  await tick();
  outbox.send('{"type":"pong","t":2}');
  outbox.send('{"type":"pong","t":3}');
  await tick();
  assert.deepEqual(s.sent, [
    '{"type":"pong","t":1}',
    '{"type":"batch","frames":[{"type":"pong","t":2},{"type":"pong","t":3}]}',
  ]);
});

Deno.test("outbox with batch: frame and size limits split a tick into several frames", async () => {
  const s = sink();
  const outbox = new SocketOutbox(s, { batch: true, maxFrames: 2, maxChars: 30 });
  for (let i = 0; i < 5; i++) outbox.send(`{"i":${i}}`);
  const big = `{"text":"${"x".repeat(40)}"}`;
  outbox.send(big);
  await tick();
  const got = s.sent.map((f) => JSON.parse(f));
  assert.deepEqual(got, [
    { type: "batch", frames: [{ i: 0 }, { i: 1 }] },
    { type: "batch", frames: [{ i: 2 }, { i: 3 }] },
    { i: 4 },
    { text: "x".repeat(40) },
  ]);
});

Deno.test("outbox: flush sends now; a closed or failing socket drops frames without throwing", async () => {
  const s = sink();
  const outbox = new SocketOutbox(s, { batch: true });
  outbox.send('{"type":"reconnect"}');
  outbox.flush();
  assert.deepEqual(s.sent, ['{"type":"reconnect"}']);
  await tick();
  assert.equal(s.sent.length, 1, "the scheduled flush finds nothing left");

  const closed = sink(3);
  const dropping = new SocketOutbox(closed, { batch: true });
  dropping.send("{}");
  await tick();
  assert.deepEqual(closed.sent, []);
  assert.equal(dropping.pendingChars, 0);

  const failing = {
    readyState: 1,
    send: () => {
      throw new Error("closed meanwhile");
    },
  };
  new SocketOutbox(failing, { batch: false }).send("{}");
  const later = new SocketOutbox(failing, { batch: true });
  later.send("{}");
  later.send("{}");
  await tick();
});

Deno.test("outbox with batch: every socket's frames of a tick go out at its end", async () => {
  const sinks = [sink(), sink(), sink()];
  const outboxes = sinks.map((s) => new SocketOutbox(s, { batch: true }));
  outboxes[0].send('{"a":1}');
  outboxes[1].send('{"b":1}');
  outboxes[0].send('{"a":2}');
  outboxes[2].send('{"c":1}');
  assert.deepEqual(sinks.map((s) => s.sent.length), [0, 0, 0]);
  await tick();
  assert.deepEqual(sinks.map((s) => s.sent), [
    ['{"type":"batch","frames":[{"a":1},{"a":2}]}'],
    ['{"b":1}'],
    ['{"c":1}'],
  ]);
  // The next tick starts afresh.
  outboxes[1].send('{"b":2}');
  await tick();
  assert.deepEqual(sinks[1].sent, ['{"b":1}', '{"b":2}']);
  assert.deepEqual(outboxes.map((o) => o.pendingChars), [0, 0, 0]);
});

Deno.test("outbox with batch: by default a batch stays under 64 KiB (a socket keeps its largest frame's memory)", async () => {
  const s = sink();
  const outbox = new SocketOutbox(s, { batch: true });
  // A burst of 200 frames of 1,000 characters: 200,000 characters in one tick.
  const frames = Array.from({ length: 200 }, (_, i) => `{"i":${i},"t":"${"x".repeat(985)}"}`);
  for (const f of frames) outbox.send(f);
  await tick();
  assert.ok(s.sent.length >= 4, `expected at least 4 batch frames, got ${s.sent.length}`);
  for (const frame of s.sent) assert.ok(frame.length <= 64 * 1024 + 64, `${frame.length} chars`);
  const got = s.sent.flatMap((f) => JSON.parse(f).frames.map((x: { i: number }) => x.i));
  assert.deepEqual(got, frames.map((_, i) => i));
});

Deno.test("outbox with batch: sockets with the same frames in a tick share a batch, others get their own", async () => {
  const sinks = Array.from({ length: 5 }, () => sink());
  const outboxes = sinks.map((s) => new SocketOutbox(s, { batch: true }));
  const m1 = '{"type":"message","seq":1}';
  const m2 = '{"type":"message","seq":2}';
  const other = '{"type":"message","seq":7}';
  // As the hub fans out: each message to every member in turn.
  for (const o of outboxes) o.send(m1);
  for (const o of [outboxes[0], outboxes[1], outboxes[3], outboxes[4]]) o.send(m2);
  outboxes[2].send(other);
  // The same content in a different string object is the same frame.
  outboxes[4].send(`{"type":"typing",${'"conv":"lobby"'}}`);
  outboxes[3].send('{"type":"typing","conv":"lobby"}');
  await tick();
  const batchOf = (...frames: string[]) => [batchFrame(frames)];
  assert.deepEqual(sinks[0].sent, batchOf(m1, m2));
  assert.deepEqual(sinks[1].sent, batchOf(m1, m2));
  assert.deepEqual(sinks[2].sent, batchOf(m1, other));
  assert.deepEqual(sinks[3].sent, batchOf(m1, m2, '{"type":"typing","conv":"lobby"}'));
  assert.deepEqual(sinks[4].sent, batchOf(m1, m2, '{"type":"typing","conv":"lobby"}'));
  // A flush outside the tick's (before a close) builds its own batch.
  outboxes[0].send(m1);
  outboxes[0].send(other);
  outboxes[0].flush();
  assert.deepEqual(sinks[0].sent.slice(1), batchOf(m1, other));
});
