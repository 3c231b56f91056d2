/**
 * The hub: who on this node receives what. It keeps the node's connections in rooms, one per
 * conversation, and fans out each conversation's messages in sequence order, exactly once per
 * connection: it tracks the last sequence fanned out per conversation, and when a notice says
 * the log has moved further than the messages in hand, it fills the gap from the log before
 * delivering. It never touches sockets, Hono or KV directly: connections, the log and the bus
 * are passed in.
 *
 * Per connection it keeps a cursor per conversation: the last sequence sent (or held) to it. A
 * message goes to a connection only when its cursor is at the message's predecessor, so every
 * connection sees each conversation gap-free and in order; a connection that is behind (it
 * joined while this node was further on, or a message was skipped for it) is caught up from the
 * log, in the conversation's queue, before it gets anything newer. See `docs/delivery.md`.
 *
 * @module
 */
import type { Bus, Envelope, EnvelopeBody } from "./bus.ts";
import { Presence } from "./presence.ts";
import type {
  ChatMessage,
  ConversationId,
  ServerFrame,
  ServerFrameOf,
  UserId,
  UserInfo,
} from "./protocol.ts";
import { parseConversation } from "./protocol.ts";

/** One client connection, as the hub sees it. */
export interface Connection {
  readonly id: string;
  readonly user: UserInfo;
  /** Queues a text frame; never blocks. */
  send(data: string): void;
  /** Bytes queued and not yet sent. */
  bufferedAmount(): number;
  close(code: number, reason: string): void;
  /**
   * Whether it gets every presence change even in a crowd (the legacy dialects' user lists);
   * otherwise only those of the users it watches once more than `presenceCrowd` are online.
   */
  readonly allPresence?: boolean;
}

/** What the hub reads from the log of record. */
export interface HubLog {
  range(conv: ConversationId, after: number, to: number, limit?: number): Promise<ChatMessage[]>;
  head(conv: ConversationId): Promise<number>;
  /** Another node's commit `versionstamp` moved the head of `conv` to `seq`. */
  heard?(conv: ConversationId, seq: number, versionstamp: string): void;
}

/** Counters the hub moves, for `/metrics`. */
export interface HubStats {
  delivered: number;
  gapFills: number;
  gapMessages: number;
  slowClosed: number;
  busIn: number;
  busOut: number;
}

/** Options of {@linkcode Hub}. */
export interface HubOptions {
  node: string;
  log: HubLog;
  bus: Bus;
  /** Bytes queued on a socket beyond which it is closed as a slow consumer. */
  maxBufferedBytes: number;
  /** Most messages replayed per conversation on resume before the client must reload. */
  resumeLimit: number;
  /** Live frames kept for a connection that has not sent its first frame yet. */
  maxHeld?: number;
  /** Milliseconds a new connection's live messages wait for its first frame (`resume`). */
  holdMs?: number;
  /** Milliseconds between heartbeats. */
  heartbeatMs?: number;
  /**
   * Online users (or changes in one flush) above which presence changes go only to the
   * connections that watch the user (a direct conversation with them, or `presence.watch`),
   * and everyone else gets the online count at most every `presenceCountMs` (default 200).
   */
  presenceCrowd?: number;
  /** Milliseconds between count-only presence frames in a crowd (default 5000). */
  presenceCountMs?: number;
  /** Called with the latency from a message's timestamp to its fan-out, per message. */
  onFanout?: (message: ChatMessage, recipients: number) => void;
  /** Errors the hub recovers from (a failed gap fill is retried). */
  onError?: (error: unknown, context: string) => void;
  now?: () => number;
}

/** Close code for a connection that does not read its messages fast enough. */
export const CLOSE_SLOW_CONSUMER = 1013;
/** Close code when the hub cannot replay what a connection missed: reconnect and resume. */
export const CLOSE_RESUME_FAILED = 1011;
/** Close code on shutdown: reconnect (to another instance, or this one once restarted). */
export const CLOSE_RESTARTING = 1012;

/** Most messages read from the log at once to fill a gap. */
const GAP_CHUNK = 500;

interface Held {
  conv: ConversationId;
  /** The frame's sequence: it is dropped at release when the resume already covered it. */
  seq: number;
  data: string;
}

interface Member {
  conn: Connection;
  /** Its seat in each conversation it receives. */
  seats: Map<ConversationId, Seat>;
  /** Live frames held until the client has resumed; null once live. */
  held: Held[] | null;
  holdTimer?: ReturnType<typeof setTimeout>;
  resumedTo?: Map<ConversationId, number>;
  closing: boolean;
  /** Frames written, to check the send queue every few frames. */
  writes: number;
  /** Whether it got the `reconnect` frame of a shutdown. */
  warned?: boolean;
  /** Users whose presence it asked for (`presence.watch`). */
  watch?: Set<UserId>;
}

/**
 * A connection's place in one conversation's room. The room holds the seats themselves, so a
 * fan-out reads and moves each member's cursor on the seat in hand, where it looked it up in two
 * maps of the member's (three lookups per member per message). A seat is the member's for as
 * long as it stays in the room: a catch-up queued for a seat that has been left does nothing,
 * even if the member joined again meanwhile (its new seat has a catch-up of its own).
 */
interface Seat {
  readonly member: Member;
  /** The last sequence sent (or skipped as already known). */
  cursor: number;
  /** A catch-up from the log is queued: live messages wait for it. */
  lagging: boolean;
}

type PresenceChange = { user: UserInfo; online: boolean };

interface ConvState {
  fanned: number;
  target: number;
  stash: Map<number, ChatMessage>;
  busy: boolean;
  tasks: (() => Promise<void>)[];
  retry?: ReturnType<typeof setTimeout>;
}

/**
 * Local connections, rooms and in-order fan-out of one node.
 *
 * @example
 * ```ts
 * const hub = new Hub({ node: "n1", log, bus, maxBufferedBytes: 1 << 22, resumeLimit: 500 });
 * hub.attach(connection, new Map([["lobby", 41]]));
 * hub.appended([message]); // delivers locally, then tells the other nodes
 * ```
 */
export class Hub {
  readonly node: string;
  readonly presence: Presence;
  readonly stats: HubStats = {
    delivered: 0,
    gapFills: 0,
    gapMessages: 0,
    slowClosed: 0,
    busIn: 0,
    busOut: 0,
  };
  readonly #options: HubOptions;
  readonly #members = new Map<string, Member>();
  readonly #users = new Map<UserId, Set<Member>>();
  readonly #rooms = new Map<ConversationId, Set<Seat>>();
  readonly #convs = new Map<ConversationId, ConvState>();
  readonly #recent = new Map<ConversationId, { seq: number; at: number }>();
  /** The newest sequence this node has heard of per conversation (rooms here or not). */
  readonly #heard = new Map<ConversationId, number>();
  readonly #typingSent = new Map<string, number>();
  #presenceChanges: PresenceChange[] = [];
  #presenceTimer: ReturnType<typeof setTimeout> | undefined;
  /** Connections with a `presence.watch` list. */
  readonly #watching = new Set<Member>();
  /** The online count last sent to everyone, and when. */
  #countSent = { count: -1, at: 0 };
  #countTimer: ReturnType<typeof setTimeout> | undefined;
  #heartbeat: ReturnType<typeof setInterval> | undefined;
  readonly #retries = new Set<ReturnType<typeof setTimeout>>();
  #n = 0;
  #closed = false;
  /** Whether the bus was healthy at the last beat, and since when it is healthy again. */
  #busHealthy = true;
  #healthySince = 0;

  constructor(options: HubOptions) {
    this.#options = options;
    this.node = options.node;
    this.presence = new Presence({
      node: options.node,
      publish: (body) => this.publish(body),
      onChange: (user, online) => this.#presenceChanged(user, online),
      timeoutMs: (options.heartbeatMs ?? 2000) * 3.5,
      now: options.now,
    });
    options.bus.subscribe((envelope) => this.#receive(envelope));
  }

  /** Starts the heartbeat (presence and repair of dropped notices). */
  start(): void {
    this.presence.tick();
    this.#heartbeat = setInterval(() => this.#beat(), this.#options.heartbeatMs ?? 2000);
  }

  /** Number of open connections on this node. */
  get connections(): number {
    return this.#members.size;
  }

  /**
   * Adds a connection, subscribed to each conversation after the given sequence (what its
   * welcome frame reported). Live messages are held until {@linkcode Hub.resume} or the first
   * frame of the client, so a resumed client gets its missed messages before newer ones.
   */
  attach(conn: Connection, cursors: Map<ConversationId, number>): void {
    const member: Member = {
      conn,
      seats: new Map(),
      held: [],
      closing: false,
      writes: 0,
    };
    this.#members.set(conn.id, member);
    let own = this.#users.get(conn.user.id);
    if (!own) this.#users.set(conn.user.id, own = new Set());
    own.add(member);
    for (const [conv, cursor] of cursors) this.#join(member, conv, cursor);
    member.holdTimer = setTimeout(() => this.#release(member), this.#options.holdMs ?? 5000);
    this.presence.connect(conn.user);
  }

  /** Removes a connection from every room. */
  detach(conn: Connection): void {
    const member = this.#members.get(conn.id);
    if (!member) return;
    clearTimeout(member.holdTimer);
    this.#members.delete(conn.id);
    const own = this.#users.get(conn.user.id);
    own?.delete(member);
    if (own?.size === 0) this.#users.delete(conn.user.id);
    for (const conv of member.seats.keys()) this.#leave(member, conv);
    this.#watching.delete(member);
    this.presence.disconnect(conn.user);
  }

  /**
   * Sets the users whose presence changes a connection gets even in a crowd (besides the peers
   * of its direct conversations), replacing the previous list.
   */
  watch(connId: string, users: UserId[]): void {
    const member = this.#members.get(connId);
    if (!member) return;
    if (users.length === 0) {
      member.watch = undefined;
      this.#watching.delete(member);
      return;
    }
    member.watch = new Set(users);
    this.#watching.add(member);
  }

  /** Whether a connection receives a conversation (and so may write to it). */
  isSubscribed(connId: string, conv: ConversationId): boolean {
    return this.#members.get(connId)?.seats.has(conv) ?? false;
  }

  /** The conversations a connection receives. */
  subscriptions(connId: string): ConversationId[] {
    return [...this.#members.get(connId)?.seats.keys() ?? []];
  }

  /** Subscribes every connection of `user`, on every node, to `conv` after `cursor`. */
  subscribe(user: UserId, conv: ConversationId, cursor: number): void {
    this.#subscribeLocal(user, conv, cursor);
    this.publish({ k: "subscribe", user, conv, cursor });
  }

  /** Unsubscribes every connection of `user`, on every node, from `conv`. */
  unsubscribe(user: UserId, conv: ConversationId): void {
    this.#unsubscribeLocal(user, conv);
    this.publish({ k: "unsubscribe", user, conv });
  }

  /** Sends a frame to every connection of `user` on every node. */
  sendToUser(user: UserId, frame: ServerFrame): void {
    this.#sendToUserLocal(user, frame);
    this.publish({ k: "user", user, frame });
  }

  /** Closes every connection of `user` on every node. */
  kick(user: UserId, reason: string): void {
    this.#kickLocal(user, reason);
    this.publish({ k: "kick", user, reason });
  }

  /**
   * New messages were committed by this node (in the commit `versionstamp`, when known): deliver
   * them here at once, then tell the other nodes (local delivery never waits on the bus).
   */
  appended(messages: ChatMessage[], versionstamp?: string): void {
    const byConv = new Map<ConversationId, ChatMessage[]>();
    for (const m of messages) {
      let list = byConv.get(m.conv);
      if (!list) byConv.set(m.conv, list = []);
      list.push(m);
    }
    const now = Date.now();
    for (const [conv, list] of byConv) {
      list.sort((a, b) => a.seq - b.seq);
      const seq = list[list.length - 1].seq;
      this.notify(conv, seq, list);
      this.#recent.set(conv, { seq, at: now });
      this.publish({
        k: "append",
        conv,
        seq,
        messages: list.length <= 64 ? list : undefined,
        vs: versionstamp,
      });
    }
  }

  /**
   * The log of `conv` reaches `seq`; `messages`, when given, are some of the newest. Delivers
   * everything this node has not fanned out yet, in order, reading the gap from the log.
   */
  notify(conv: ConversationId, seq: number, messages?: ChatMessage[]): void {
    if (seq > (this.#heard.get(conv) ?? 0)) {
      // Least recently heard first: what is dropped was heard long before any welcome now open.
      this.#heard.delete(conv);
      if (this.#heard.size >= 100_000) this.#heard.delete(this.#heard.keys().next().value!);
      this.#heard.set(conv, seq);
    }
    if (conv.startsWith("d:")) this.#directMembers(conv);
    const room = this.#rooms.get(conv);
    if (!room || room.size === 0) return;
    const state = this.#stateOf(conv, room, seq);
    if (messages) {
      for (const m of messages) {
        if (m.seq > state.fanned) state.stash.set(m.seq, m);
      }
    }
    if (seq > state.target) state.target = seq;
    this.#pump(conv, state);
  }

  /**
   * Replays what a connection missed since `since` (per conversation), in order, then lets
   * its live messages through. More than `resumeLimit` missed: a `resumed` frame with
   * `reload: true` tells the client to reload that conversation's history instead.
   */
  async resume(connId: string, since: Record<ConversationId, number>): Promise<void> {
    const member = this.#members.get(connId);
    if (!member) return;
    if (member.held) member.resumedTo ??= new Map();
    const tasks: Promise<void>[] = [];
    for (const [conv, seen] of Object.entries(since)) {
      if (!member.seats.has(conv)) continue;
      tasks.push(this.#enqueue(conv, () => this.#resumeOne(member, conv, seen)));
    }
    const results = await Promise.allSettled(tasks);
    const failed = results.find((r) => r.status === "rejected");
    if (failed) {
      // Releasing now would leave a gap: make the client reconnect and resume again.
      this.#options.onError?.((failed as PromiseRejectedResult).reason, "resume");
      member.closing = true;
      clearTimeout(member.holdTimer);
      try {
        member.conn.close(CLOSE_RESUME_FAILED, "Cannot resume: reconnect");
      } catch {
        // Already closed.
      }
      return;
    }
    this.#release(member);
  }

  /** Lets a connection's live messages through, without replaying anything. */
  live(connId: string): void {
    const member = this.#members.get(connId);
    if (member) this.#release(member);
  }

  /**
   * Tells the others in `conv` that the connection's user is typing. Sent at most once a
   * second per user and conversation; returns false when throttled.
   */
  typing(conn: Connection, conv: ConversationId): boolean {
    const key = `${conn.user.id}\u0000${conv}`;
    const now = Date.now();
    if (now - (this.#typingSent.get(key) ?? 0) < 1000) return false;
    this.#typingSent.set(key, now);
    if (this.#typingSent.size > 10_000) this.#typingSent.clear();
    this.#typingLocal(conv, conn.user);
    this.publish({ k: "typing", conv, user: conn.user });
    return true;
  }

  /** Publishes an envelope on the bus, stamped with this node and a number. */
  publish(body: EnvelopeBody): void {
    // After close only appends go out: the log's last commits must reach the other nodes.
    if (this.#closed && body.k !== "append") return;
    this.stats.busOut++;
    this.#options.bus.publish({ ...body, node: this.node, n: ++this.#n } as Envelope);
  }

  /**
   * Tells every connection that the server is about to restart (a `reconnect` frame) before
   * {@linkcode Hub.close} closes them: clients stop sending, so no frame of theirs is still in
   * flight when the socket closes (the runtime may then reset the connection, and the client
   * sees an abnormal closure instead of the close code).
   */
  announceRestart(reason = "Server restarting: reconnect"): void {
    if (this.#closed) return;
    const data = JSON.stringify({ type: "reconnect", reason } satisfies ServerFrame);
    for (const member of this.#members.values()) {
      if (member.warned) continue;
      member.warned = true;
      try {
        member.conn.send(data);
      } catch {
        // Already closed.
      }
    }
  }

  /**
   * Closes every connection with `code` (after a `reconnect` frame) and stops the heartbeat.
   * Appends committed afterwards (the log finishing its writes on shutdown) are still
   * published, so the other nodes deliver them.
   */
  close(code = CLOSE_RESTARTING, reason = "Server restarting: reconnect"): void {
    if (this.#closed) return;
    for (const member of this.#members.values()) {
      member.closing = true;
      try {
        if (!member.warned) {
          member.conn.send(JSON.stringify({ type: "reconnect", reason } satisfies ServerFrame));
        }
        member.conn.close(code, reason);
      } catch {
        // Already closed.
      }
      clearTimeout(member.holdTimer);
    }
    this.presence.leave();
    this.#closed = true;
    clearInterval(this.#heartbeat);
    clearTimeout(this.#presenceTimer);
    clearTimeout(this.#countTimer);
    for (const state of this.#convs.values()) clearTimeout(state.retry);
    for (const timer of this.#retries) clearTimeout(timer);
    this.#retries.clear();
  }

  // ---- rooms ------------------------------------------------------------------------------

  #join(member: Member, conv: ConversationId, cursor: number): void {
    if (member.seats.has(conv)) return;
    const seat: Seat = { member, cursor, lagging: false };
    member.seats.set(conv, seat);
    let room = this.#rooms.get(conv);
    if (!room) this.#rooms.set(conv, room = new Set());
    room.add(seat);
    const state = this.#convs.get(conv);
    // This node is past the connection's cursor: send it what it is missing first.
    if (state && state.fanned > cursor) this.#catchUp(seat, conv, state);
  }

  #leave(member: Member, conv: ConversationId): void {
    const seat = member.seats.get(conv);
    if (!seat) return;
    member.seats.delete(conv);
    const room = this.#rooms.get(conv);
    if (!room) return;
    room.delete(seat);
    if (room.size === 0) {
      this.#rooms.delete(conv);
      const state = this.#convs.get(conv);
      if (state && !state.busy) {
        clearTimeout(state.retry);
        this.#convs.delete(conv);
      }
    }
  }

  #subscribeLocal(user: UserId, conv: ConversationId, cursor: number): void {
    for (const member of this.#users.get(user) ?? []) this.#join(member, conv, cursor);
  }

  #unsubscribeLocal(user: UserId, conv: ConversationId): void {
    for (const member of this.#users.get(user) ?? []) this.#leave(member, conv);
  }

  /**
   * Both users of a direct conversation receive it, even a connection that opened before the
   * conversation existed (its welcome did not list it). Such a connection has seen none of it,
   * so it joins at 0 and is caught up from the log (or told to reload past `resumeLimit`).
   */
  #directMembers(conv: ConversationId): void {
    const parsed = parseConversation(conv);
    if (parsed.kind !== "direct") return;
    for (const user of new Set(parsed.users)) {
      for (const member of this.#users.get(user) ?? []) {
        if (!member.seats.has(conv)) this.#join(member, conv, 0);
      }
    }
  }

  // ---- ordered fan-out --------------------------------------------------------------------

  /**
   * The fan-out state of `conv`, started (when new) at the lowest cursor in its room, or at
   * `empty` when the room is empty: its connections are all live (or held) and need everything
   * after their cursor, however far the log has gone.
   */
  #stateOf(conv: ConversationId, room: Set<Seat>, empty: number): ConvState {
    let state = this.#convs.get(conv);
    if (!state) {
      let min = Infinity;
      for (const seat of room) min = Math.min(min, seat.cursor);
      const fanned = min === Infinity ? empty : min;
      state = { fanned, target: fanned, stash: new Map(), busy: false, tasks: [] };
      this.#convs.set(conv, state);
    }
    return state;
  }

  #enqueue(conv: ConversationId, task: () => Promise<void>): Promise<void> {
    const state = this.#stateOf(conv, this.#rooms.get(conv) ?? new Set(), 0);
    return new Promise((resolve, reject) => {
      state.tasks.push(() => task().then(resolve, reject));
      this.#pump(conv, state);
    });
  }

  #pump(conv: ConversationId, state: ConvState): void {
    if (state.busy || this.#closed) return;
    state.busy = true;
    void this.#run(conv, state);
  }

  // Runs synchronously up to the first gap: messages in hand go out in the same tick.
  async #run(conv: ConversationId, state: ConvState): Promise<void> {
    try {
      for (;;) {
        const task = state.tasks.shift();
        if (task) {
          await task().catch((e) => this.#options.onError?.(e, "hub task"));
          continue;
        }
        if (state.fanned >= state.target) break;
        const next = state.fanned + 1;
        if (state.stash.has(next)) {
          const batch: ChatMessage[] = [];
          for (let s = next; state.stash.has(s); s++) {
            batch.push(state.stash.get(s)!);
            state.stash.delete(s);
          }
          this.#deliver(conv, state, batch);
          continue;
        }
        // Read the gap in chunks: a bus that dropped a burst can leave thousands missing.
        let upto = Math.min(state.target, state.fanned + GAP_CHUNK);
        for (const s of state.stash.keys()) {
          if (s > state.fanned && s - 1 < upto) upto = s - 1;
        }
        this.stats.gapFills++;
        const missing = await this.#options.log.range(conv, state.fanned, upto);
        this.stats.gapMessages += missing.length;
        this.#deliver(conv, state, missing);
        // Expired or trimmed messages are skipped, not waited for: connections that had
        // everything before them have everything up to `upto`.
        if (state.fanned < upto) {
          for (const seat of this.#rooms.get(conv) ?? []) {
            if (seat.cursor === state.fanned && !seat.lagging) seat.cursor = upto;
          }
          state.fanned = upto;
        }
      }
    } catch (error) {
      this.#options.onError?.(error, "gap fill");
      if (!this.#closed) {
        clearTimeout(state.retry);
        state.retry = setTimeout(() => this.#pump(conv, state), 200);
      }
    } finally {
      state.busy = false;
      for (const s of state.stash.keys()) if (s <= state.fanned) state.stash.delete(s);
      if (!this.#rooms.has(conv) && state.tasks.length === 0 && this.#convs.get(conv) === state) {
        clearTimeout(state.retry);
        this.#convs.delete(conv);
      }
    }
  }

  /** Fans out messages that follow `state.fanned` in the log (with no others between). */
  #deliver(conv: ConversationId, state: ConvState, messages: ChatMessage[]): void {
    for (const m of messages) {
      if (m.seq <= state.fanned) continue;
      const prev = state.fanned;
      const event = m.meta?.event;
      if (event === "joined" || event === "added" || event === "created") {
        this.#subscribeLocal(m.meta!.user.id, conv, m.seq - 1);
      }
      state.fanned = m.seq;
      const room = this.#rooms.get(conv);
      if (room) {
        const data = frameOf(m);
        for (const seat of room) this.#send(seat, conv, m.seq, data, prev, state);
        this.stats.delivered += room.size;
        this.#options.onFanout?.(m, room.size);
      }
      if (event === "left" || event === "removed") this.#unsubscribeLocal(m.meta!.user.id, conv);
    }
  }

  /**
   * Sends message `seq` of `conv`, whose predecessor in the log is `prev`, if the connection is
   * right behind it; a connection further behind is caught up from the log instead.
   */
  #send(
    seat: Seat,
    conv: ConversationId,
    seq: number,
    data: string,
    prev: number,
    state: ConvState,
  ): void {
    const cursor = seat.cursor;
    if (seq <= cursor || seat.lagging) return;
    if (cursor < prev) {
      this.#catchUp(seat, conv, state);
      return;
    }
    seat.cursor = seq;
    this.#emit(seat.member, conv, seq, data);
  }

  /** Sends a frame now, or holds it while the connection has not resumed. */
  #emit(member: Member, conv: ConversationId, seq: number, data: string): void {
    if (member.held) {
      member.held.push({ conv, seq, data });
      if (member.held.length > (this.#options.maxHeld ?? 10_000)) this.#slow(member);
      return;
    }
    this.#write(member, data);
  }

  /**
   * Queues, in the conversation's order, a read of what a connection misses up to what this
   * node has fanned out; live messages skip it until then. Past `resumeLimit` it gets a
   * `resumed` frame with `reload: true` (reload that range of history) instead.
   */
  #catchUp(seat: Seat, conv: ConversationId, state: ConvState): void {
    const { member } = seat;
    if (seat.lagging || member.closing) return;
    seat.lagging = true;
    // Still seated: not left (nor left and joined again, with a seat of its own).
    const seated = () => member.seats.get(conv) === seat && this.#members.has(member.conn.id);
    state.tasks.push(async () => {
      let retry = false;
      try {
        const cursor = seat.cursor;
        if (!seated()) return;
        const upto = state.fanned;
        if (upto <= cursor) return;
        if (upto - cursor > this.#options.resumeLimit) {
          seat.cursor = upto;
          const frame: ServerFrameOf<"resumed"> = {
            type: "resumed",
            conv,
            from: cursor,
            to: upto,
            reload: true,
          };
          this.#emit(member, conv, upto, JSON.stringify(frame));
          return;
        }
        let missing: ChatMessage[];
        try {
          missing = await this.#options.log.range(conv, cursor, upto);
        } catch (error) {
          this.#options.onError?.(error, "catch-up");
          retry = true;
          return;
        }
        // Left (and maybe rejoined: that join decides what it gets) or resumed meanwhile.
        if (!seated() || seat.cursor !== cursor || !seat.lagging) return;
        for (const m of missing) {
          seat.cursor = m.seq;
          this.#emit(member, conv, m.seq, frameOf(m));
        }
        seat.cursor = upto;
      } finally {
        seat.lagging = false;
        if (retry && !this.#closed) {
          const timer = setTimeout(() => {
            this.#retries.delete(timer);
            const now = this.#convs.get(conv);
            if (now && seated() && seat.cursor < now.fanned) this.#catchUp(seat, conv, now);
          }, 200);
          this.#retries.add(timer);
        }
      }
    });
    this.#pump(conv, state);
  }

  #write(member: Member, data: string): void {
    if (member.closing) return;
    try {
      member.conn.send(data);
    } catch {
      return;
    }
    // Checked every 8th frame: the queue grows by a few frames between checks, and the check
    // is a call into the runtime that costs as much as a third of a send.
    if (
      (++member.writes & 7) === 0 && member.conn.bufferedAmount() > this.#options.maxBufferedBytes
    ) {
      this.#slow(member);
    }
  }

  #slow(member: Member): void {
    if (member.closing) return;
    member.closing = true;
    this.stats.slowClosed++;
    try {
      member.conn.close(CLOSE_SLOW_CONSUMER, "Slow consumer: reconnect and resume");
    } catch {
      // Already closed.
    }
  }

  /**
   * Replays one conversation after `seen`. Runs in the conversation's queue, so no live message
   * of it goes out meanwhile; live ones already held are dropped at release up to `to`.
   */
  async #resumeOne(member: Member, conv: ConversationId, seen: number): Promise<void> {
    let seat = member.seats.get(conv);
    if (!this.#members.has(member.conn.id) || !seat) return;
    const cursor = seat.cursor;
    const limit = this.#options.resumeLimit;
    let to = seen;
    let reload = false;
    if (!member.held) {
      // Live messages already went out past `cursor`: replaying would repeat or reorder them.
      if (seen < cursor) {
        to = cursor;
        reload = true;
      }
    } else if (
      seen === cursor && !seat.lagging && (this.#heard.get(conv) ?? 0) <= cursor
    ) {
      // Resumed from where the welcome put it, and this node has heard of nothing newer: what
      // comes later reaches it live (held until now), so there is nothing to read.
      member.resumedTo?.set(conv, to);
    } else {
      const missed = await this.#options.log.range(conv, seen, Number.MAX_SAFE_INTEGER, limit + 1);
      seat = member.seats.get(conv);
      if (!seat) return;
      if (missed.length > limit) {
        reload = true;
        to = Math.max(missed[missed.length - 1].seq, await this.#options.log.head(conv));
      } else {
        for (const m of missed) this.#write(member, frameOf(m));
        if (missed.length) to = missed[missed.length - 1].seq;
      }
      member.resumedTo?.set(conv, to);
      // Messages behind this connection are in KV: it has everything up to `to` now.
      seat.lagging = false;
    }
    if (to > seat.cursor) seat.cursor = to;
    const frame: ServerFrameOf<"resumed"> = { type: "resumed", conv, from: seen, to, reload };
    this.#write(member, JSON.stringify(frame));
  }

  #release(member: Member): void {
    clearTimeout(member.holdTimer);
    // An idle connection keeps its member for hours: not the spent timer too.
    member.holdTimer = undefined;
    const held = member.held;
    if (!held) return;
    member.held = null;
    const resumed = member.resumedTo;
    member.resumedTo = undefined;
    for (const h of held) {
      if (resumed && h.seq <= (resumed.get(h.conv) ?? 0)) continue;
      this.#write(member, h.data);
    }
  }

  // ---- bus --------------------------------------------------------------------------------

  #receive(envelope: Envelope): void {
    if (envelope.node === this.node || this.#closed) return;
    this.stats.busIn++;
    switch (envelope.k) {
      case "append":
        if (envelope.vs) this.#options.log.heard?.(envelope.conv, envelope.seq, envelope.vs);
        this.notify(envelope.conv, envelope.seq, envelope.messages);
        return;
      case "heads":
        for (const [conv, seq] of Object.entries(envelope.heads)) this.notify(conv, seq);
        return;
      case "presence":
      case "node":
      case "snapshot":
      case "down":
        this.presence.receive(envelope);
        return;
      case "typing":
        this.#typingLocal(envelope.conv, envelope.user);
        return;
      case "user":
        this.#sendToUserLocal(envelope.user, envelope.frame);
        return;
      case "subscribe":
        this.#subscribeLocal(envelope.user, envelope.conv, envelope.cursor);
        return;
      case "unsubscribe":
        this.#unsubscribeLocal(envelope.user, envelope.conv);
        return;
      case "kick":
        this.#kickLocal(envelope.user, envelope.reason);
        return;
    }
  }

  #beat(): void {
    this.presence.tick();
    const healthy = this.#options.bus.healthy();
    if (!healthy) this.#busHealthy = false;
    else if (!this.#busHealthy) {
      // Back after an outage: what was published meanwhile is lost. Repeat our recent heads
      // for another window (below), and repair every room here from the log.
      this.#busHealthy = true;
      this.#healthySince = Date.now();
      void this.#repairRooms();
    }
    // Repeat the newest sequence of recently active conversations: a node that missed an
    // `append` (a lossy bus) learns of it here and fills the gap from the log.
    const now = Date.now();
    const heads: Record<ConversationId, number> = {};
    let count = 0;
    for (const [conv, { seq, at }] of this.#recent) {
      // Kept while the bus is down, and for 10 s after it is back.
      if (healthy && now - Math.max(at, this.#healthySince) > 10_000) this.#recent.delete(conv);
      else if (count++ < 500) heads[conv] = seq;
    }
    if (count) this.publish({ k: "heads", heads });
  }

  /** Reads the head of every conversation with a room here and delivers what is new. */
  async #repairRooms(): Promise<void> {
    const convs = [...this.#rooms.keys()];
    for (let i = 0; i < convs.length && !this.#closed; i += 10) {
      const batch = convs.slice(i, i + 10);
      try {
        const heads = await Promise.all(batch.map((conv) => this.#options.log.head(conv)));
        batch.forEach((conv, j) => this.notify(conv, heads[j]));
      } catch (error) {
        this.#options.onError?.(error, "repair after bus outage");
      }
    }
  }

  #typingLocal(conv: ConversationId, user: UserInfo): void {
    const room = this.#rooms.get(conv);
    if (!room) return;
    const data = JSON.stringify({ type: "typing", conv, user } satisfies ServerFrame);
    for (const { member } of room) {
      if (member.conn.user.id !== user.id) this.#write(member, data);
    }
  }

  #sendToUserLocal(user: UserId, frame: ServerFrame): void {
    const own = this.#users.get(user);
    if (!own) return;
    const data = JSON.stringify(frame);
    for (const member of own) this.#write(member, data);
  }

  #kickLocal(user: UserId, reason: string): void {
    for (const member of this.#users.get(user) ?? []) {
      member.closing = true;
      try {
        member.conn.close(1008, reason);
      } catch {
        // Already closed.
      }
    }
  }

  #presenceChanged(user: UserInfo, online: boolean): void {
    this.#presenceChanges.push({ user, online });
    if (this.#presenceTimer !== undefined || this.#closed) return;
    // Coalesce: a burst of sign-ins is one frame per connection, not one per sign-in.
    const delay = Math.min(1000, 100 + this.#members.size / 10);
    this.#presenceTimer = setTimeout(() => {
      this.#presenceTimer = undefined;
      this.#flushPresence();
    }, delay);
  }

  /**
   * Sends the coalesced presence changes. A small crowd gets every change; a big one would cost
   * changes × connections bytes (ten thousand sign-ins, ten thousand sockets: a hundred million
   * entries), so there each connection gets only the changes of the users it watches (its
   * direct conversations' peers and its `presence.watch` list), and the online count.
   */
  #flushPresence(): void {
    // Only the last change of each user within one flush is sent.
    const last = new Map<UserId, PresenceChange>();
    for (const change of this.#presenceChanges) last.set(change.user.id, change);
    this.#presenceChanges = [];
    const count = this.presence.count;
    const crowd = this.#options.presenceCrowd ?? 200;
    if (last.size <= crowd && count <= crowd) {
      const changes = [...last.values()];
      const data = JSON.stringify({ type: "presence", changes, count } satisfies ServerFrame);
      for (const member of this.#members.values()) this.#write(member, data);
      this.#countSent = { count, at: Date.now() };
      return;
    }
    const per = new Map<Member, Map<UserId, PresenceChange>>();
    const add = (member: Member, change: PresenceChange) => {
      let changes = per.get(member);
      if (!changes) per.set(member, changes = new Map());
      changes.set(change.user.id, change);
    };
    for (const [conv, room] of this.#rooms) {
      if (!conv.startsWith("d:")) continue;
      const parsed = parseConversation(conv);
      if (parsed.kind !== "direct") continue;
      const [a, b] = parsed.users;
      const changeA = last.get(a), changeB = last.get(b);
      if (!changeA && !changeB) continue;
      for (const { member } of room) {
        const change = member.conn.user.id === a ? changeB : changeA;
        if (change) add(member, change);
      }
    }
    for (const member of this.#watching) {
      for (const id of member.watch!) {
        const change = last.get(id);
        if (change) add(member, change);
      }
    }
    const all = [...last.values()];
    const countDue = Date.now() - this.#countSent.at >= (this.#options.presenceCountMs ?? 5000);
    const countOnly = countFrame(count);
    let allData: string | undefined;
    for (const member of this.#members.values()) {
      if (member.conn.allPresence) {
        allData ??= JSON.stringify(
          { type: "presence", changes: all, count, crowd: true } satisfies ServerFrame,
        );
        this.#write(member, allData);
        continue;
      }
      const changes = per.get(member);
      if (changes) {
        const frame: ServerFrame = {
          type: "presence",
          changes: [...changes.values()],
          count,
          crowd: true,
        };
        this.#write(member, JSON.stringify(frame));
      } else if (countDue) this.#write(member, countOnly);
    }
    if (countDue) this.#countSent = { count, at: Date.now() };
    else this.#scheduleCount();
  }

  /** Sends the online count to everyone once `presenceCountMs` has passed since the last. */
  #scheduleCount(): void {
    if (this.#countTimer !== undefined || this.#closed) return;
    const wait = (this.#options.presenceCountMs ?? 5000) - (Date.now() - this.#countSent.at);
    this.#countTimer = setTimeout(() => {
      this.#countTimer = undefined;
      const count = this.presence.count;
      if (count === this.#countSent.count) return;
      const data = countFrame(count);
      for (const member of this.#members.values()) this.#write(member, data);
      this.#countSent = { count, at: Date.now() };
    }, Math.max(0, wait));
  }
}

/** The presence frame of a crowd that carries only the online count. */
function countFrame(count: number): string {
  return JSON.stringify(
    { type: "presence", changes: [], count, crowd: true } satisfies ServerFrame,
  );
}

function frameOf(m: ChatMessage): string {
  return JSON.stringify({ type: "message", ...m });
}
