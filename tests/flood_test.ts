/**
 * Floods and limits: a client sending as fast as it can is refused with a retry time and then
 * closed with 1008, while another user's latency stays normal; the per-user, group-creation,
 * group-count, message-size, name-length and idle limits hold.
 *
 * @module
 */
import assert from "node:assert/strict";
import { randomId } from "../chat/directory.ts";
import { connectUser, signIn, startServer, TestClient, uniqueName, until } from "./_harness.ts";
import type { Frame, SignedClient, TestServer } from "./_harness.ts";

type Client = SignedClient;
const user = connectUser;

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

/** Round trips of a client: `n` sends to `conv`, one at a time, each waiting for its ack. */
async function sendLatencies(client: TestClient, conv: string, n: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const start = performance.now();
    await client.post(conv, `probe ${i}`);
    times.push(performance.now() - start);
    // Within the victim's own budget (see the config of the latency test).
    await new Promise((r) => setTimeout(r, 25));
  }
  return times;
}

/** Round trips of a client: `n` pings, one at a time. */
async function pingLatencies(client: TestClient, n: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = Math.random();
    const start = performance.now();
    client.send({ type: "ping", t });
    await client.next("pong", (f) => f.t === t);
    times.push(performance.now() - start);
    await new Promise((r) => setTimeout(r, 5));
  }
  return times;
}

/**
 * A flooder in a worker (its own thread, like a separate machine): it sends frames as fast as
 * the socket takes them, and when it is closed it connects again, until told to stop.
 */
const FLOODER = `
self.onmessage = async (event) => {
  const { url, token, frame } = event.data;
  let stop = false;
  self.onmessage = () => { stop = true; };
  const stats = { sent: 0, acks: 0, limited: 0, retry: [], messages: [], closes: [], connections: 0 };
  while (!stop) {
    const ws = new WebSocket(url, { headers: { authorization: "Bearer " + token } });
    const opened = await new Promise((resolve) => {
      ws.onopen = () => resolve(true);
      ws.onerror = () => resolve(false);
    });
    if (!opened) { await new Promise((r) => setTimeout(r, 20)); continue; }
    stats.connections++;
    const closed = new Promise((resolve) => { ws.onclose = (e) => { stats.closes.push(e.code); resolve(); }; });
    ws.onmessage = (m) => {
      const f = JSON.parse(m.data);
      if (f.type === "ack") stats.acks++;
      if (f.type === "error" && f.code === "rate_limited") {
        stats.limited++;
        if (stats.retry.length < 20) { stats.retry.push(f.retryAfterMs); stats.messages.push(f.message); }
      }
    };
    ws.send(JSON.stringify({ type: "resume", since: {} }));
    while (ws.readyState === 1 && !stop) {
      for (let i = 0; i < 200 && ws.readyState === 1; i++) {
        ws.send(frame.replace("#", String(stats.sent++)));
      }
      await new Promise((r) => setTimeout(r, 0));
    }
    if (ws.readyState <= 1) ws.close();
    await closed;
  }
  self.postMessage(stats);
};
`;

interface FloodStats {
  sent: number;
  acks: number;
  limited: number;
  retry: number[];
  messages: string[];
  closes: number[];
  connections: number;
}

async function flood<T>(
  server: TestServer,
  token: string,
  frame: string,
  during: () => Promise<T>,
): Promise<{ stats: FloodStats; result: T }> {
  const url = URL.createObjectURL(new Blob([FLOODER], { type: "text/javascript" }));
  const worker = new Worker(url, { type: "module" });
  try {
    const done = new Promise<FloodStats>((resolve) => worker.onmessage = (e) => resolve(e.data));
    worker.postMessage({ url: `${server.ws}/ws`, token, frame });
    await new Promise((r) => setTimeout(r, 200));
    const result = await during();
    worker.postMessage("stop");
    return { stats: await done, result };
  } finally {
    worker.terminate();
    URL.revokeObjectURL(url);
  }
}

Deno.test("a flooder gets rate_limited errors with a retry time, then a 1008 close", async () => {
  await using server = await startServer();
  await using watcher = await user(server, "watch");
  await using flooder = await user(server, "flood");
  const burst = server.node.config.CHAT_RATE_BURST;
  for (let i = 0; i < 500; i++) {
    flooder.send({ type: "send", id: `f${i}`, conv: "lobby", text: `flood ${i}` });
  }
  const closed = await flooder.closed;
  assert.equal(closed.code, 1008);
  assert.match(closed.reason, /rate limit/i);
  const acks = flooder.frames.filter((f) => f.type === "ack");
  const limited = flooder.frames.filter((f) => f.type === "error" && f.code === "rate_limited");
  assert.ok(acks.length >= burst - 1 && acks.length <= burst + 2, `${acks.length} acks`);
  assert.ok(limited.length >= 1);
  for (const e of limited) {
    assert.ok(e.retryAfterMs > 0 && e.retryAfterMs <= 1000, `retryAfterMs ${e.retryAfterMs}`);
    assert.match(e.message, /retry in \d+ ms/);
    assert.match(e.id, /^f\d+$/, "says which message was refused");
  }
  // At most the budget was stored; every stored one was acked.
  const page = await watcher.request({ type: "history", conv: "lobby", limit: 200 }, "history");
  const stored = page.messages.filter((m: Frame) => m.from === flooder.welcome.user.id);
  assert.equal(stored.length, acks.length);
  // A well-behaved client after the flood is fine.
  await using again = await TestClient.connect(
    server,
    (await signIn(server.url, uniqueName("b"))).token,
  );
  await again.post("lobby", "calm");
});

Deno.test("under a sustained flood, another user's latency stays normal", async () => {
  // Limits that let the victim probe 40 times a second; the flooder goes far past them.
  await using server = await startServer({
    config: { CHAT_RATE_PER_SECOND: 50, CHAT_USER_RATE_PER_SECOND: 100 },
  });
  const { CHAT_USER_RATE_BURST: userBurst, CHAT_USER_RATE_PER_SECOND: userRate } =
    server.node.config;
  await using victim = await user(server, "victim");
  const flooder = await signIn(server.url, uniqueName("flood"));
  // Warm up, then the baseline, measured in the same test.
  await sendLatencies(victim, "lobby", 10);
  const baseSend = await sendLatencies(victim, "lobby", 40);
  const basePing = await pingLatencies(victim, 40);
  const frame = JSON.stringify({ type: "send", id: "f#", conv: "lobby", text: "flood" });
  const started = performance.now();
  const { stats, result } = await flood(server, flooder.token, frame, async () => ({
    send: await sendLatencies(victim, "lobby", 40),
    ping: await pingLatencies(victim, 40),
  }));
  const seconds = (performance.now() - started) / 1000;
  const report = JSON.stringify({
    baseline: { send: percentile(baseSend, 0.5), ping: percentile(basePing, 0.5) },
    flood: { send: percentile(result.send, 0.5), ping: percentile(result.ping, 0.5) },
    sent: stats.sent,
    limited: stats.limited,
    connections: stats.connections,
    acks: stats.acks,
  });
  // The flooder was limited and closed, over and over. A client that never pauses may see its
  // connection dropped rather than the 1008 frame (the runtime drops a closing socket that keeps
  // receiving), so any close counts here; the burst test checks for 1008.
  assert.ok(stats.sent > 1000, report);
  assert.ok(stats.limited > 0, report);
  const byServer = stats.closes.filter((c) => c === 1008 || c === 1006 || c === 0);
  assert.ok(byServer.length >= 1, `${report} ${stats.closes}`);
  assert.ok(stats.retry.every((r) => r > 0), report);
  // Reconnecting does not reset the user's budget: a burst, then the steady rate.
  assert.ok(stats.acks <= userBurst + userRate * (seconds + 1), report);
  // The victim's latency: generous bounds, to catch a stalled server, not to time it.
  assert.ok(
    percentile(result.send, 0.5) < 3 * percentile(baseSend, 0.5) + 20,
    `send→ack p50 ${report}`,
  );
  assert.ok(
    percentile(result.ping, 0.5) < 3 * percentile(basePing, 0.5) + 20,
    `ping p50 ${report}`,
  );
});

Deno.test("the per-user budget holds across several connections", async () => {
  await using server = await startServer({ config: { CHAT_RATE_STRIKES: 1000 } });
  const a = await signIn(server.url, uniqueName("multi"));
  const conns = await Promise.all([1, 2, 3].map(() => TestClient.connect(server, a.token)));
  try {
    conns.forEach((c, n) => {
      for (let i = 0; i < 20; i++) {
        c.send({ type: "send", id: `c${n}m${i}`, conv: "lobby", text: "x" });
      }
    });
    const t = Math.random();
    for (const c of conns) {
      c.send({ type: "ping", t });
      await c.next("pong", (f) => f.t === t);
    }
    // Acks come after the KV write: wait for all sends to be answered.
    const answered = () =>
      conns.reduce(
        (n, c) => n + c.frames.filter((f) => f.type === "ack" || f.type === "error").length,
        0,
      );
    for (let i = 0; i < 100 && answered() < 60; i++) await new Promise((r) => setTimeout(r, 20));
    const acks = conns.reduce((n, c) => n + c.frames.filter((f) => f.type === "ack").length, 0);
    const user = server.node.config.CHAT_USER_RATE_BURST;
    assert.ok(acks >= user - 1 && acks <= user + 2, `${acks} acks, user burst ${user}`);
  } finally {
    await Promise.all(conns.map((c) => c.close()));
  }
});

Deno.test("group creation is rate limited, and the groups a user is in are capped", async () => {
  await using server = await startServer({
    config: { CHAT_GROUP_CREATES_PER_HOUR: 3, CHAT_MAX_GROUPS_PER_USER: 4 },
  });
  await using a = await user(server, "maker");
  await using b = await user(server, "other");
  // The answer is a conversation or an error: whichever comes, taken out of the queue.
  const create = async (client: TestClient, isPublic = true): Promise<Frame> => {
    const name = `g${randomId(6)}`;
    client.send({ type: "group.create", name, public: isPublic });
    const answer = (f: Frame) =>
      (f.type === "conversation" && f.conversation.title === name) ||
      (f.type === "error" && f.ref === "group.create");
    await until(() => client.frames.some(answer), 5000, `an answer to creating ${name}`);
    return client.frames.splice(client.frames.findIndex(answer), 1)[0];
  };
  const made = [await create(a), await create(a), await create(a)];
  assert.ok(made.every((f) => f.type === "conversation"));
  const limited = await create(a);
  assert.equal(limited.code, "rate_limited");
  assert.ok(limited.retryAfterMs > 60_000, `retryAfterMs ${limited.retryAfterMs}`);
  // b is in 3 groups of its own and joins a's: 4 is the cap.
  const own = [await create(b), await create(b), await create(b)];
  assert.ok(own.every((f) => f.type === "conversation"));
  const groups = made.map((f) => String(f.conversation.group?.id));
  b.send({ type: "group.join", group: groups[0] });
  await b.next("conversation", (f) => f.conversation.id === `g:${groups[0]}`);
  const full = b.next("error", (f) => f.ref === "group.join");
  b.send({ type: "group.join", group: groups[1] });
  const capped = await full;
  assert.equal(capped.code, "limit_reached");
  assert.match(capped.message, /4 groups/);
  const add = a.next("error", (f) => f.ref === "group.add");
  a.send({ type: "group.add", group: groups[2], user: b.id });
  assert.equal((await add).code, "limit_reached");
});

Deno.test("sizes: message bytes in UTF-8, name and group-name lengths, as configured", async () => {
  await using server = await startServer({
    config: {
      CHAT_MAX_MESSAGE_BYTES: 12,
      CHAT_MAX_NAME_LENGTH: 6,
      CHAT_MAX_GROUP_NAME_LENGTH: 5,
    },
  });
  // A short name: the longest allowed here is 6 characters.
  await using a = await TestClient.connect(
    server,
    (await signIn(server.url, `a${randomId(4)}`)).token,
  );
  await a.post("lobby", "éééééé"); // 6 characters, 12 bytes
  await a.post("lobby", "😀😀😀"); // 12 bytes
  for (const text of ["ééééééé", "😀😀😀😀", "x".repeat(13)]) {
    const id = randomId(8);
    const error = a.next("error", (f) => f.id === id);
    a.send({ type: "send", id, conv: "lobby", text });
    const got = await error;
    assert.equal(got.code, "too_large", text);
    assert.match(got.message, /at most 12 UTF-8 bytes/);
  }
  const long = await fetch(`${server.url}/api/session`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: "abcdefg" }),
  });
  assert.equal(long.status, 400);
  assert.match((await long.json()).error.message, /2 to 6 characters, got 7/);
  const group = a.next("error", (f) => f.ref === "group.create");
  a.send({ type: "group.create", name: "abcdef" });
  assert.match((await group).message, /1 to 5 characters, got 6/);
  assert.equal(a.welcome.limits.maxMessageBytes, 12);
});

Deno.test("idle sockets that do not answer the runtime's pings are closed; live ones stay", async () => {
  const idle = 5;
  await using server = await startServer({ config: { CHAT_IDLE_TIMEOUT_SECONDS: idle } });
  const a = await signIn(server.url, uniqueName("idle"));
  await using live = await user(server, "live");
  const url = new URL(server.url);
  const conn = await Deno.connect({ hostname: url.hostname, port: Number(url.port) });
  try {
    const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
    await conn.write(new TextEncoder().encode(
      `GET /ws HTTP/1.1\r\nHost: ${url.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
        `Authorization: Bearer ${a.token}\r\n\r\n`,
    ));
    // Read (and never answer) until the server hangs up.
    const start = performance.now();
    const buf = new Uint8Array(65536);
    while ((await conn.read(buf)) !== null) {
      if (performance.now() - start > (idle * 3 + 5) * 1000) break;
    }
    const seconds = (performance.now() - start) / 1000;
    assert.ok(seconds >= idle - 1 && seconds <= idle * 3 + 1, `closed after ${seconds} s`);
  } finally {
    conn.close();
  }
  assert.equal(server.node.service.connectionsOf(a.user.id), 0);
  // The runtime's client answered every ping: still open.
  assert.equal(live.socket.readyState, WebSocket.OPEN);
  await live.post("lobby", "still here");
});

Deno.test({
  name: "a flood of invalid or binary frames is limited and closed with 1008 too",
  async fn() {
    await using server = await startServer();
    await using flooder = await user(server, "junk");
    for (let i = 0; i < 2000; i++) flooder.send(i % 2 ? "{not json" : new Uint8Array([1, 2, 3]));
    const closed = await flooder.closed;
    assert.equal(closed.code, 1008);
    assert.ok(flooder.frames.some((f) => f.code === "rate_limited" && f.retryAfterMs > 0));
  },
});
