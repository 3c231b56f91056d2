/**
 * The delivery checker: many clients across the workers of `deno serve --parallel`, a known set
 * of messages (lobby, groups, direct messages, bursts far over BroadcastChannel's 256), faults
 * (SIGKILL and restart on the same port and KV file, random disconnects, one client that stops
 * reading), and a verdict read against the KV file: every client received exactly the messages
 * of its conversations, each once, in sequence order, with the stored content.
 *
 * Clients behave as the protocol asks of a real one: they keep the last sequence seen per
 * conversation, send it in `resume` after every (re)connect, fill a `resumed` with `reload:
 * true` from `history` pages, and resend unacknowledged messages with the same id until acked.
 *
 * @module
 */
import { messagePrefix } from "../chat/keys.ts";
import type { ChatMessage } from "../chat/protocol.ts";
import type { Frame, ServeProcess } from "./_harness.ts";
import { freePort, signIn, startServe, tempKvPath, TestClient } from "./_harness.ts";

/** What to run. */
export interface CheckerOptions {
  /** `CHAT_BUS`: `broadcast`, `kv` or `broadcast,kv`. */
  bus: string;
  /** `deno serve --parallel` workers (`DENO_JOBS`). */
  workers?: number;
  users?: number;
  /** Users with a second connection. */
  doubleConnected?: number;
  groups?: number;
  groupSize?: number;
  /** Messages each connection sends, spread over the lobby, its groups and its DMs. */
  perClient?: number;
  /** Connections that send a burst to one conversation at once. */
  bursts?: { target: "lobby" | "group"; count: number }[];
  /** Stop (SIGKILL by default) and restart the server this many times while messages flow. */
  kills?: number;
  /** The signal that stops the server for a restart: SIGKILL (a crash) or a graceful one. */
  restartSignal?: Deno.Signal;
  /** Disconnect this many random clients while messages flow. */
  disconnects?: number;
  /** One client stops reading while `messages` of `bytes` go to its group. */
  stall?: { messages: number; bytes: number };
  resumeLimit?: number;
  maxBufferedBytes?: number;
  seed?: number;
  /** Give up waiting for delivery after this long (the verdict then shows what is lost). */
  timeoutMs?: number;
  log?: (line: string) => void;
}

/** The outcome of a run. */
export interface Verdict {
  bus: string;
  workers: number;
  seed: number;
  clients: number;
  /** Distinct worker nodes the first connections landed on. */
  firstNodes: number;
  messagesSent: number;
  deliveriesExpected: number;
  deliveriesReceived: number;
  lost: number;
  duplicated: number;
  reordered: number;
  /** Received frames whose content differs from KV, or not in KV at all. */
  mismatched: number;
  /** Planned messages not stored exactly once, or acked with a seq holding another message. */
  storeErrors: number;
  /** Conversations whose stored sequence has holes. */
  logGaps: number;
  faults: {
    kills: number;
    disconnects: number;
    stalled: number;
    /** Connections opened again after a close. */
    reconnects: number;
    /** Connection attempts refused while the server was down. */
    refused: number;
    resends: number;
    reloads: number;
  };
  /** Close codes seen by clients, with counts. */
  closeCodes: Record<string, number>;
  /** For the stalled client: the close code it read, and whether the others got 1013. */
  stall?: {
    closeCode: number | null;
    framesBeforeClose: number;
    othersSlowClosed: number;
    /** Ms from the last ack until every other client had everything. */
    othersCaughtUpMs: number;
  };
  /** Per kill: ms from the restarted server answering until every client had all messages. */
  catchUpMs: number[];
  /** Per restart: the signal, ms from the signal until the process exited, and its exit code. */
  restarts: { signal: string; exitMs: number; code: number }[];
  sendPhaseMs: number;
  durationMs: number;
  /** The first few problems, to read when a count is not zero. */
  problems: string[];
}

interface Planned {
  id: string;
  conv?: string;
  to?: string;
  text: string;
}

interface Hole {
  conv: string;
  from: number;
  to: number;
}

interface Seen {
  id: string;
  from: string;
  text: string;
}

/** A small seeded random generator (mulberry32), so a failing run can be replayed. */
export function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A checking client: reconnects, resumes, reloads, resends; records everything it receives. */
export class CheckerClient {
  readonly label: string;
  readonly user: { id: string; name: string };
  readonly token: string;
  /** Conversations this connection must receive (from the plan). */
  readonly convs = new Set<string>();
  readonly lastSeen = new Map<string, number>();
  /** Sequences before the client's first welcome that it is not expected to receive. */
  readonly baseline = new Map<string, number>();
  /** Sequences of `message` frames per conversation, in arrival order. */
  readonly frames = new Map<string, number[]>();
  readonly contents = new Map<string, Map<number, Seen>>();
  /** Sequences filled from history after a `reload`. */
  readonly reloaded = new Map<string, Set<number>>();
  readonly acks = new Map<string, { conv: string; seq: number }>();
  readonly closes = new Map<number, number>();
  readonly nodes: string[] = [];
  readonly problems: string[] = [];
  queue: Planned[] = [];
  window = 32;
  resends = 0;
  reloads = 0;
  connects = 0;
  /** Connection attempts that never opened (the server was down or restarting). */
  refused = 0;
  #url: string;
  #ws: WebSocket | null = null;
  #ready = false;
  #stopped = false;
  #inflight = new Map<string, Planned>();
  #holes: Hole[] = [];
  #historyFor: Hole | null = null;
  #timers = new Set<ReturnType<typeof setTimeout>>();
  #closed: Promise<void> = Promise.resolve();
  #baselineFromWelcome = false;
  #awaitingResumed = 0;

  constructor(label: string, user: { id: string; name: string }, token: string, url: string) {
    this.label = label;
    this.user = user;
    this.token = token;
    this.#url = url;
  }

  /** Points later reconnects at another server (after a restart on a new port). */
  set url(url: string) {
    this.#url = url;
  }

  /** Unacknowledged messages, queued or sent. */
  get unacked(): number {
    return this.queue.length + this.#inflight.size;
  }

  get connected(): boolean {
    return this.#ready;
  }

  /** Whether the current connection has answered every conversation of its resume. */
  get resumed(): boolean {
    return this.#ready && this.#awaitingResumed === 0;
  }

  /** Whether every planned conversation is received up to `heads` and nothing is left to reload. */
  caughtUp(heads: Map<string, number>): boolean {
    if (this.#holes.length) return false;
    for (const conv of this.convs) {
      if ((this.lastSeen.get(conv) ?? 0) < (heads.get(conv) ?? 0)) return false;
    }
    return true;
  }

  /** Opens a socket (and keeps reopening it until {@linkcode stop}). */
  connect(): void {
    if (this.#stopped || this.#ws) return;
    this.connects++;
    let ws: WebSocket;
    try {
      ws = new WebSocket(`${this.#url}/ws`, { headers: { authorization: `Bearer ${this.token}` } });
    } catch {
      this.#later(() => this.connect(), 100);
      return;
    }
    this.#ws = ws;
    let done!: () => void;
    this.#closed = new Promise((r) => done = r);
    let opened = false;
    ws.onopen = () => opened = true;
    ws.onmessage = (event) => this.#handle(JSON.parse(event.data) as Frame);
    ws.onerror = () => {};
    ws.onclose = (event) => {
      if (!opened) this.refused++;
      else if (!this.#stopped) this.closes.set(event.code, (this.closes.get(event.code) ?? 0) + 1);
      this.#ready = false;
      this.#ws = null;
      this.#historyFor = null;
      done();
      if (!this.#stopped) this.#later(() => this.connect(), 50 + Math.random() * 150);
    };
  }

  /** Forgets the reconnects and closes so far (those of the setup). */
  resetCounters(): void {
    this.connects = this.#ws ? 1 : 0;
    this.refused = 0;
    this.closes.clear();
  }

  /** Starts sending what is queued (once connected). */
  start(): void {
    this.connect();
    this.#pump();
  }

  /** Closes the socket from the client side; it reconnects by itself. */
  disconnect(): void {
    if (this.#ws && this.#ws.readyState === WebSocket.OPEN) this.#ws.close(4000, "checker");
  }

  /** Takes frames read from a stalled raw socket, as if they had come on a connection. */
  replay(frames: Frame[]): void {
    this.#baselineFromWelcome = true;
    for (const f of frames) this.#handle(f, true);
    this.#baselineFromWelcome = false;
  }

  /** Stops reconnecting and closes. */
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    if (this.#ws && this.#ws.readyState <= WebSocket.OPEN) this.#ws.close();
    await this.#closed;
  }

  #later(fn: () => void, ms: number): void {
    const t = setTimeout(() => {
      this.#timers.delete(t);
      fn();
    }, ms);
    this.#timers.add(t);
  }

  #send(frame: Record<string, unknown>): void {
    if (this.#ws?.readyState === WebSocket.OPEN) this.#ws.send(JSON.stringify(frame));
  }

  #handle(f: Frame, replaying = false): void {
    switch (f.type) {
      case "welcome": {
        this.nodes.push(f.node);
        for (const c of f.conversations) {
          if (!this.lastSeen.has(c.id)) {
            const base = this.#baselineFromWelcome ? c.lastSeq : 0;
            this.lastSeen.set(c.id, base);
            if (!this.baseline.has(c.id)) this.baseline.set(c.id, base);
          }
        }
        if (replaying) return;
        const since: Record<string, number> = {};
        for (const c of f.conversations) since[c.id] = this.lastSeen.get(c.id) ?? 0;
        this.#send({ type: "resume", since });
        this.#awaitingResumed = f.conversations.length;
        this.#ready = true;
        for (const p of this.#inflight.values()) {
          this.resends++;
          this.#send({ type: "send", ...p });
        }
        this.#pump();
        this.#pumpHistory();
        return;
      }
      case "message": {
        const conv: string = f.conv;
        let list = this.frames.get(conv);
        if (!list) this.frames.set(conv, list = []);
        list.push(f.seq);
        let contents = this.contents.get(conv);
        if (!contents) this.contents.set(conv, contents = new Map());
        if (!contents.has(f.seq)) contents.set(f.seq, { id: f.id, from: f.from, text: f.text });
        if (!this.baseline.has(conv)) this.baseline.set(conv, 0);
        if (f.seq > (this.lastSeen.get(conv) ?? 0)) this.lastSeen.set(conv, f.seq);
        return;
      }
      case "resumed": {
        if (this.#awaitingResumed > 0) this.#awaitingResumed--;
        if (!this.baseline.has(f.conv)) this.baseline.set(f.conv, 0);
        if (f.reload) {
          this.reloads++;
          if (f.to > f.from) this.#holes.push({ conv: f.conv, from: f.from, to: f.to });
          this.#pumpHistory();
        }
        if (f.to > (this.lastSeen.get(f.conv) ?? 0)) this.lastSeen.set(f.conv, f.to);
        return;
      }
      case "history": {
        const hole = this.#historyFor;
        this.#historyFor = null;
        if (!hole || hole.conv !== f.conv) return;
        let set = this.reloaded.get(hole.conv);
        if (!set) this.reloaded.set(hole.conv, set = new Set());
        let contents = this.contents.get(hole.conv);
        if (!contents) this.contents.set(hole.conv, contents = new Map());
        const messages = f.messages as ChatMessage[];
        for (const m of messages) {
          if (m.seq > hole.from && m.seq <= hole.to) {
            set.add(m.seq);
            if (!contents.has(m.seq)) contents.set(m.seq, { id: m.id, from: m.from, text: m.text });
          }
        }
        const lowest = messages.length ? messages[0].seq : 0;
        if (!messages.length || !f.more || lowest <= hole.from + 1) this.#holes.shift();
        else hole.to = lowest - 1;
        this.#pumpHistory();
        return;
      }
      case "ack": {
        const p = this.#inflight.get(f.id);
        const before = this.acks.get(f.id);
        if (before && (before.conv !== f.conv || before.seq !== f.seq)) {
          this.problems.push(
            `${this.label}: ${f.id} acked as ${f.conv}#${f.seq} and #${before.seq}`,
          );
        }
        if (!before) this.acks.set(f.id, { conv: f.conv, seq: f.seq });
        if (p) {
          this.#inflight.delete(f.id);
          this.#pump();
        }
        return;
      }
      case "reconnect": {
        // The server is about to close this socket: stop sending until the next connection
        // (unacknowledged messages are sent again there).
        this.#ready = false;
        this.#historyFor = null;
        const ws = this.#ws;
        this.#later(() => {
          if (this.#ws === ws && ws?.readyState === WebSocket.OPEN) ws.close(4001, "no close");
        }, 3000);
        return;
      }
      case "error": {
        if (f.ref === "history") {
          this.#historyFor = null;
          this.#later(() => this.#pumpHistory(), 100);
        } else if (f.id && this.#inflight.has(f.id)) {
          // Refused while the server drains, or rate limited: send again shortly.
          const p = this.#inflight.get(f.id)!;
          this.#later(() => {
            if (this.#inflight.has(p.id) && this.#ready) {
              this.resends++;
              this.#send({ type: "send", ...p });
            }
          }, f.retryAfterMs ?? 100);
        } else if (f.code !== "rate_limited") {
          this.problems.push(`${this.label}: error ${f.code} ${f.message}`);
        }
        return;
      }
    }
  }

  #pump(): void {
    while (this.#ready && this.#inflight.size < this.window && this.queue.length) {
      const p = this.queue.shift()!;
      this.#inflight.set(p.id, p);
      this.#send({ type: "send", ...p });
    }
  }

  #pumpHistory(): void {
    if (!this.#ready || this.#historyFor || !this.#holes.length) return;
    const hole = this.#holes[0];
    this.#historyFor = hole;
    this.#send({ type: "history", conv: hole.conv, before: hole.to + 1, limit: 200 });
  }
}

/** A WebSocket client over a raw TCP socket that can stop reading, to make a slow consumer. */
export class RawSocket {
  readonly #conn: Deno.TcpConn;
  #buffer = new Uint8Array(0);

  private constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
  }

  /** Connects and sends the upgrade request; reads nothing. */
  static async open(port: number, token: string): Promise<RawSocket> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
    const request = [
      "GET /ws HTTP/1.1",
      `Host: 127.0.0.1:${port}`,
      "Upgrade: websocket",
      "Connection: Upgrade",
      `Sec-WebSocket-Key: ${key}`,
      "Sec-WebSocket-Version: 13",
      `Authorization: Bearer ${token}`,
      "",
      "",
    ].join("\r\n");
    await writeAll(conn, new TextEncoder().encode(request));
    return new RawSocket(conn);
  }

  /** Sends a masked text frame. */
  async send(text: string): Promise<void> {
    const payload = new TextEncoder().encode(text);
    const header = payload.length < 126 ? [0x81, 0x80 | payload.length] : [
      0x81,
      0x80 | 126,
      payload.length >> 8,
      payload.length & 0xff,
    ];
    const mask = crypto.getRandomValues(new Uint8Array(4));
    const frame = new Uint8Array(header.length + 4 + payload.length);
    frame.set(header);
    frame.set(mask, header.length);
    for (let i = 0; i < payload.length; i++) {
      frame[header.length + 4 + i] = payload[i] ^ mask[i & 3];
    }
    await writeAll(this.#conn, frame);
  }

  /**
   * Reads everything the server queued: the text frames, up to its close frame (or the end of
   * the stream). Closes the socket.
   */
  async drain(timeoutMs: number): Promise<{ frames: Frame[]; closeCode: number | null }> {
    const frames: Frame[] = [];
    let closeCode: number | null = null;
    let headerDone = false;
    const chunk = new Uint8Array(1 << 16);
    const end = Date.now() + timeoutMs;
    const timer = setTimeout(() => this.#conn.close(), timeoutMs);
    try {
      outer: while (Date.now() < end) {
        const n = await this.#conn.read(chunk);
        if (n === null) break;
        this.#append(chunk.subarray(0, n));
        if (!headerDone) {
          const text = new TextDecoder().decode(this.#buffer.subarray(0, 2048));
          const i = text.indexOf("\r\n\r\n");
          if (i < 0) continue;
          if (!text.startsWith("HTTP/1.1 101")) throw new Error(`Upgrade refused: ${text}`);
          headerDone = true;
          this.#buffer = this.#buffer.slice(new TextEncoder().encode(text.slice(0, i + 4)).length);
        }
        for (;;) {
          const frame = this.#frame();
          if (!frame) break;
          if (frame.op === 8) {
            closeCode = frame.payload.length >= 2
              ? (frame.payload[0] << 8) | frame.payload[1]
              : 1005;
            break outer;
          }
          if (frame.op === 1) frames.push(JSON.parse(new TextDecoder().decode(frame.payload)));
        }
      }
    } catch (error) {
      // Closed by the timer.
      if (!(error instanceof Deno.errors.BadResource || error instanceof Deno.errors.Interrupted)) {
        throw error;
      }
    } finally {
      clearTimeout(timer);
      try {
        this.#conn.close();
      } catch {
        // Closed by the timer.
      }
    }
    return { frames, closeCode };
  }

  /** Closes without reading. */
  close(): void {
    try {
      this.#conn.close();
    } catch {
      // Already closed.
    }
  }

  #append(bytes: Uint8Array): void {
    const next = new Uint8Array(this.#buffer.length + bytes.length);
    next.set(this.#buffer);
    next.set(bytes, this.#buffer.length);
    this.#buffer = next;
  }

  #frame(): { op: number; payload: Uint8Array } | null {
    const b = this.#buffer;
    if (b.length < 2) return null;
    let length = b[1] & 127;
    let offset = 2;
    if (length === 126) {
      if (b.length < 4) return null;
      length = (b[2] << 8) | b[3];
      offset = 4;
    } else if (length === 127) {
      if (b.length < 10) return null;
      length = Number(new DataView(b.buffer, b.byteOffset + 2, 8).getBigUint64(0));
      offset = 10;
    }
    if (b.length < offset + length) return null;
    const payload = b.slice(offset, offset + length);
    this.#buffer = b.slice(offset + length);
    return { op: b[0] & 15, payload };
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let i = 0; i < bytes.length;) i += await conn.write(bytes.subarray(i));
}

/** Reads every message of the given conversations from a KV file. */
export async function readLog(
  kvPath: string,
  convs: Iterable<string>,
): Promise<Map<string, ChatMessage[]>> {
  const kv = await Deno.openKv(kvPath);
  try {
    const result = new Map<string, ChatMessage[]>();
    for (const conv of convs) {
      const list: ChatMessage[] = [];
      for await (const e of kv.list<ChatMessage>({ prefix: messagePrefix(conv) })) {
        list.push(e.value);
      }
      result.set(conv, list);
    }
    return result;
  } finally {
    kv.close();
  }
}

/** Reads the head (newest sequence) of every conversation from a KV file. */
export async function readHeads(kvPath: string): Promise<Map<string, number>> {
  const kv = await Deno.openKv(kvPath);
  try {
    const heads = new Map<string, number>();
    for await (const e of kv.list<number>({ prefix: ["head"] })) {
      heads.set(e.key[1] as string, e.value);
    }
    return heads;
  } finally {
    kv.close();
  }
}

/** Waits until `n` distinct worker nodes have answered `/healthz` (one connection each). */
export async function waitForWorkers(port: number, n: number, timeoutMs: number): Promise<void> {
  const nodes = new Set<string>();
  const end = Date.now() + timeoutMs;
  while (nodes.size < n) {
    if (Date.now() > end) throw new Error(`Only ${nodes.size} of ${n} workers answered`);
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    try {
      await writeAll(
        conn,
        new TextEncoder().encode("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
      );
      let text = "";
      const buf = new Uint8Array(4096);
      for (;;) {
        const got = await conn.read(buf);
        if (got === null) break;
        text += new TextDecoder().decode(buf.subarray(0, got));
      }
      const node = /"node":"([^"]+)"/.exec(text)?.[1];
      if (node) nodes.add(node);
    } finally {
      conn.close();
    }
    if (nodes.size < n) await sleep(20);
  }
}

async function until(check: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) return false;
    await sleep(10);
  }
  return true;
}

/** Runs the checker: starts the server, plays the plan with its faults, returns the verdict. */
export async function runChecker(options: CheckerOptions): Promise<Verdict> {
  const started = Date.now();
  const log = options.log ?? (() => {});
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 31);
  const rand = random(seed);
  const pick = <T>(list: T[]): T => list[Math.floor(rand() * list.length)];
  const workers = options.workers ?? 2;
  const timeoutMs = options.timeoutMs ?? 45_000;
  const kvPath = await tempKvPath();
  const port = freePort();
  const env: Record<string, string> = {
    CHAT_KV_PATH: kvPath,
    CHAT_BUS: options.bus,
    CHAT_SECRET: "delivery-checker-secret-0123456789abcdef",
    CHAT_LOG_LEVEL: "error",
    CHAT_RATE_BURST: "100000",
    CHAT_RATE_PER_SECOND: "100000",
    CHAT_USER_RATE_BURST: "100000",
    CHAT_USER_RATE_PER_SECOND: "100000",
    CHAT_SIGNIN_PER_MINUTE: "100000",
    CHAT_GROUP_CREATES_PER_HOUR: "1000",
    CHAT_MAX_CONNECTIONS_PER_ADDRESS: "100000",
    CHAT_MAX_CONNECTIONS_PER_USER: "100",
    CHAT_RESUME_LIMIT: String(options.resumeLimit ?? 300),
    CHAT_MAX_BUFFERED_BYTES: String(options.maxBufferedBytes ?? 4 << 20),
  };
  let server: ServeProcess = await startServe({ env, workers, port });
  await waitForWorkers(port, workers, 20_000);
  const clients: CheckerClient[] = [];
  const problems: string[] = [];
  let raw: RawSocket | null = null;
  try {
    // ---- setup: users, groups, direct conversations -------------------------------------
    const nUsers = options.users ?? 12;
    const users = await Promise.all(
      Array.from({ length: nUsers }, (_, i) => signIn(server.url, `chk${seed % 10000}u${i}`)),
    );
    // Setup is not what is checked: a connection refused under load (CI runs test files in
    // parallel) is tried again.
    const connectSetup = async (token: string): Promise<TestClient> => {
      for (let attempt = 1;; attempt++) {
        try {
          return await TestClient.connect(server, token);
        } catch (error) {
          if (attempt >= 3) throw error;
          log(`setup connection failed (${(error as Error).message}), retrying`);
          await sleep(200);
        }
      }
    };
    const setup = await Promise.all(users.map((u) => connectSetup(u.token)));
    const groupConvs: { conv: string; members: number[] }[] = [];
    const nGroups = (options.groups ?? 3) + (options.stall ? 1 : 0);
    for (let g = 0; g < nGroups; g++) {
      // With a stall, the last group is the sender and the stalled user alone: its big
      // messages back up the stalled socket without burying the checker's other readers.
      const stallGroup = options.stall && g === nGroups - 1;
      const owner = stallGroup ? nUsers - 2 : g % nUsers;
      const created = await setup[owner].request(
        { type: "group.create", name: `Checker group ${g}`, public: true },
        "conversation",
      );
      const conv: string = created.conversation.id;
      const members = new Set([owner]);
      if (stallGroup) members.add(nUsers - 1);
      while (!stallGroup && members.size < Math.min(options.groupSize ?? 5, nUsers)) {
        members.add(Math.floor(rand() * nUsers));
      }
      for (const m of members) {
        if (m === owner) continue;
        const joined = setup[m].next("conversation", (f) => f.conversation.id === conv, 10_000);
        setup[m].send({ type: "group.join", group: created.conversation.group.id });
        await joined;
      }
      groupConvs.push({ conv, members: [...members] });
    }
    const dmPairs: [number, number][] = [];
    for (let i = 0; i + 1 < nUsers; i += 2) dmPairs.push([i, i + 1]);
    for (let i = 0; i < Math.floor(nUsers / 3); i++) {
      const a = Math.floor(rand() * nUsers);
      const b = (a + 1 + Math.floor(rand() * (nUsers - 1))) % nUsers;
      if (!dmPairs.some(([x, y]) => (x === a && y === b) || (x === b && y === a))) {
        dmPairs.push([a, b]);
      }
    }
    // The last pair is not opened beforehand: its first message creates it (`to`), and reaches
    // connections whose welcome did not list it.
    const dmConvs: { conv: string; pair: [number, number] }[] = [];
    for (const [k, [a, b]] of dmPairs.entries()) {
      const conv = [users[a].user.id, users[b].user.id].sort().join(":");
      dmConvs.push({ conv: `d:${conv}`, pair: [a, b] });
      if (k < dmPairs.length - 1) {
        const opened = setup[a].next("conversation", (f) => f.conversation.id === `d:${conv}`);
        setup[a].send({ type: "dm.open", user: users[b].user.id });
        await opened;
      }
    }
    await Promise.all(setup.map((c) => c.close()));

    // ---- checking clients ---------------------------------------------------------------
    const doubles = options.doubleConnected ?? 3;
    const owners: number[] = [];
    for (let i = 0; i < nUsers; i++) owners.push(i);
    for (let i = 0; i < Math.min(doubles, nUsers); i++) owners.push(i);
    const stallUser = options.stall ? nUsers - 1 : -1;
    const convsOf = (u: number): string[] => [
      "lobby",
      ...groupConvs.filter((g) => g.members.includes(u)).map((g) => g.conv),
      ...dmConvs.filter((d) => d.pair.includes(u)).map((d) => d.conv),
    ];
    owners.forEach((u, k) => {
      const client = new CheckerClient(
        `u${u}c${k}`,
        users[u].user,
        users[u].token,
        server.ws,
      );
      for (const conv of convsOf(u)) client.convs.add(conv);
      clients.push(client);
    });
    // The stalled client's first connection is a raw socket that never reads.
    const stalled = options.stall ? clients[stallUser] : null;
    if (stalled) {
      raw = await RawSocket.open(server.port, stalled.token);
      await raw.send(JSON.stringify({ type: "resume", since: {} }));
    }
    // One at a time: a worker busy at that instant would otherwise accept a whole burst.
    for (const c of clients) {
      if (c === stalled) continue;
      c.connect();
      if (!(await until(() => c.resumed, 10_000))) throw new Error(`${c.label} did not connect`);
    }
    const nodesNow = () => new Set(clients.filter((c) => c.connected).map((c) => c.nodes.at(-1)));
    for (let i = 0; i < 20 && nodesNow().size < Math.min(2, workers); i++) {
      // Still all on one worker: reconnect a few until another one takes some.
      for (const c of clients.slice(0, 4)) c.disconnect();
      await sleep(300);
      await until(() => clients.every((c) => c === stalled || c.resumed), 10_000);
    }
    const firstNodes = nodesNow().size;
    for (const c of clients) c.resetCounters();
    log(`${clients.length} clients on ${firstNodes} workers (seed ${seed})`);

    // ---- the plan -------------------------------------------------------------------------
    let planned = 0;
    const filler = (n: number) => "x".repeat(Math.max(0, n));
    clients.forEach((client, k) => {
      if (client === stalled) return;
      const u = owners[k];
      const mine = convsOf(u);
      const groups = mine.filter((c) => c.startsWith("g:"));
      const dms = dmConvs.filter((d) => d.pair.includes(u));
      for (let i = 0; i < (options.perClient ?? 30); i++) {
        const r = rand();
        const id = `${client.label}-${i}`;
        const text = `${id} ${filler(Math.floor(rand() * 80))}`;
        if (r < 0.35 || (!groups.length && !dms.length)) {
          client.queue.push({ id, conv: "lobby", text });
        } else if (r < 0.75 && groups.length) client.queue.push({ id, conv: pick(groups), text });
        else if (dms.length) {
          const d = pick(dms);
          const peer = d.pair[0] === u ? d.pair[1] : d.pair[0];
          client.queue.push({ id, to: users[peer].user.id, text });
        } else client.queue.push({ id, conv: "lobby", text });
        planned++;
      }
    });
    (options.bursts ?? []).forEach((burst, b) => {
      const sender = clients[(b * 5 + 1) % clients.length];
      if (sender === stalled) return;
      const u = owners[clients.indexOf(sender)];
      const group = groupConvs.find((g) =>
        g.members.includes(u) && g.members.includes(stallUser)
      ) ??
        groupConvs.find((g) => g.members.includes(u));
      const conv = burst.target === "group" && group ? group.conv : "lobby";
      sender.window = burst.count;
      for (let i = 0; i < burst.count; i++) {
        const id = `${sender.label}-b${b}-${i}`;
        sender.queue.push({ id, conv, text: `${id} burst` });
        planned++;
      }
    });
    if (options.stall && stalled) {
      // Big messages to the stalled user's own group, so its socket backs up. The sender has
      // one connection: its acks pace it, so its own socket never holds more than its window.
      const g = groupConvs[groupConvs.length - 1];
      const sender = clients[nUsers - 2];
      sender.window = 200;
      for (let i = 0; i < options.stall.messages; i++) {
        const id = `${sender.label}-s${i}`;
        sender.queue.push({ id, conv: g.conv, text: `${id} ${filler(options.stall.bytes)}` });
        planned++;
      }
    }
    // The never-opened DM starts with `to`: make sure it is in someone's queue first.
    const lastDm = dmConvs[dmConvs.length - 1];
    if (lastDm) {
      const [a, b] = lastDm.pair;
      const sender = clients.find((c, k) => owners[k] === a && c !== stalled) ??
        clients.find((c, k) => owners[k] === b && c !== stalled);
      if (sender) {
        const peer = owners[clients.indexOf(sender)] === a ? b : a;
        const id = `${sender.label}-first`;
        sender.queue.unshift({ id, to: users[peer].user.id, text: `${id} first` });
        planned++;
      }
    }
    log(`plan: ${planned} messages`);

    // ---- send, with faults ----------------------------------------------------------------
    const sendStart = Date.now();
    const sendEnd = sendStart + timeoutMs;
    for (const c of clients) if (c !== stalled) c.start();
    const total = planned;
    const acked = () => clients.reduce((n, c) => n + c.acks.size, 0);
    const kills = options.kills ?? 0;
    const disconnects = options.disconnects ?? 0;
    const killAt = Array.from({ length: kills }, (_, i) => (i + 1) / (kills + 1));
    const dropAt = Array.from({ length: disconnects }, (_, i) => (i + 0.5) / disconnects);
    let killed = 0;
    let dropped = 0;
    const catchUpMs: number[] = [];
    const restarts: Verdict["restarts"] = [];
    while (acked() < total && Date.now() < sendEnd) {
      const progress = acked() / total;
      if (killed < kills && progress >= killAt[killed]) {
        killed++;
        const signal = options.restartSignal ?? "SIGKILL";
        log(`${signal} at ${acked()}/${total} acked`);
        const signalled = Date.now();
        const code = await server.stop(signal);
        restarts.push({ signal, exitMs: Date.now() - signalled, code });
        const headsAtKill = await readHeads(kvPath);
        await sleep(200);
        server = await startServe({ env, workers, port });
        const restarted = Date.now();
        // Measured in the background: sending goes on meanwhile.
        void until(() => clients.every((c) => c === stalled || c.caughtUp(headsAtKill)), timeoutMs)
          .then((ok) => {
            if (ok) catchUpMs.push(Date.now() - restarted);
            else problems.push(`kill ${killed}: clients did not catch up`);
          });
        continue;
      }
      while (dropped < disconnects && progress >= dropAt[dropped]) {
        dropped++;
        const victim = pick(clients.filter((c) => c !== stalled));
        victim.disconnect();
      }
      await sleep(5);
    }
    // Acks can jump past the last drop points between two polls: make the planned drops anyway
    // (those clients then reconnect and must still get everything).
    while (dropped < disconnects) {
      dropped++;
      pick(clients.filter((c) => c !== stalled)).disconnect();
    }
    const sendPhaseMs = Date.now() - sendStart;
    log(`sent: ${acked()}/${total} acked in ${sendPhaseMs} ms`);
    if (acked() < total) problems.push(`only ${acked()} of ${total} messages acked`);

    // ---- wait until every client has everything -----------------------------------------
    let stall: Verdict["stall"];
    if (raw && stalled) {
      // Everyone else first: the stalled socket must not have held them up.
      const headsNow = await readHeads(kvPath);
      const since = Date.now();
      await until(() => clients.every((c) => c === stalled || c.caughtUp(headsNow)), 20_000);
      const othersCaughtUpMs = Date.now() - since;
      const drained = await raw.drain(15_000);
      raw = null;
      stalled.replay(drained.frames);
      stall = {
        closeCode: drained.closeCode,
        framesBeforeClose: drained.frames.length,
        othersSlowClosed: clients.filter((c) => c !== stalled && c.closes.has(1013)).length,
        othersCaughtUpMs,
      };
      log(`stalled client read ${drained.frames.length} frames, then close ${drained.closeCode}`);
      stalled.connect();
    }
    const heads = await readHeads(kvPath);
    const caughtUp = await until(
      () => clients.every((c) => c.caughtUp(heads)),
      Math.max(5000, sendEnd - Date.now()),
    );
    if (!caughtUp) problems.push("clients did not catch up with the log");
    await until(
      () => catchUpMs.length + problems.filter((p) => p.startsWith("kill")).length >= killed,
      5000,
    );
    await Promise.all(clients.map((c) => c.stop()));
    const code = await server.stop("SIGTERM");
    if (code !== 0) problems.push(`server exited with ${code}`);

    // ---- verdict ------------------------------------------------------------------------
    const allConvs = new Set([
      "lobby",
      ...groupConvs.map((g) => g.conv),
      ...dmConvs.map((d) => d.conv),
    ]);
    const stored = await readLog(kvPath, allConvs);
    const verdict: Verdict = {
      bus: options.bus,
      workers,
      seed,
      clients: clients.length,
      firstNodes,
      messagesSent: total,
      deliveriesExpected: 0,
      deliveriesReceived: 0,
      lost: 0,
      duplicated: 0,
      reordered: 0,
      mismatched: 0,
      storeErrors: 0,
      logGaps: 0,
      faults: {
        kills: killed,
        disconnects: dropped,
        stalled: stalled ? 1 : 0,
        reconnects: clients.reduce((n, c) => n + c.connects - 1 - c.refused, 0),
        refused: clients.reduce((n, c) => n + c.refused, 0),
        resends: clients.reduce((n, c) => n + c.resends, 0),
        reloads: clients.reduce((n, c) => n + c.reloads, 0),
      },
      closeCodes: {},
      stall,
      catchUpMs,
      restarts,
      sendPhaseMs,
      durationMs: 0,
      problems,
    };
    const problem = (p: string) => {
      if (problems.length < 40) problems.push(p);
    };
    // The log itself: gap-free sequences, each planned message stored once, acks matching.
    const byId = new Map<string, ChatMessage[]>();
    for (const [conv, list] of stored) {
      list.forEach((m, i) => {
        if (m.seq !== i + 1) {
          verdict.logGaps++;
          problem(`${conv}: stored seq ${m.seq} at position ${i + 1}`);
        }
        const key = `${m.from}/${m.id}`;
        byId.set(key, [...byId.get(key) ?? [], m]);
      });
    }
    for (const c of clients) {
      for (const p of [...c.queue]) problem(`${c.label}: ${p.id} never sent`);
      for (const [id, ack] of c.acks) {
        const copies = byId.get(`${c.user.id}/${id}`) ?? [];
        if (copies.length !== 1) {
          verdict.storeErrors++;
          problem(`${c.label}: ${id} stored ${copies.length} times`);
        } else if (copies[0].conv !== ack.conv || copies[0].seq !== ack.seq) {
          verdict.storeErrors++;
          problem(`${c.label}: ${id} acked ${ack.conv}#${ack.seq}, stored #${copies[0].seq}`);
        }
      }
    }
    const sentIds = clients.reduce((n, c) => n + c.acks.size, 0);
    if (sentIds !== total) verdict.storeErrors += Math.abs(total - sentIds);
    // Every client: exactly the messages of its conversations after its baseline.
    for (const c of clients) {
      problems.push(...c.problems.slice(0, 5));
      for (const conv of c.convs) {
        const base = c.baseline.get(conv) ?? 0;
        const expected = (stored.get(conv) ?? []).filter((m) => m.seq > base);
        const bySeq = new Map(expected.map((m) => [m.seq, m]));
        const frames = c.frames.get(conv) ?? [];
        const reloaded = c.reloaded.get(conv) ?? new Set<number>();
        const got = new Set<number>();
        let previous = 0;
        for (const seq of frames) {
          if (got.has(seq) || reloaded.has(seq)) {
            verdict.duplicated++;
            problem(`${c.label} ${conv}: #${seq} received twice`);
          } else if (seq < previous) {
            verdict.reordered++;
            problem(`${c.label} ${conv}: #${seq} after #${previous}`);
          }
          got.add(seq);
          previous = Math.max(previous, seq);
        }
        for (const seq of reloaded) got.add(seq);
        verdict.deliveriesExpected += expected.length;
        const contents = c.contents.get(conv);
        for (const seq of got) {
          const m = bySeq.get(seq);
          const seen = contents?.get(seq);
          if (seq <= base) continue;
          if (!m || !seen || m.id !== seen.id || m.from !== seen.from || m.text !== seen.text) {
            verdict.mismatched++;
            problem(`${c.label} ${conv}: #${seq} differs from KV`);
          } else verdict.deliveriesReceived++;
        }
        const missing = expected.filter((m) => !got.has(m.seq));
        verdict.lost += missing.length;
        if (missing.length) {
          problem(
            `${c.label} ${conv}: lost ${missing.length} (${
              missing.slice(0, 5).map((m) => m.seq).join(",")
            }…), last seen ${c.lastSeen.get(conv)}`,
          );
        }
      }
      for (const [conv] of c.frames) {
        if (!c.convs.has(conv) && !conv.startsWith(`d:${c.user.id}:${c.user.id}`)) {
          verdict.mismatched++;
          problem(`${c.label}: received ${conv}, not one of its conversations`);
        }
      }
      for (const [code, n] of c.closes) {
        verdict.closeCodes[code] = (verdict.closeCodes[code] ?? 0) + n;
      }
    }
    verdict.durationMs = Date.now() - started;
    return verdict;
  } catch (error) {
    // What the server said is the first thing to read when a run breaks.
    const output = server.output().slice(-3000);
    throw new Error(`${(error as Error).message}\n--- server output ---\n${output}`, {
      cause: error,
    });
  } finally {
    raw?.close();
    await Promise.all(clients.map((c) => c.stop()));
    await server.stop("SIGKILL");
    await Deno.remove(kvPath.slice(0, kvPath.lastIndexOf("/")), { recursive: true }).catch(
      () => {},
    );
  }
}

/** A one-line summary of a verdict. */
export function summary(v: Verdict): string {
  return `bus=${v.bus} workers=${v.workers} clients=${v.clients} nodes=${v.firstNodes} ` +
    `sent=${v.messagesSent} deliveries=${v.deliveriesReceived}/${v.deliveriesExpected} ` +
    `lost=${v.lost} duplicated=${v.duplicated} reordered=${v.reordered} ` +
    `mismatched=${v.mismatched} storeErrors=${v.storeErrors} logGaps=${v.logGaps} ` +
    `kills=${v.faults.kills} disconnects=${v.faults.disconnects} stalled=${v.faults.stalled} ` +
    `reconnects=${v.faults.reconnects} refused=${v.faults.refused} resends=${v.faults.resends} ` +
    `reloads=${v.faults.reloads} ` +
    `catchUpMs=[${v.catchUpMs.join(",")}] send=${v.sendPhaseMs}ms total=${v.durationMs}ms ` +
    `closes=${JSON.stringify(v.closeCodes)}` +
    (v.stall ? ` stall=${JSON.stringify(v.stall)}` : "");
}
