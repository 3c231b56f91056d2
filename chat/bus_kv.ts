/**
 * A bus that needs no `BroadcastChannel`: a relay log in Deno KV. Each node appends its
 * envelopes to `["relay", "log", <commit versionstamp>]` (so entries list in commit order) and,
 * in the same commit, adds 1 to the counter `["relay", "count"]`; every node watches that one
 * key and, on each change (watch coalesces, so a change means "one or more"), lists the log
 * after the last entry it read, unless every commit counted since it last looked was its own
 * (it knows their versionstamps): a busy node does not read back its own entries. A slow poll
 * covers a watch that stalls or ends (it is restarted), and processes that share a KV file (a
 * watch only hears the commits of its own process). One watched key keeps well under KV's limit
 * of 10 keys per watch. This is what links instances on Deno Deploy and processes sharing a KV
 * file or a KV Connect server.
 *
 * The message log's entries (one per commit) are written only while another node is around:
 * {@linkcode KvBus.relaying} is true for `staleMs` after this node last read an entry of another
 * node (every node's hub publishes a heartbeat every 2 s, so a live node is never silent that
 * long), and from the start when the newest entries are another node's. A node alone on its KV
 * thus commits its messages without the relay entry and counter; with the watch's wake-up for
 * them they cost about a quarter of a small commit (`bench/kv_commit_cost.ts`). A node that
 * appears is heard within a poll (same process: at once, through the watch); what the first
 * node committed meanwhile reaches it through the hub's `heads` heartbeat (the newest sequences
 * of the last 10 s, every 2 s), as after a dropped notice. Its own envelopes (presence,
 * heartbeats, kicks) wait up to `aloneFlushMs` meanwhile and share one commit.
 *
 * @module
 */
import type { Bus, Envelope } from "./bus.ts";
import { RELAY_COUNT_KEY, RELAY_LOG_PREFIX } from "./keys.ts";
import { retryLocked } from "./message_log.ts";
import type { RelayEntry } from "./message_log.ts";

/** Options of {@linkcode KvBus}. */
export interface KvBusOptions {
  /** This node's id: its own entries are skipped. */
  node: string;
  /** The message log writes a relay entry in each of its commits; append envelopes are skipped. */
  appendsInLog: boolean;
  /** Milliseconds between polls when the watch is quiet. */
  pollMs?: number;
  /**
   * Milliseconds after the last entry of another node during which the log's commits carry
   * relay entries (default 10,000); 0 writes them always.
   */
  staleMs?: number;
  /**
   * Milliseconds a published envelope waits while no other node is heard (default 50): what
   * is published meanwhile shares one commit. Only a node that appears would read it, and it
   * is delayed, never dropped; a sign-in storm on a lone node then costs a commit per 50 ms,
   * not one per sign-in.
   */
  aloneFlushMs?: number;
}

interface BatchEntry {
  node: string;
  envelopes: Envelope[];
}

/** The shortest gap between two reads of the relay log. */
const MIN_READ_GAP_MS = 10;
/** Entries looked at on start for another node's. */
const START_LOOKBACK = 20;
const MAX_VALUE_CHARS = 55_000;

/** A {@linkcode Bus} over a relay log in Deno KV. */
export class KvBus implements Bus {
  readonly name = "kv";
  /** Reads of the relay log, and watch events left unread because they were all this node's. */
  readonly stats = { reads: 0, skipped: 0 };
  readonly #kv: Deno.Kv;
  readonly #options: KvBusOptions;
  #receive: (envelope: Envelope) => void = () => {};
  #outbox: Envelope[] = [];
  #flushing: Promise<void> | null = null;
  /** The pending flush, and how long it was set to wait. */
  #timer: { id: ReturnType<typeof setTimeout>; wait: number } | undefined;
  #last: Deno.KvKey | null = null;
  #reading = false;
  #again = false;
  #readTimer: ReturnType<typeof setTimeout> | undefined;
  #lastReadAt = 0;
  #closed = false;
  #healthy = true;
  #watch: ReadableStreamDefaultReader<Deno.KvEntryMaybe<Deno.KvU64>[]> | null = null;
  #poll: ReturnType<typeof setInterval> | undefined;
  #started: Promise<void>;
  /** The relay counter and its versionstamp when this node last looked (null: not yet). */
  #seen: { count: bigint; versionstamp: string | null } | null = null;
  /** Versionstamps of this node's relay commits newer than `#seen`, oldest first. */
  #own: string[] = [];
  /** When this node last read an entry of another node (`performance.now()`). */
  #otherAt = -Infinity;

  constructor(kv: Deno.Kv, options: KvBusOptions) {
    this.#kv = kv;
    this.#options = options;
    this.#started = this.#start();
  }

  /**
   * This node made a relay commit (its own envelopes, or the message log's entry). Its entries
   * are skipped on read anyway; knowing them lets a watch event they alone caused go unread.
   */
  committed(versionstamp: string): void {
    this.#own.push(versionstamp);
    if (this.#own.length > 10_000) this.#own.shift();
  }

  /**
   * Whether the message log should write a relay entry in its commits: another node was heard
   * within `staleMs` (or `staleMs` is 0).
   */
  get relaying(): boolean {
    const stale = this.#options.staleMs ?? 10_000;
    return stale <= 0 || performance.now() - this.#otherAt < stale;
  }

  /** Resolves once the bus knows where the log ends and is watching it. */
  ready(): Promise<void> {
    return this.#started;
  }

  publish(envelope: Envelope): void {
    if (this.#closed) return;
    if (envelope.k === "append") {
      if (this.#options.appendsInLog) return;
      // Receivers read the messages from the log of record; keep the entry small.
      envelope = { ...envelope, messages: undefined };
    }
    this.#outbox.push(envelope);
    this.#schedule();
  }

  /**
   * Flushes at the next turn, or after `aloneFlushMs` while no other node is heard (a node
   * heard meanwhile cuts that wait short at the next publish).
   */
  #schedule(): void {
    // A write in flight schedules the next when it ends.
    if (this.#flushing) return;
    const wait = this.relaying ? 0 : this.#options.aloneFlushMs ?? 50;
    if (this.#timer) {
      if (wait > 0 || this.#timer.wait === 0) return;
      clearTimeout(this.#timer.id);
    }
    const id = setTimeout(() => {
      this.#timer = undefined;
      this.#flush();
    }, wait);
    this.#timer = { id, wait };
  }

  subscribe(receive: (envelope: Envelope) => void): void {
    this.#receive = receive;
  }

  healthy(): boolean {
    return this.#healthy;
  }

  /** Writes what was published, then stops watching. */
  async close(): Promise<void> {
    if (this.#closed) return;
    await this.#started.catch(() => {});
    while (this.#flushing || this.#outbox.length) {
      if (this.#flushing) await this.#flushing;
      else this.#flush();
    }
    clearTimeout(this.#timer?.id);
    this.#closed = true;
    clearInterval(this.#poll);
    clearTimeout(this.#readTimer);
    const watch = this.#watch;
    this.#watch = null;
    await watch?.cancel().catch(() => {});
    while (this.#reading) await new Promise((r) => setTimeout(r, 1));
  }

  async #start(): Promise<void> {
    await retryLocked(async () => {
      this.#last = null;
      const newest = this.#kv.list<BatchEntry | RelayEntry>({ prefix: RELAY_LOG_PREFIX }, {
        reverse: true,
        limit: START_LOOKBACK,
      });
      for await (const entry of newest) {
        this.#last ??= entry.key;
        // Maybe a node long gone: then this lasts `staleMs`.
        if (entry.value.node !== this.#options.node) this.#otherAt = performance.now();
      }
    });
    if (this.#closed) return;
    this.#poll = setInterval(() => this.#read(), this.#options.pollMs ?? 1000);
    this.#startWatch();
  }

  /** Watches the relay head; restarts the watch when it fails or ends. */
  #startWatch(): void {
    if (this.#closed) return;
    const reader = this.#kv.watch<[Deno.KvU64]>([RELAY_COUNT_KEY]).getReader();
    this.#watch = reader;
    (async () => {
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done || this.#closed) break;
          if (this.#foreign(value[0])) this.#soon();
          else this.stats.skipped++;
        }
      } catch {
        this.#healthy = false;
      }
      if (!this.#closed && this.#watch === reader) {
        setTimeout(() => this.#startWatch(), 500);
      }
    })();
  }

  /**
   * Whether the relay counter moved by more than this node's own commits since the last look.
   * An own commit whose versionstamp is not known yet counts as foreign: a read too many, never
   * one too few.
   */
  #foreign(entry: Deno.KvEntryMaybe<Deno.KvU64>): boolean {
    const count = entry.value?.value ?? 0n;
    const versionstamp = entry.versionstamp;
    const seen = this.#seen;
    this.#seen = { count, versionstamp };
    if (!seen || versionstamp === null || count < seen.count) return true;
    let own = 0;
    while (this.#own.length && versionstamp >= this.#own[0]) {
      if (seen.versionstamp === null || this.#own[0] > seen.versionstamp) own++;
      this.#own.shift();
    }
    return count - seen.count > BigInt(own);
  }

  #flush(): void {
    if (this.#flushing || this.#outbox.length === 0) return;
    const envelopes = this.#outbox;
    this.#outbox = [];
    this.#flushing = this.#write(envelopes).finally(() => {
      this.#flushing = null;
      if (this.#outbox.length === 0) return;
      if (this.relaying) this.#flush();
      else this.#schedule();
    });
  }

  async #write(envelopes: Envelope[]): Promise<void> {
    // Split so each entry stays under KV's 64 KiB value limit.
    const chunks: Envelope[][] = [];
    let chunk: Envelope[] = [];
    let size = 0;
    for (const e of envelopes) {
      const n = JSON.stringify(e).length;
      if (chunk.length && size + n > MAX_VALUE_CHARS) {
        chunks.push(chunk);
        chunk = [];
        size = 0;
      }
      chunk.push(e);
      size += n;
    }
    if (chunk.length) chunks.push(chunk);
    for (const part of chunks) {
      const value: BatchEntry = { node: this.#options.node, envelopes: part };
      try {
        const result = await retryLocked(() =>
          this.#kv.atomic()
            .set([...RELAY_LOG_PREFIX, this.#kv.commitVersionstamp()], value, {
              expireIn: 10 * 60_000,
            })
            .sum(RELAY_COUNT_KEY, 1n)
            .commit()
        );
        if (result.ok) this.committed(result.versionstamp);
        this.#healthy = true;
      } catch {
        this.#healthy = false;
      }
    }
  }

  /** Passes an envelope on; a failing receiver must not stall the relay. */
  #deliver(envelope: Envelope): void {
    try {
      this.#receive(envelope);
    } catch {
      // The receiver reports its own errors.
    }
  }

  /**
   * Reads the log soon: at most one read per {@linkcode MIN_READ_GAP_MS}. Every commit of this
   * node's log touches the watched key too, so a busy node would otherwise list the log after
   * each of its own commits.
   */
  #soon(): void {
    if (this.#readTimer !== undefined || this.#closed) return;
    const wait = Math.max(0, this.#lastReadAt + MIN_READ_GAP_MS - Date.now());
    this.#readTimer = setTimeout(() => {
      this.#readTimer = undefined;
      this.#lastReadAt = Date.now();
      this.#read();
    }, wait);
  }

  /** Lists the log after the last entry read; one reader at a time, rerun if asked meanwhile. */
  async #read(): Promise<void> {
    if (this.#closed) return;
    if (this.#reading) {
      this.#again = true;
      return;
    }
    this.#reading = true;
    try {
      do {
        this.#again = false;
        this.stats.reads++;
        const selector: Deno.KvListSelector = this.#last
          ? { start: [...this.#last, 0], end: [...RELAY_LOG_PREFIX, "\uffff"] }
          : { prefix: RELAY_LOG_PREFIX };
        const entries: Deno.KvEntry<BatchEntry | RelayEntry>[] = [];
        await retryLocked(async () => {
          entries.length = 0;
          for await (const e of this.#kv.list<BatchEntry | RelayEntry>(selector)) entries.push(e);
        });
        for (const entry of entries) {
          if (this.#closed) break;
          this.#last = entry.key;
          const value = entry.value;
          if (value.node === this.#options.node) continue;
          this.#otherAt = performance.now();
          if ("heads" in value) {
            let n = 0;
            for (const [conv, seq] of Object.entries(value.heads)) {
              this.#deliver({
                node: value.node,
                n: -++n,
                k: "append",
                conv,
                seq,
                vs: entry.versionstamp,
              });
            }
          } else {
            for (const envelope of value.envelopes) this.#deliver(envelope);
          }
        }
        this.#healthy = true;
      } while (this.#again && !this.#closed);
    } catch {
      this.#healthy = false;
    } finally {
      this.#reading = false;
    }
  }
}
