/**
 * Two separate `deno serve` processes on different ports, sharing a real `redis-server` (the
 * bus, `CHAT_BUS=redis`) and one KV file (the log of record). Clients on process A reach
 * clients on process B by DM and group, presence crosses, and Redis is killed and started again
 * mid-run without losing a message or stopping either process from serving.
 *
 * Each test starts its own `redis-server` on a free port and fails, not skips, when it is not
 * installed: `apt-get install -y redis-server`.
 */
import assert from "node:assert/strict";
import type { Frame, ServeProcess } from "./_harness.ts";
import { RedisServer } from "./_redis.ts";
import {
  freePort,
  signIn,
  startServe,
  tempKvPath,
  TestClient,
  uniqueName,
  until,
} from "./_harness.ts";

const METRICS_TOKEN = "test-metrics-token-0123456789";

/** Rate limits out of the way. */
const FAST = {
  CHAT_RATE_BURST: "2000",
  CHAT_RATE_PER_SECOND: "2000",
  CHAT_USER_RATE_BURST: "2000",
  CHAT_USER_RATE_PER_SECOND: "2000",
};

/**
 * A TCP proxy in front of Redis for one process only: `cut()` drops its connections and refuses
 * new ones (that process alone loses Redis), `restore()` listens again on the same port.
 */
class RedisLink {
  readonly port = freePort();
  readonly #target: number;
  #listener: Deno.Listener | null = null;
  #accepting: Promise<void> | null = null;
  readonly #conns = new Set<Deno.Conn>();
  readonly #pipes = new Set<Promise<unknown>>();

  constructor(target: number) {
    this.#target = target;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  restore(): void {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: this.port });
    this.#listener = listener;
    this.#accepting = (async () => {
      for await (const conn of listener) {
        let upstream: Deno.Conn;
        try {
          upstream = await Deno.connect({ hostname: "127.0.0.1", port: this.#target });
        } catch {
          conn.close();
          continue;
        }
        this.#conns.add(conn);
        this.#conns.add(upstream);
        const pipe = Promise.allSettled([
          conn.readable.pipeTo(upstream.writable),
          upstream.readable.pipeTo(conn.writable),
        ]).finally(() => {
          for (const c of [conn, upstream]) {
            this.#conns.delete(c);
            try {
              c.close();
            } catch {
              // Closed by the pipe already.
            }
          }
          this.#pipes.delete(pipe);
        });
        this.#pipes.add(pipe);
      }
    })().catch(() => {});
  }

  async cut(): Promise<void> {
    this.#listener?.close();
    this.#listener = null;
    await this.#accepting;
    for (const conn of this.#conns) {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
    await Promise.allSettled([...this.#pipes]);
  }
}

/** The sum of a metric's samples (all label sets) in a process's `/metrics`. */
async function metric(server: { url: string }, name: string): Promise<number> {
  const res = await fetch(`${server.url}/metrics`, {
    headers: { authorization: `Bearer ${METRICS_TOKEN}` },
  });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  let sum = 0;
  for (const line of text.split("\n")) {
    const match = line.match(/^([a-z_]+)(\{[^}]*\})? (\S+)$/);
    if (match && match[1] === name) sum += Number(match[3]);
  }
  return sum;
}

/** `/healthz` of a process: status and body. */
async function health(server: { url: string }): Promise<{ status: number; body: Frame }> {
  const res = await fetch(`${server.url}/healthz`);
  return { status: res.status, body: await res.json() };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Message frames of `conv` a client has received and not taken with `next()`. */
function received(client: TestClient, conv: string): Frame[] {
  return client.frames.filter((f) => f.type === "message" && f.conv === conv);
}

interface Cluster {
  redis: RedisServer;
  /** A's own way to Redis, with `proxyA`. */
  link?: RedisLink;
  a: ServeProcess;
  b: ServeProcess;
  ann: { user: { id: string; name: string }; token: string };
  bob: { user: { id: string; name: string }; token: string };
  ca: TestClient;
  cb: TestClient;
  dm: string;
  group: string;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Redis, two processes A and B on one KV file, ann on A and bob on B with a DM and a group
 * between them, each message seen on the other side.
 */
async function cluster(options: { proxyA?: boolean } = {}): Promise<Cluster> {
  const redis = new RedisServer();
  await redis.start();
  const cleanup: (() => Promise<void>)[] = [() => redis.stop("SIGKILL")];
  const link = options.proxyA ? new RedisLink(redis.port) : undefined;
  if (link) {
    link.restore();
    cleanup.push(() => link.cut());
  }
  const dispose = async () => {
    for (const step of cleanup.reverse()) await step().catch(() => {});
  };
  try {
    const env = {
      CHAT_BUS: "redis",
      REDIS_URL: redis.url,
      CHAT_KV_PATH: await tempKvPath(),
      CHAT_METRICS_TOKEN: METRICS_TOKEN,
      ...FAST,
    };
    // One after the other: the first generates the session secret in KV, the second reads it.
    const a = await startServe({ env: link ? { ...env, REDIS_URL: link.url } : env });
    cleanup.push(() => a.stop("SIGKILL").then(() => {}));
    const b = await startServe({ env });
    cleanup.push(() => b.stop("SIGKILL").then(() => {}));
    assert.notEqual(a.port, b.port);

    const ann = await signIn(a.url, uniqueName("ann"));
    const bob = await signIn(b.url, uniqueName("bob"));
    const cb = await TestClient.connect(b, bob.token);
    cleanup.push(() => cb.close());
    const ca = await TestClient.connect(a, ann.token);
    cleanup.push(() => ca.close());
    assert.notEqual(ca.welcome.node, cb.welcome.node, "two processes, two nodes");

    // DM from A reaches B.
    const dm = (await ca.post({ to: bob.user.id }, "hello from A", "dm-0")).conv as string;
    const first = await cb.next("message", (f) => f.id === "dm-0", 10_000);
    assert.equal(first.text, "hello from A");
    assert.equal(first.conv, dm);

    // Group: created on A, joined on B, a message from A reaches B.
    const created = await ca.request({ type: "group.create", name: "Redis" }, "conversation");
    const group = created.conversation.id as string;
    cb.send({ type: "group.join", group: created.conversation.group.id });
    await cb.next("conversation", (f) => f.conversation.id === group, 10_000);
    await ca.next("message", (f) => f.conv === group && f.meta?.event === "joined", 10_000);
    await ca.post(group, "group hello from A", "g-0");
    assert.equal(
      (await cb.next("message", (f) => f.id === "g-0", 10_000)).text,
      "group hello from A",
    );
    return { redis, link, a, b, ann, bob, ca, cb, dm, group, [Symbol.asyncDispose]: dispose };
  } catch (error) {
    await dispose();
    throw error;
  }
}

/** Whether `client` lists `user` online (`presence.list`). */
async function seesOnline(client: TestClient, user: string): Promise<boolean> {
  const frame = await client.request({ type: "presence.list" }, "online");
  return frame.users.some((u: { id: string }) => u.id === user);
}

/**
 * Kills Redis, sends a DM and a group message through A and a group message through B while it
 * is down (all stored: acked), waits `downMs`, starts Redis again, and checks that each arrives on
 * the other process exactly once, with no new message to trigger a repair.
 */
async function outage(c: Cluster, tag: string, downMs: number): Promise<void> {
  const { redis, a, b, ca, cb, dm, group } = c;
  await redis.stop("SIGKILL");
  await until(
    async () => (await health(a)).status === 503 && (await health(b)).status === 503,
    10_000,
    "both processes to report the bus down",
  );
  const down = await health(a);
  assert.equal(down.body.kv, true, "KV still reachable");
  assert.equal(down.body.bus.healthy, false);

  // Messages are still stored (acked) while the bus is down, and B keeps serving.
  const dmAck = await ca.post(dm, `dm during ${tag}`, `dm-${tag}`);
  const groupAck = await ca.post(group, `group during ${tag}`, `g-${tag}`);
  assert.ok(dmAck.seq > 0 && groupAck.seq > 0);
  const carol = await signIn(b.url, uniqueName("carol"));
  assert.ok(carol.token, "B signs in users while Redis is down");
  const fromB = await cb.post(group, `from B during ${tag}`, `gb-${tag}`);
  await sleep(downMs);

  await redis.start();
  await until(
    async () => (await health(a)).status === 200 && (await health(b)).status === 200,
    15_000,
    "both processes healthy again",
  );
  // Nothing new is sent: B must repair from KV on its own.
  const gotDm = await cb.next("message", (f) => f.id === `dm-${tag}`, 15_000);
  const gotGroup = await cb.next("message", (f) => f.id === `g-${tag}`, 15_000);
  assert.equal(gotDm.seq, dmAck.seq);
  assert.equal(gotGroup.seq, groupAck.seq);
  // The other way too: B's message reaches A.
  assert.equal((await ca.next("message", (f) => f.id === `gb-${tag}`, 15_000)).seq, fromB.seq);

  // And the bus carries new messages again.
  await ca.post(dm, `dm after ${tag}`, `dm-after-${tag}`);
  await cb.next("message", (f) => f.id === `dm-after-${tag}`, 10_000);
  // Exactly once: no copy of a message is left over in B's queue.
  for (const conv of [dm, group]) {
    const seqs = received(cb, conv).map((f) => f.seq);
    assert.equal(new Set(seqs).size, seqs.length, `no duplicates in ${conv}: ${seqs}`);
  }
  assert.ok(
    !cb.frames.some((f) =>
      f.type === "message" && [`dm-${tag}`, `g-${tag}`, `dm-after-${tag}`].includes(f.id)
    ),
    "each message arrived once",
  );
}

Deno.test({
  name: "two processes on Redis and one KV file: DM, group, presence, metrics, Redis restart",
  async fn() {
    await using c = await cluster();
    const { a, b, ann, bob, ca, cb } = c;

    // Presence crosses both ways.
    await until(() => seesOnline(cb, ann.user.id), 10_000, "B to see ann (on A) online");
    await until(() => seesOnline(ca, bob.user.id), 10_000, "A to see bob (on B) online");

    // Health and metrics of both processes; counters moved with the traffic above.
    for (const p of [a, b]) {
      const { status, body } = await health(p);
      assert.equal(status, 200);
      assert.deepEqual([body.kv, body.bus], [true, { name: "redis", healthy: true }]);
    }
    assert.ok(await metric(a, "chat_messages_in_total") >= 2, "A stored the DM and group post");
    assert.ok(await metric(b, "chat_messages_out_total") >= 2, "B delivered them");
    assert.ok(await metric(b, "chat_bus_in_total") > 0, "B heard A on the bus");
    assert.equal(await metric(a, "chat_bus_healthy"), 1);
    assert.equal(await metric(a, "chat_bus_nodes"), 1, "A hears exactly one other node");

    // Redis restarts: no message lost, both processes keep serving.
    await outage(c, "short", 500);

    // Presence is whole again after the outage.
    await until(() => seesOnline(cb, ann.user.id), 10_000, "B to see ann online after");
    await until(() => seesOnline(ca, bob.user.id), 10_000, "A to see bob online after");

    // A reply from B reaches A over the restarted bus.
    await cb.post(c.dm, "reply from B", "dm-reply");
    await ca.next("message", (f) => f.id === "dm-reply", 10_000);
  },
});

Deno.test({
  name: "an outage longer than the 10 s heads window loses nothing",
  async fn() {
    await using c = await cluster();
    await outage(c, "long", 12_000);
  },
});

Deno.test({
  name: "only the sender loses Redis for longer than 10 s: nothing is lost",
  async fn() {
    await using c = await cluster({ proxyA: true });
    const { a, b, ca, cb, dm, group } = c;
    const link = c.link!;
    await link.cut();
    await until(async () => (await health(a)).status === 503, 10_000, "A to lose its bus");
    assert.equal((await health(b)).status, 200, "B still has Redis");
    const dmAck = await ca.post(dm, "dm while A is cut off", "dm-cut");
    const groupAck = await ca.post(group, "group while A is cut off", "g-cut");
    await sleep(12_000);
    link.restore();
    await until(async () => (await health(a)).status === 200, 15_000, "A to reconnect");
    assert.equal((await cb.next("message", (f) => f.id === "dm-cut", 15_000)).seq, dmAck.seq);
    assert.equal((await cb.next("message", (f) => f.id === "g-cut", 15_000)).seq, groupAck.seq);
  },
});

/** A server started by an arbitrary command line in the repository root. */
async function spawnServer(
  args: string[],
  env: Record<string, string>,
  port: number,
): Promise<{ url: string; ws: string; output: () => string; stop: () => Promise<number> }> {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: new URL("..", import.meta.url).pathname,
    env: { CHAT_SIGNIN_PER_MINUTE: "10000", ...env, PORT: String(port) },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const decoder = new TextDecoder();
  const pumps = Promise.all([child.stdout, child.stderr].map(async (stream) => {
    for await (const chunk of stream) text += decoder.decode(chunk);
  }));
  let exited = false;
  const status = child.status.finally(() => exited = true);
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (!exited) child.kill("SIGTERM");
    const { code } = await status;
    await pumps;
    return code;
  };
  try {
    await until(
      async () => {
        if (exited) throw new Error(`exited early:\n${text}`);
        try {
          const res = await fetch(`${url}/healthz`);
          await res.body?.cancel();
          return res.ok;
        } catch {
          return false;
        }
      },
      30_000,
      `${args.join(" ")} to answer /healthz`,
    );
  } catch (error) {
    if (!exited) child.kill("SIGKILL");
    await status;
    await pumps;
    throw error;
  }
  return { url, ws: url.replace("http", "ws"), output: () => text, stop };
}

/** Two clients on `server` exchange a DM; the JSON log shows no permission prompt or error. */
async function chatWorks(server: { url: string; ws: string }): Promise<void> {
  const ann = await signIn(server.url, uniqueName("ann"));
  const bob = await signIn(server.url, uniqueName("bob"));
  await using ca = await TestClient.connect(server, ann.token);
  await using cb = await TestClient.connect(server, bob.token);
  await ca.post({ to: bob.user.id }, "least privilege", "lp-1");
  await cb.next("message", (f) => f.id === "lp-1", 10_000);
  const page = await fetch(`${server.url}/`);
  assert.equal(page.status, 200, "static files are readable");
  await page.body?.cancel();
}

Deno.test("least privilege: the minimal flags serve with Redis, a KV file and OTEL", async () => {
  await using redis = new RedisServer();
  await redis.start();
  const dir = await Deno.makeTempDir({ prefix: "chat-perm-" });
  try {
    const port = freePort();
    const server = await spawnServer(
      [
        "serve",
        "--parallel",
        "--allow-net",
        "--allow-env",
        `--allow-read=static,${dir}`,
        `--allow-write=${dir}`,
        "--port",
        String(port),
        "main.ts",
      ],
      {
        CHAT_KV_PATH: `${dir}/chat.kv`,
        CHAT_BUS: "broadcast,kv,redis",
        REDIS_URL: redis.url,
        DENO_JOBS: "2",
        OTEL_DENO: "true",
        OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${freePort()}`,
      },
      port,
    );
    await chatWorks(server);
    assert.equal(await server.stop(), 0);
    assert.ok(
      !/NotCapable|PermissionDenied|Requires \S+ access/.test(server.output()),
      server.output(),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("least privilege: `deno task start` serves with Redis and a KV file", async () => {
  await using redis = new RedisServer();
  await redis.start();
  const dir = await Deno.makeTempDir({ prefix: "chat-task-" });
  try {
    const port = freePort();
    const server = await spawnServer(["task", "start"], {
      CHAT_KV_PATH: `${dir}/chat.kv`,
      CHAT_BUS: "broadcast,kv,redis",
      REDIS_URL: redis.url,
      DENO_JOBS: "2",
    }, port);
    await chatWorks(server);
    assert.equal(await server.stop(), 0);
    assert.ok(
      !/NotCapable|PermissionDenied|Requires \S+ access/.test(server.output()),
      server.output(),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
