/**
 * The bus between machines that share a Redis server: Redis pub/sub on one channel. Each tick's
 * envelopes go out as one PUBLISH of a JSON array; every node hears every message, its own
 * included, and skips its own envelopes. Pub/sub is fire-and-forget: while Redis is down
 * envelopes are dropped (the hub repairs gaps from KV) and the bus reconnects by itself.
 *
 * @module
 */
import { createClient } from "redis";
import type { Bus, Envelope } from "./bus.ts";

/** Options of {@linkcode RedisBus}. */
export interface RedisBusOptions {
  /** The server, as `redis://[[user]:password@]host[:port][/db]`. */
  url: string;
  /** This node's id: its own envelopes are skipped. */
  node: string;
  /** The pub/sub channel; nodes on the same channel hear each other. Default `chat`. */
  channel?: string;
}

type Client = ReturnType<typeof createClient>;

/** Reconnect backoff: doubles from the first delay up to the last, plus up to 100 ms jitter. */
const RETRY_FIRST_MS = 50;
const RETRY_MAX_MS = 1000;
/** How long `close()` waits for a connection attempt or a pending reply before cutting. */
const CLOSE_WAIT_MS = 2000;
/** Messages are split past this many characters; Redis drops a subscriber 32 MiB behind. */
const MAX_MESSAGE_CHARS = 512 * 1024;
/** Commands queued on a live but congested connection before new ones are refused. */
const MAX_QUEUED_COMMANDS = 10_000;

/**
 * One node-redis client that reconnects by itself. Its own reconnect strategy is off: node-redis
 * waits between attempts on a timer that `destroy()` cannot cancel, which would outlive
 * `close()`; here the timer is ours, and `close()` clears it.
 */
class Link {
  readonly client: Client;
  readonly #onConnect: (client: Client) => Promise<void>;
  #attempt: Promise<void> | null = null;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #retries = 0;
  #closed = false;

  constructor(url: string, onConnect: (client: Client) => Promise<void>) {
    this.#onConnect = onConnect;
    this.client = createClient({
      url,
      // Refuse commands at once while disconnected instead of queueing them without bound.
      disableOfflineQueue: true,
      commandsQueueMaxLength: MAX_QUEUED_COMMANDS,
      socket: { reconnectStrategy: false, connectTimeout: CLOSE_WAIT_MS },
    });
    // Without a listener an 'error' event would throw and end the process.
    this.client.on("error", () => {
      // A lost connection shows as an error once the client has given up on it.
      if (!this.client.isOpen) this.#schedule();
    });
  }

  /** Connects now, then again whenever the connection is lost, until closed. */
  start(): void {
    if (this.#closed || this.#attempt || this.client.isOpen) return;
    this.#attempt = (async () => {
      try {
        await this.client.connect();
        if (this.#closed) return;
        await this.#onConnect(this.client);
        this.#retries = 0;
      } catch {
        // Reported through 'error'; a half-set-up connection is dropped and tried again.
        if (this.client.isOpen && !this.#closed) this.client.destroy();
      }
    })().finally(() => {
      this.#attempt = null;
      if (!this.client.isOpen) this.#schedule();
    });
  }

  /** Quits: lets an attempt in progress finish, sends QUIT after pending replies, or cuts. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#attempt) await within(this.#attempt, CLOSE_WAIT_MS);
    if (!this.client.isOpen) return;
    if (this.client.isReady && await within(this.client.close(), CLOSE_WAIT_MS)) return;
    if (this.client.isOpen) this.client.destroy();
  }

  #schedule(): void {
    if (this.#closed || this.#attempt || this.#timer !== undefined) return;
    const delay = Math.min(RETRY_FIRST_MS * 2 ** this.#retries++, RETRY_MAX_MS);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.start();
    }, delay + Math.floor(Math.random() * 100));
  }
}

/** Waits for `promise` at most `ms`; true if it settled in time. Leaves no timer behind. */
async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), ms));
  try {
    return await Promise.race([promise.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A {@linkcode Bus} over Redis pub/sub, with a publisher and a dedicated subscriber client. */
export class RedisBus implements Bus {
  readonly name = "redis";
  readonly #node: string;
  readonly #channel: string;
  readonly #pub: Link;
  readonly #sub: Link;
  readonly #ready = Promise.withResolvers<void>();
  #receive: (envelope: Envelope) => void = () => {};
  #outbox: Envelope[] = [];
  #scheduled = false;
  #subscribed = false;
  #closed = false;

  constructor(options: RedisBusOptions) {
    this.#node = options.node;
    this.#channel = options.channel ?? "chat";
    this.#pub = new Link(options.url, () => Promise.resolve(this.#checkReady()));
    this.#sub = new Link(options.url, async (client) => {
      // After a reconnect node-redis has already resubscribed; this then sends nothing.
      await client.subscribe(this.#channel, this.#onMessage);
      this.#subscribed = true;
      this.#checkReady();
    });
    this.#pub.start();
    this.#sub.start();
  }

  /** Resolves once both clients are connected and subscribed (or the bus is closed). */
  ready(): Promise<void> {
    return this.#ready.promise;
  }

  publish(envelope: Envelope): void {
    if (this.#closed) return;
    // One PUBLISH per tick, however many envelopes the tick produced.
    this.#outbox.push(envelope);
    if (this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => this.#flush());
  }

  subscribe(receive: (envelope: Envelope) => void): void {
    this.#receive = receive;
  }

  healthy(): boolean {
    return !this.#closed && this.#subscribed && this.#pub.client.isReady &&
      this.#sub.client.isReady;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#flush();
    this.#closed = true;
    this.#ready.resolve();
    await Promise.all([this.#pub.close(), this.#sub.close()]);
  }

  #checkReady(): void {
    if (this.healthy()) this.#ready.resolve();
  }

  #flush(): void {
    this.#scheduled = false;
    const batch = this.#outbox;
    this.#outbox = [];
    const client = this.#pub.client;
    // Disconnected: drop the batch; receivers repair from KV.
    if (this.#closed || batch.length === 0 || !client.isReady) return;
    let parts: string[] = [];
    let size = 0;
    const send = () => {
      client.publish(this.#channel, `[${parts.join(",")}]`).catch(() => {
        // Connection lost or queue full: dropped like any envelope while disconnected.
      });
      parts = [];
      size = 0;
    };
    for (const envelope of batch) {
      let json: string;
      try {
        json = JSON.stringify(envelope);
      } catch {
        continue; // Not serializable (a cycle, a bigint): skip it rather than the batch.
      }
      if (parts.length && size + json.length > MAX_MESSAGE_CHARS) send();
      parts.push(json);
      size += json.length + 1;
    }
    if (parts.length) send();
  }

  /** Called by node-redis for every message on the channel, in order. */
  readonly #onMessage = (message: string): void => {
    if (this.#closed) return;
    let batch: unknown;
    try {
      batch = JSON.parse(message);
    } catch {
      return; // Not ours: another program on the channel.
    }
    if (!Array.isArray(batch)) return;
    for (const envelope of batch as Envelope[]) {
      if (envelope?.node === this.#node) continue;
      try {
        this.#receive(envelope);
      } catch (error) {
        // A throw here would reach node-redis's reply parser and reset it mid-stream.
        console.error("RedisBus receiver failed:", error);
      }
    }
  };
}
