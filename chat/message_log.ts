/**
 * The log of record: every message of every conversation, in Deno KV.
 *
 * Each message gets the next sequence number of its conversation, with no gaps and no
 * duplicates, even when several isolates or processes append to the same conversation at once:
 * a commit checks the conversation's head and every message's dedupe key, and retries when
 * another writer got there first. A message can carry one more key that must be absent (a
 * block), checked in the same commit: no read of its own, and no window between check and
 * write. Appends made in the same tick, or while a commit is in flight, share one atomic commit
 * (a local KV file takes only a few thousand commits per second, but a hundred messages per
 * commit as easily as one).
 *
 * @module
 */
import {
  dedupeKey,
  headKey,
  messageKey,
  messagePrefix,
  RELAY_COUNT_KEY,
  RELAY_LOG_PREFIX,
} from "./keys.ts";
import type { ChatMessage, ConversationId, UserId } from "./protocol.ts";

/** What a caller appends; the log adds `seq` and `ts`. */
export interface AppendInput {
  conv: ConversationId;
  /** Client-chosen id, unique per sender: a second append with the same id is not stored. */
  id: string;
  from: UserId;
  name: string;
  text: string;
  kind: ChatMessage["kind"];
  meta?: ChatMessage["meta"];
  /**
   * A key that must be absent when the message is stored, checked in the same commit (a block,
   * say): if it is present, the append rejects with what `error` builds (only then: an error
   * captures a stack, and nearly every append passes) and nothing is stored.
   */
  refuseIf?: { key: Deno.KvKey; error: () => Error };
}

/** The stored message, and whether it had been stored before. */
export interface AppendResult {
  message: ChatMessage;
  duplicate: boolean;
}

/** One relay log entry: which conversations have new messages, up to which sequence. */
export interface RelayEntry {
  node: string;
  heads: Record<ConversationId, number>;
}

/** Options of {@linkcode MessageLog}. */
export interface MessageLogOptions {
  /** Messages kept per conversation. */
  retentionCount: number;
  /** Milliseconds a message is kept. */
  retentionMs: number;
  /**
   * Write a relay log entry in each commit, for the KV bus, while `active()` says so (always
   * when absent); `committed` hears the versionstamp of each such commit (the bus need not read
   * back its own entries).
   */
  relay?: {
    node: string;
    committed?: (versionstamp: string) => void;
    active?: () => boolean;
  };
  /**
   * Called after each successful commit with the new messages (not the duplicates) and the
   * commit's versionstamp.
   */
  onCommit?: (messages: ChatMessage[], commitMs: number, versionstamp: string) => void;
  /**
   * Milliseconds appends wait to share a commit while the log is busy (default 1); after a quiet
   * spell (no commit for `busyGapMs`) the appends of the current tick commit at once.
   */
  batchMs?: number;
  /** Milliseconds after a commit during which the log counts as busy (default 2). */
  busyGapMs?: number;
  /** Milliseconds since the epoch; a parameter so tests can move time. */
  now?: () => number;
}

interface Pending {
  input: AppendInput;
  resolve: (result: AppendResult) => void;
  reject: (error: unknown) => void;
}

interface Head {
  seq: number;
  versionstamp: string | null;
}

// Deno KV's limits on one atomic commit, with room to spare.
const MAX_CHECKS = 100;
const MAX_MUTATIONS = 900;
const MAX_COMMIT_BYTES = 600_000;
const GET_MANY = 10;
const DEDUPE_MS = 30 * 24 * 3600_000;

/** Whether an error from KV is worth retrying (another writer holds the file). */
export function isRetryableKvError(error: unknown): boolean {
  const message = error instanceof Error ? error.message : String(error);
  return /database is locked|busy|SQLITE_BUSY/i.test(message);
}

/** Retries `fn` while KV reports the file locked, with a short growing pause. */
export async function retryLocked<T>(fn: () => Promise<T>, attempts = 50): Promise<T> {
  for (let attempt = 0;; attempt++) {
    try {
      return await fn();
    } catch (error) {
      if (!isRetryableKvError(error) || attempt >= attempts) throw error;
      await new Promise((r) => setTimeout(r, Math.min(50, 1 + attempt * 2 + Math.random() * 3)));
    }
  }
}

interface ReadRequest {
  keys: Deno.KvKey[];
  entries: Deno.KvEntryMaybe<unknown>[];
  /** Chunks still to answer. */
  left: number;
  resolve: (entries: Deno.KvEntryMaybe<unknown>[]) => void;
  reject: (error: unknown) => void;
}

/** Reads asked for in the current turn, per KV, until the microtask that sends them. */
const pendingReads = new WeakMap<Deno.Kv, ReadRequest[]>();

/**
 * The entries of any number of keys, in order. Reads asked for in the same turn (before its
 * microtasks run) share `getMany` calls, 10 keys each (KV's limit): every call is a round trip
 * through KV's one SQLite thread, which costs more than the keys it reads. Up to 10 keys of one
 * caller are read by one call, so from one snapshot, as with `kv.getMany`.
 */
export function getMany<T>(kv: Deno.Kv, keys: Deno.KvKey[]): Promise<Deno.KvEntryMaybe<T>[]> {
  if (keys.length === 0) return Promise.resolve([]);
  return new Promise((resolve, reject) => {
    let queue = pendingReads.get(kv);
    if (!queue) {
      const requests: ReadRequest[] = queue = [];
      pendingReads.set(kv, requests);
      queueMicrotask(() => {
        pendingReads.delete(kv);
        readTogether(kv, requests);
      });
    }
    queue.push({
      keys,
      entries: new Array(keys.length),
      left: 0,
      resolve: resolve as ReadRequest["resolve"],
      reject,
    });
  });
}

/** Packs the requests' keys into `getMany` calls and answers each request when all its are in. */
function readTogether(kv: Deno.Kv, requests: ReadRequest[]): void {
  type Part = { request: ReadRequest; from: number; at: number; count: number };
  const chunks: { keys: Deno.KvKey[]; parts: Part[] }[] = [];
  let chunk: { keys: Deno.KvKey[]; parts: Part[] } | undefined;
  for (const request of requests) {
    const n = request.keys.length;
    // A request that fits in one call is not split across two.
    if (!chunk || (n <= GET_MANY && chunk.keys.length + n > GET_MANY)) {
      chunks.push(chunk = { keys: [], parts: [] });
    }
    for (let from = 0; from < n;) {
      if (chunk.keys.length === GET_MANY) chunks.push(chunk = { keys: [], parts: [] });
      const count = Math.min(n - from, GET_MANY - chunk.keys.length);
      chunk.parts.push({ request, from, at: chunk.keys.length, count });
      for (let i = 0; i < count; i++) chunk.keys.push(request.keys[from + i]);
      request.left++;
      from += count;
    }
  }
  for (const { keys, parts } of chunks) {
    retryLocked(() => kv.getMany<unknown[]>(keys)).then((entries) => {
      for (const { request, from, at, count } of parts) {
        for (let i = 0; i < count; i++) request.entries[from + i] = entries[at + i];
        if (--request.left === 0) request.resolve(request.entries);
      }
    }, (error) => {
      for (const { request } of parts) request.reject(error);
    });
  }
}

/**
 * The message log of record, in Deno KV.
 *
 * @example
 * ```ts
 * using kv = await Deno.openKv(":memory:");
 * const log = new MessageLog(kv, { retentionCount: 1000, retentionMs: 86_400_000 });
 * const { message } = await log.append({
 *   conv: "lobby", id: "m1", from: "u1", name: "Ann", text: "hi", kind: "text",
 * });
 * message.seq; // 1
 * ```
 */
export class MessageLog {
  /**
   * Commits made; attempts refused by a check (another writer moved a conversation's head, or
   * stored one of the messages, first); attempts that found the file locked.
   */
  readonly stats = { commits: 0, conflicts: 0, locked: 0 };
  readonly #kv: Deno.Kv;
  readonly #options: MessageLogOptions;
  readonly #now: () => number;
  readonly #heads = new Map<ConversationId, Head>();
  #queue: Pending[] = [];
  #scheduled = false;
  #inflight: Promise<void> | null = null;
  #lastCommitEnd = -Infinity;
  #closed = false;

  constructor(kv: Deno.Kv, options: MessageLogOptions) {
    this.#kv = kv;
    this.#options = options;
    this.#now = options.now ?? Date.now;
  }

  /** Appends a message; resolves once it is durably stored (or found stored before). */
  append(input: AppendInput): Promise<AppendResult> {
    if (this.#closed) return Promise.reject(new Error("Cannot append: the log is closed"));
    return new Promise((resolve, reject) => {
      this.#queue.push({ input, resolve, reject });
      this.#schedule();
    });
  }

  /** Resolves when every append accepted so far is committed or failed. */
  async flush(): Promise<void> {
    while (this.#queue.length || this.#inflight || this.#scheduled) {
      if (this.#inflight) await this.#inflight;
      else await new Promise((r) => setTimeout(r, 0));
    }
  }

  /** Stops accepting appends and waits for the ones accepted. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.flush();
  }

  /**
   * Another writer's commit `versionstamp` moved the head of `conv` to `seq` (heard on the bus).
   * When this log writes to `conv` too, its next commit checks that head instead of the one it
   * knew: without this, two nodes writing to one conversation would each fail their next check
   * after the other's commit and read the head back. A wrong or late report costs only that: the
   * commit's check still guards the sequence.
   */
  heard(conv: ConversationId, seq: number, versionstamp: string): void {
    const head = this.#heads.get(conv);
    if (head && head.seq < seq) this.#heads.set(conv, { seq, versionstamp });
  }

  /** The newest sequence number of a conversation (0 when empty). */
  async head(conv: ConversationId): Promise<number> {
    const entry = await retryLocked(() => this.#kv.get<number>(headKey(conv)));
    return entry.value ?? 0;
  }

  /**
   * Messages with `after < seq <= to`, oldest first, at most `limit`, skipping the ones past
   * retention: older than `retentionMs` (KV's `expireIn` is only a lower bound on deletion) or
   * more than `retentionCount` behind the newest. Expired messages do not count towards `limit`.
   */
  async range(
    conv: ConversationId,
    after: number,
    to: number,
    limit = Number.MAX_SAFE_INTEGER,
  ): Promise<ChatMessage[]> {
    if (to <= after || limit <= 0) return [];
    const head = to >= Number.MAX_SAFE_INTEGER ? await this.head(conv) : to;
    const start = Math.max(after, head - this.#options.retentionCount);
    if (head <= start) return [];
    const cutoff = this.#now() - this.#options.retentionMs;
    const messages: ChatMessage[] = [];
    await retryLocked(async () => {
      messages.length = 0;
      const iter = this.#kv.list<ChatMessage>({
        start: messageKey(conv, start + 1),
        end: messageKey(conv, to >= Number.MAX_SAFE_INTEGER ? to : to + 1),
      }, { batchSize: Math.min(500, limit + 1) });
      for await (const entry of iter) {
        if (entry.value.ts < cutoff) continue;
        messages.push(entry.value);
        if (messages.length >= limit) break;
      }
    });
    return messages;
  }

  /**
   * A page of history: up to `limit` messages older than `before` (or the newest), oldest first,
   * and whether older ones exist. Messages past retention (by age or count) are not shown.
   */
  async page(
    conv: ConversationId,
    before: number | undefined,
    limit: number,
  ): Promise<{ messages: ChatMessage[]; more: boolean }> {
    const cutoff = this.#now() - this.#options.retentionMs;
    // The head (for the count-based floor) and the page are read at once: over a network (Deno
    // Deploy, a shared denokv) that is one round trip instead of two.
    const [head, newest] = await Promise.all([
      this.head(conv),
      retryLocked(async () => {
        const out: ChatMessage[] = [];
        const iter = this.#kv.list<ChatMessage>(
          before === undefined
            ? { prefix: messagePrefix(conv) }
            : { prefix: messagePrefix(conv), end: messageKey(conv, Math.max(1, before)) },
          { reverse: true, limit: limit + 1, batchSize: limit + 1 },
        );
        for await (const entry of iter) out.push(entry.value);
        return out;
      }),
    ]);
    const floor = head - this.#options.retentionCount;
    // Newest first: the page ends at the first message past either retention limit.
    const end = newest.findIndex((m) => m.ts < cutoff || m.seq <= floor);
    const kept = end < 0 ? newest : newest.slice(0, end);
    return { messages: kept.slice(0, limit).reverse(), more: kept.length > limit };
  }

  #schedule(): void {
    if (this.#scheduled || this.#inflight) return;
    this.#scheduled = true;
    const run = () => {
      this.#scheduled = false;
      this.#drain();
    };
    // Appends that arrive while a commit is in flight share the next one (it starts as the
    // other ends). After a quiet spell the first append commits at the end of this tick: a timer
    // window would add its wait to every message of a quiet conversation, and a timer's wake-up
    // costs about as much as a small commit here. While commits follow each other (direct
    // messages: each alone in its conversation), the next one waits `batchMs` to fill up.
    const ms = this.#options.batchMs ?? 1;
    if (ms > 0 && performance.now() - this.#lastCommitEnd < (this.#options.busyGapMs ?? 2)) {
      setTimeout(run, ms);
    } else queueMicrotask(run);
  }

  #drain(): void {
    if (this.#inflight || this.#queue.length === 0) return;
    const batch = this.#takeBatch();
    this.#inflight = this.#commit(batch).finally(() => {
      this.#inflight = null;
      this.#lastCommitEnd = performance.now();
      if (this.#queue.length) this.#drain();
    });
  }

  /** Takes as many queued appends as one commit can hold. */
  #takeBatch(): Pending[] {
    const convs = new Set<ConversationId>();
    let checks = 0;
    let mutations = 2; // the relay entry and counter
    let bytes = 0;
    let n = 0;
    for (; n < this.#queue.length; n++) {
      const { input } = this.#queue[n];
      const newConv = !convs.has(input.conv);
      const addChecks = 1 + (newConv ? 1 : 0) + (input.refuseIf ? 1 : 0);
      const addMutations = 3 + (newConv ? 1 : 0);
      const addBytes = input.text.length * 3 + input.name.length * 3 + 300;
      if (
        n > 0 &&
        (checks + addChecks > MAX_CHECKS || mutations + addMutations > MAX_MUTATIONS ||
          bytes + addBytes > MAX_COMMIT_BYTES)
      ) break;
      checks += addChecks;
      mutations += addMutations;
      bytes += addBytes;
      convs.add(input.conv);
    }
    return this.#queue.splice(0, n);
  }

  async #commit(batch: Pending[]): Promise<void> {
    let pending = batch;
    try {
      for (let attempt = 0; pending.length; attempt++) {
        pending = await this.#tryCommit(pending, attempt);
        if (pending.length && attempt > 200) {
          throw new Error("Cannot append: too much contention on the conversation heads");
        }
      }
    } catch (error) {
      for (const p of pending) p.reject(error);
    }
  }

  /** One attempt; returns the appends still to store. */
  async #tryCommit(batch: Pending[], attempt: number): Promise<Pending[]> {
    // Within one batch a repeated (sender, id) is a duplicate of the first.
    const firsts = new Map<string, Pending>();
    const repeats: [Pending, Pending][] = [];
    for (const p of batch) {
      const k = `${p.input.from}\u0000${p.input.id}`;
      const first = firsts.get(k);
      if (first) repeats.push([p, first]);
      else firsts.set(k, p);
    }
    let unique = [...firsts.values()];

    // After a failed check, look up which messages were stored meanwhile.
    if (attempt > 0) {
      const stored = await getMany<{ conv: ConversationId; seq: number }>(
        this.#kv,
        unique.map((p) => dedupeKey(p.input.from, p.input.id)),
      );
      const found = unique.filter((_, i) => stored[i].value);
      if (found.length) {
        const messages = await Promise.all(found.map(async (p) => {
          const where = stored[unique.indexOf(p)].value!;
          const entry = await retryLocked(() =>
            this.#kv.get<ChatMessage>(messageKey(where.conv, where.seq))
          );
          return entry.value;
        }));
        found.forEach((p, i) => {
          const message = messages[i] ?? this.#ghost(p.input, stored[unique.indexOf(p)].value!);
          p.resolve({ message, duplicate: true });
        });
        unique = unique.filter((p) => !found.includes(p));
      }
      // A failed check may be a precondition: refuse the appends whose key is now present.
      const guarded = unique.filter((p) => p.input.refuseIf);
      if (guarded.length) {
        const present = await getMany(this.#kv, guarded.map((p) => p.input.refuseIf!.key));
        const refused = guarded.filter((_, i) => present[i].versionstamp !== null);
        for (const p of refused) p.reject(p.input.refuseIf!.error());
        if (refused.length) unique = unique.filter((p) => !refused.includes(p));
      }
    }

    const convs = [...new Set(unique.map((p) => p.input.conv))];
    const missing = convs.filter((c) => !this.#heads.has(c));
    if (missing.length) {
      const entries = await getMany<number>(this.#kv, missing.map(headKey));
      missing.forEach((conv, i) =>
        this.#heads.set(conv, { seq: entries[i].value ?? 0, versionstamp: entries[i].versionstamp })
      );
    }

    const now = this.#now();
    const { retentionCount, retentionMs } = this.#options;
    const atomic = this.#kv.atomic();
    const next = new Map<ConversationId, number>();
    for (const conv of convs) {
      const head = this.#heads.get(conv)!;
      atomic.check({ key: headKey(conv), versionstamp: head.versionstamp });
      next.set(conv, head.seq);
    }
    const planned: [Pending, ChatMessage][] = [];
    for (const p of unique) {
      const seq = next.get(p.input.conv)! + 1;
      next.set(p.input.conv, seq);
      const message: ChatMessage = {
        conv: p.input.conv,
        seq,
        id: p.input.id,
        from: p.input.from,
        name: p.input.name,
        text: p.input.text,
        ts: now,
        kind: p.input.kind,
      };
      if (p.input.meta) message.meta = p.input.meta;
      planned.push([p, message]);
      const dk = dedupeKey(p.input.from, p.input.id);
      atomic.check({ key: dk, versionstamp: null });
      if (p.input.refuseIf) atomic.check({ key: p.input.refuseIf.key, versionstamp: null });
      atomic.set(messageKey(message.conv, seq), message, { expireIn: retentionMs });
      atomic.set(dk, { conv: message.conv, seq, ts: now }, {
        expireIn: Math.max(retentionMs, DEDUPE_MS),
      });
      if (seq > retentionCount) atomic.delete(messageKey(message.conv, seq - retentionCount));
    }
    const heads: Record<ConversationId, number> = {};
    for (const [conv, seq] of next) {
      atomic.set(headKey(conv), seq);
      heads[conv] = seq;
    }
    const relay = this.#options.relay;
    const relayed = relay !== undefined && planned.length > 0 && (relay.active?.() ?? true);
    if (relayed) {
      const entry: RelayEntry = { node: relay.node, heads };
      atomic.set([...RELAY_LOG_PREFIX, this.#kv.commitVersionstamp()], entry, {
        expireIn: 10 * 60_000,
      });
      atomic.sum(RELAY_COUNT_KEY, 1n);
    }

    if (planned.length) {
      let result: Deno.KvCommitResult | Deno.KvCommitError;
      const started = performance.now();
      try {
        result = await atomic.commit();
      } catch (error) {
        if (!isRetryableKvError(error)) throw error;
        this.stats.locked++;
        await new Promise((r) => setTimeout(r, Math.min(50, 1 + attempt + Math.random() * 4)));
        return [...unique, ...repeats.map(([p]) => p)];
      }
      if (!result.ok) {
        this.stats.conflicts++;
        for (const conv of convs) this.#heads.delete(conv);
        return [...unique, ...repeats.map(([p]) => p)];
      }
      this.stats.commits++;
      for (const conv of convs) {
        this.#heads.set(conv, { seq: next.get(conv)!, versionstamp: result.versionstamp });
      }
      if (relayed) relay.committed?.(result.versionstamp);
      try {
        this.#options.onCommit?.(
          planned.map(([, m]) => m),
          performance.now() - started,
          result.versionstamp,
        );
      } catch {
        // The messages are stored: a failing listener must not turn that into an error.
      }
      for (const [p, message] of planned) p.resolve({ message, duplicate: false });
    }
    // Repeats resolve after their first, as duplicates of it.
    const byKey = new Map(planned.map(([p, m]) => [`${p.input.from}\u0000${p.input.id}`, m]));
    const retry: Pending[] = [];
    for (const [p] of repeats) {
      const m = byKey.get(`${p.input.from}\u0000${p.input.id}`);
      if (m) p.resolve({ message: m, duplicate: true });
      else retry.push(p);
    }
    return retry;
  }

  /** A stand-in for a duplicate whose stored message has since expired. */
  #ghost(input: AppendInput, where: { conv: ConversationId; seq: number }): ChatMessage {
    return { ...input, conv: where.conv, seq: where.seq, ts: 0 };
  }
}
