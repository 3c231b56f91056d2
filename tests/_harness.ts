/**
 * Test harness: real servers on port 0 (in this process, or `deno serve --parallel` as a child
 * process) and real WebSocket clients that queue the frames they receive.
 *
 * @module
 */
import type { Config } from "../chat/config.ts";
import { defaultConfig } from "../chat/config.ts";
import type { Bus } from "../chat/bus.ts";
import type { ChatNode } from "../chat/node.ts";
import { createNode } from "../chat/node.ts";
import type { ServerFrame } from "../chat/protocol.ts";
import { createApp } from "../routes/app.ts";
import type { AppOptions } from "../routes/app.ts";
import { preferVectoredWrites } from "../routes/ws.ts";

/** A server running in this process. */
export interface TestServer {
  url: string;
  ws: string;
  node: ChatNode;
  kv: Deno.Kv;
  [Symbol.asyncDispose](): Promise<void>;
  close(): Promise<void>;
}

/** Options of {@linkcode startServer}. */
export interface StartOptions {
  config?: Partial<Config>;
  /** A KV file path (default: a fresh temp file). */
  kvPath?: string;
  buses?: Bus[];
  app?: AppOptions;
}

/** A fresh temporary KV file path. */
export async function tempKvPath(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "chat-test-" });
  return `${dir}/chat.kv`;
}

/** Starts a node and its app on port 0. */
export async function startServer(options: StartOptions = {}): Promise<TestServer> {
  // As main.ts does: the frames of every test go out as in production.
  preferVectoredWrites(Deno.env);
  const kv = await Deno.openKv(options.kvPath ?? await tempKvPath());
  const config = defaultConfig({
    CHAT_BUS: ["none"],
    CHAT_LOG_LEVEL: "silent",
    CHAT_SIGNIN_PER_MINUTE: 10_000,
    ...options.config,
  });
  const node = await createNode({ kv, config, buses: options.buses });
  const app = createApp(node, options.app);
  const ac = new AbortController();
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", signal: ac.signal, onListen() {} },
    (req, info) => app.fetch(req, info),
  );
  const url = `http://127.0.0.1:${server.addr.port}`;
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await node.shutdown();
    ac.abort();
    await server.finished;
    kv.close();
  };
  return { url, ws: url.replace("http", "ws"), node, kv, close, [Symbol.asyncDispose]: close };
}

/** A connected client that knows its user id and token. */
export type SignedClient = TestClient & { id: string; token: string };

/** Signs in a fresh guest named after `prefix` and connects it. */
export async function connectUser(server: TestServer, prefix: string): Promise<SignedClient> {
  const signed = await signIn(server.url, uniqueName(prefix));
  const client = await TestClient.connect(server, signed.token) as SignedClient;
  client.id = signed.user.id;
  client.token = signed.token;
  return client;
}

let pings = 0;

/** Resolves once every frame sent before it is answered: a ping round trip. */
export async function settle(client: TestClient, timeoutMs = 5000): Promise<void> {
  const t = ++pings;
  client.send({ type: "ping", t });
  await client.next("pong", (f) => f.t === t, timeoutMs);
}

/** Signs in a guest; returns the user and token. */
export async function signIn(
  url: string,
  name: string,
  password?: string,
): Promise<{ user: { id: string; name: string }; token: string }> {
  const res = await fetch(`${url}/api/session`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(password ? { name, password } : { name }),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(`Sign-in of ${name} failed: ${res.status} ${JSON.stringify(body)}`);
  return body;
}

let nameCounter = 0;
/** A unique user name for a test. */
export function uniqueName(prefix = "user"): string {
  return `${prefix}${Date.now() % 100000}${++nameCounter}`;
}

/** A frame as received (a server frame, loosely typed for tests). */
// deno-lint-ignore no-explicit-any
export type Frame = ServerFrame & Record<string, any>;

/** A WebSocket client that queues frames and waits for the ones a test expects. */
export class TestClient {
  readonly socket: WebSocket;
  readonly frames: Frame[] = [];
  /** Every WebSocket frame as it came (a batch frame once, before it is unpacked). */
  readonly received: string[] = [];
  readonly opened: Promise<void>;
  readonly closed: Promise<CloseEvent>;
  #waiters: { match: (f: Frame) => boolean; resolve: (f: Frame) => void }[] = [];
  #cursor = 0;
  welcome!: Frame;

  constructor(url: string, init?: { token?: string; headers?: Record<string, string> }) {
    const headers: Record<string, string> = { ...init?.headers };
    if (init?.token) headers.authorization = `Bearer ${init.token}`;
    this.socket = new WebSocket(url, { headers });
    this.opened = new Promise((resolve, reject) => {
      this.socket.onopen = () => resolve();
      this.socket.onerror = (e) => reject(new Error(`Socket error: ${(e as ErrorEvent).message}`));
    });
    this.closed = new Promise((resolve) => this.socket.onclose = (e) => resolve(e));
    this.socket.onmessage = (event) => {
      this.received.push(event.data);
      const frame = JSON.parse(event.data) as Frame;
      for (const f of frame.type === "batch" ? frame.frames as Frame[] : [frame]) {
        this.frames.push(f);
        const i = this.#waiters.findIndex((w) => w.match(f));
        if (i >= 0) this.#waiters.splice(i, 1)[0].resolve(f);
      }
    };
    this.opened.catch(() => {});
  }

  /**
   * Connects, waits for the welcome and resumes (`since`, default nothing). Asks for batch
   * frames (`?batch=1`, as the web client does) unless `batch` is false; either way `frames`
   * holds single frames.
   */
  static async connect(
    server: { ws: string },
    token: string,
    since: Record<string, number> = {},
    batch = true,
  ): Promise<TestClient> {
    const client = new TestClient(`${server.ws}/ws${batch ? "?batch=1" : ""}`, { token });
    await client.opened;
    client.welcome = await client.next("welcome");
    client.send({ type: "resume", since });
    for (const _ of Object.keys(since)) await client.next("resumed");
    return client;
  }

  /** Sends a frame (an object is JSON-encoded). */
  send(frame: unknown): void {
    this.socket.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  /**
   * The next frame of `type` matching `match`; waits up to `timeoutMs`. Frames skipped over
   * stay in `frames` for later inspection.
   */
  next(
    type: string,
    match: (f: Frame) => boolean = () => true,
    timeoutMs = 5000,
  ): Promise<Frame> {
    return this.wait((f) => f.type === type && match(f), timeoutMs, type).promise;
  }

  /** Waits for the first frame passing `test`; `cancel` stops waiting (and its timer). */
  wait(
    test: (f: Frame) => boolean,
    timeoutMs = 5000,
    what = "matching",
  ): { promise: Promise<Frame>; cancel: () => void } {
    for (let i = this.#cursor; i < this.frames.length; i++) {
      if (test(this.frames[i])) {
        const f = this.frames[i];
        this.frames.splice(i, 1);
        return { promise: Promise.resolve(f), cancel: () => {} };
      }
    }
    let cancel = () => {};
    const promise = new Promise<Frame>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(
          new Error(
            `Timed out waiting for a ${what} frame; got: ${
              JSON.stringify(this.frames.slice(-8)).slice(0, 1500)
            }`,
          ),
        );
      }, timeoutMs);
      const waiter = {
        match: test,
        resolve: (f: Frame) => {
          clearTimeout(timer);
          this.frames.splice(this.frames.indexOf(f), 1);
          resolve(f);
        },
      };
      cancel = () => {
        clearTimeout(timer);
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
      };
      this.#waiters.push(waiter);
    });
    return { promise, cancel };
  }

  /** Sends a frame and waits for the frame of `type` that answers it. */
  async request(frame: Record<string, unknown>, type: string): Promise<Frame> {
    const answer = this.next(type);
    this.send(frame);
    return await answer;
  }

  /** Sends a message and waits for its ack (or throws with the error frame). */
  async post(conv: string | { to: string }, text: string, id: string = crypto.randomUUID()) {
    const target = typeof conv === "string" ? { conv } : conv;
    const ack = this.wait((f) => f.type === "ack" && f.id === id, 10_000, "ack");
    const error = this.wait((f) => f.type === "error" && f.id === id, 10_000, "error");
    this.send({ type: "send", id, ...target, text });
    try {
      return await Promise.race([
        ack.promise,
        error.promise.then((f) => {
          throw new Error(`Send failed: ${f.code} ${f.message}`);
        }),
      ]);
    } finally {
      ack.cancel();
      error.cancel();
      ack.promise.catch(() => {});
      error.promise.catch(() => {});
    }
  }

  /** Closes the socket and waits until it is closed. */
  async close(): Promise<void> {
    if (this.socket.readyState !== WebSocket.CLOSED) this.socket.close();
    await this.closed;
    for (const w of this.#waiters) void w;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Resolves once `check` returns true, polling; throws after `timeoutMs`. */
export async function until(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
  what = "condition",
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A free TCP port on 127.0.0.1. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** A `deno serve` child process. */
export interface ServeProcess {
  url: string;
  ws: string;
  port: number;
  process: Deno.ChildProcess;
  output: () => string;
  /** Sends a signal and waits for exit; returns the exit code. */
  stop(signal?: Deno.Signal): Promise<number>;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Starts `deno serve` on `main.ts` (with `--parallel` workers when `workers` > 1) and waits
 * until it answers `/healthz`.
 */
export async function startServe(options: {
  env: Record<string, string>;
  workers?: number;
  port?: number;
}): Promise<ServeProcess> {
  const port = options.port ?? freePort();
  const args = ["serve", "-A", "--port", String(port), "--host", "127.0.0.1"];
  if ((options.workers ?? 1) > 1) args.push("--parallel");
  args.push(new URL("../main.ts", import.meta.url).pathname);
  const process = new Deno.Command(Deno.execPath(), {
    args,
    env: {
      CHAT_LOG_LEVEL: "warn",
      CHAT_SIGNIN_PER_MINUTE: "10000",
      DENO_JOBS: String(options.workers ?? 1),
      ...options.env,
    },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const decoder = new TextDecoder();
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) text += decoder.decode(chunk);
  };
  const pumps = Promise.all([pump(process.stdout), pump(process.stderr)]);
  const url = `http://127.0.0.1:${port}`;
  let exited = false;
  const status = process.status.then((s) => {
    exited = true;
    return s;
  });
  await until(
    async () => {
      if (exited) throw new Error(`deno serve exited early:\n${text}`);
      try {
        const res = await fetch(`${url}/healthz`);
        await res.body?.cancel();
        return res.ok;
      } catch {
        return false;
      }
    },
    30_000,
    "deno serve to answer /healthz",
  );
  const stop = async (signal: Deno.Signal = "SIGTERM") => {
    if (!exited) {
      try {
        process.kill(signal);
      } catch {
        // Already gone.
      }
    }
    const s = await status;
    await pumps;
    return s.code;
  };
  return {
    url,
    ws: url.replace("http", "ws"),
    port,
    process,
    output: () => text,
    stop,
    [Symbol.asyncDispose]: async () => {
      await stop("SIGKILL");
    },
  };
}
