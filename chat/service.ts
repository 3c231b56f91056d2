/**
 * The chat service: what each client frame does. The data path of a message reads top to
 * bottom in {@linkcode ChatService.post}: check access and limits → append to the log of record
 * → (on commit) the hub fans out locally and publishes on the bus → ack.
 *
 * Transports (the socket route, the legacy dialects, the push API) call in here; nothing here
 * knows about sockets or HTTP.
 *
 * @module
 */
import type { Config } from "./config.ts";
import type { Directory, GroupRecord, UserRecord } from "./directory.ts";
import { randomId } from "./directory.ts";
import type { Connection, Hub } from "./hub.ts";
import type { Logger } from "./logger.ts";
import { blockKey, headKey, messageKey, readKey } from "./keys.ts";
import type { AppendInput, MessageLog } from "./message_log.ts";
import { getMany } from "./message_log.ts";
import type { Metrics } from "./metrics.ts";
import { canonicalName, checkGroupName, checkText } from "./names.ts";
import {
  ChatError,
  directConversation,
  groupConversation,
  LOBBY,
  parseClientFrame,
  parseConversation,
  utf8Length,
} from "./protocol.ts";
import type {
  ChatMessage,
  ClientFrame,
  ClientFrameOf,
  ConversationId,
  ConversationInfo,
  GroupInfo,
  Limits,
  MembershipEvent,
  ServerFrame,
  ServerFrameOf,
  UserId,
  UserInfo,
} from "./protocol.ts";
import { KeyedLimiter, TokenBucket } from "./rate_limit.ts";
import { withSpan } from "./telemetry.ts";

/** What the service needs. */
export interface ServiceDeps {
  config: Config;
  kv: Deno.Kv;
  log: MessageLog;
  directory: Directory;
  hub: Hub;
  metrics: Metrics;
  logger: Logger;
}

/** A message to post, from any transport. */
export interface PostInput {
  id: string;
  conv?: ConversationId;
  to?: UserId;
  text: string;
}

/** Who a push goes to. */
export type PushTarget = { user: UserId } | { group: string } | { all: true };

interface Client {
  conn: Connection;
  user: UserRecord;
  sends: TokenBucket;
  frames: TokenBucket;
  strikes: number;
  /** When the current window of strikes began. */
  strikesSince: number;
  /** Resolves once the welcome is sent and the connection attached. */
  opened: Promise<void>;
  /** The frame being applied; the next one waits for it. */
  chain: Promise<void>;
  live: boolean;
}

/** Close code when a client keeps going over its rate limit. */
export const CLOSE_POLICY = 1008;
/**
 * Online users listed in a welcome; `presence.list` gives more. A welcome listing 200 users
 * (12 KB) cost 100–200 µs more CPU per open than one listing 50 (3 KB), and, before vectored
 * writes (`preferVectoredWrites` in routes/ws.ts), 6–8 KB of RSS per idle connection: the socket
 * kept a buffer the size of its largest frame (docs/benchmarks_history.md: "the cost of a socket
 * open, and memory per socket").
 */
const WELCOME_ONLINE = 50;
/** The window in which rate-limit strikes add up. */
export const STRIKE_WINDOW_MS = 10_000;
/** Close code for a frame over the size cap. */
export const CLOSE_TOO_BIG = 1009;

const info = (u: { id: UserId; name: string }): UserInfo => ({ id: u.id, name: u.name });

/** The chat service of one node. */
export class ChatService {
  readonly #deps: ServiceDeps;
  readonly #clients = new Map<string, Client>();
  readonly #perUser = new Map<UserId, number>();
  readonly #userSends: KeyedLimiter;
  readonly #groupCreates: KeyedLimiter;
  readonly limits: Limits;

  constructor(deps: ServiceDeps) {
    this.#deps = deps;
    const c = deps.config;
    this.#userSends = new KeyedLimiter(c.CHAT_USER_RATE_BURST, c.CHAT_USER_RATE_PER_SECOND);
    this.#groupCreates = new KeyedLimiter(
      c.CHAT_GROUP_CREATES_PER_HOUR,
      c.CHAT_GROUP_CREATES_PER_HOUR / 3600,
    );
    this.limits = {
      maxMessageBytes: c.CHAT_MAX_MESSAGE_BYTES,
      maxFrameBytes: c.CHAT_MAX_FRAME_BYTES,
      rate: { burst: c.CHAT_RATE_BURST, perSecond: c.CHAT_RATE_PER_SECOND },
      pageSize: c.CHAT_PAGE_SIZE,
      resumeLimit: c.CHAT_RESUME_LIMIT,
    };
  }

  /** Open connections per user on this node. */
  connectionsOf(user: UserId): number {
    return this.#perUser.get(user) ?? 0;
  }

  // ---- connection lifecycle -----------------------------------------------------------------

  /**
   * A socket opened for `user`: send the welcome and start delivering. `conversations`: the
   * user's conversations when their reads have already started.
   */
  open(
    conn: Connection,
    user: UserRecord,
    conversations?: Promise<ConversationInfo[]>,
  ): Promise<void> {
    const c = this.#deps.config;
    const client: Client = {
      conn,
      user,
      sends: new TokenBucket(c.CHAT_RATE_BURST, c.CHAT_RATE_PER_SECOND),
      frames: new TokenBucket(c.CHAT_RATE_BURST * 4, c.CHAT_RATE_PER_SECOND * 6 + 10),
      strikes: 0,
      strikesSince: 0,
      opened: Promise.resolve(),
      chain: Promise.resolve(),
      live: false,
    };
    this.#clients.set(conn.id, client);
    this.#perUser.set(user.id, (this.#perUser.get(user.id) ?? 0) + 1);
    this.#deps.metrics.connectionsOpened++;
    client.opened = this.#welcome(client, conversations).catch((error) => {
      this.#deps.logger.error("welcome_failed", { user: user.id, error: String(error) });
      conn.close(1011, "Cannot load your conversations: try again");
    });
    return client.opened;
  }

  async #welcome(client: Client, early?: Promise<ConversationInfo[]>): Promise<void> {
    const { user, conn } = client;
    const conversations = await (early ?? this.conversationsOf(user));
    if (!this.#clients.has(conn.id)) return;
    const { hub } = this.#deps;
    // The online list is the same string for every welcome until it changes (see
    // `Presence.onlineJson`): spliced in, not serialized again per connection.
    let { json: online, count } = hub.presence.onlineJson(WELCOME_ONLINE);
    if (!hub.presence.isOnline(user.id)) {
      online = `[${JSON.stringify(info(user))}${count ? `,${online.slice(1)}` : "]"}`;
      count++;
    }
    const frame: Omit<ServerFrameOf<"welcome">, "type" | "online"> = {
      user: info(user),
      node: hub.node,
      conversations,
      onlineCount: Math.max(hub.presence.count, count),
      limits: this.limits,
      resume: { lastSeq: Object.fromEntries(conversations.map((c) => [c.id, c.lastSeq])) },
    };
    conn.send(`{"type":"welcome","online":${online},${JSON.stringify(frame).slice(1)}`);
    hub.attach(conn, new Map(conversations.map((c) => [c.id, c.lastSeq])));
  }

  /** The socket closed. */
  close(conn: Connection): void {
    if (!this.#clients.delete(conn.id)) return;
    const n = (this.#perUser.get(conn.user.id) ?? 1) - 1;
    if (n <= 0) this.#perUser.delete(conn.user.id);
    else this.#perUser.set(conn.user.id, n);
    this.#deps.hub.detach(conn);
  }

  /**
   * Every conversation of a user, with heads, read positions and the newest message, in three
   * rounds of KV reads: the user's group and peer ids, with the lobby's and the notices' heads
   * and read positions (known from the user id alone, so read in the same turn as the session
   * when a socket opens: one `getMany` call for both); then the records, heads and read
   * positions of the groups and direct chats; then the newest messages.
   */
  async conversationsOf(user: Pick<UserRecord, "id">): Promise<ConversationInfo[]> {
    const { directory, kv } = this.#deps;
    const notices = directConversation(user.id, user.id);
    const fixed = [LOBBY, notices];
    // The heads of `ids`, then their read positions, in one `getMany` request made at once (so
    // in the caller's turn, sharing its calls).
    const positionsOf = (ids: ConversationId[]) =>
      getMany<number>(kv, [...ids.map(headKey), ...ids.map((id) => readKey(user.id, id))])
        .then((entries) =>
          ids.map((id, i) => {
            const lastSeq = entries[i].value ?? 0;
            const read = Math.min(entries[ids.length + i].value ?? 0, lastSeq);
            return [id, { lastSeq, read }] as const;
          })
        );
    const [groupIds, peerIds, fixedPositions] = await Promise.all([
      directory.groupIdsOf(user.id, this.#deps.config.CHAT_MAX_GROUPS_PER_USER),
      directory.directPeers(user.id),
      positionsOf(fixed),
    ]);
    // The notices conversation is listed once something was pushed, but always received.
    const listed = [
      ...groupIds.map(groupConversation),
      ...peerIds.map((p) => directConversation(user.id, p)),
    ];
    // Records, heads and read positions are asked for in one turn: they share `getMany` calls,
    // and each KV read is a round trip through KV's one SQLite thread.
    const [groups, peers, listedPositions] = await Promise.all([
      directory.groups(groupIds),
      directory.users(peerIds),
      positionsOf(listed),
    ]);
    const positions = new Map([...fixedPositions, ...listedPositions]);
    const at = (id: ConversationId) => positions.get(id)!;
    const list: ConversationInfo[] = [
      { id: LOBBY, kind: "lobby", title: "Lobby", ...at(LOBBY) },
      ...groups.map((g): ConversationInfo => {
        const id = groupConversation(g.id);
        return { id, kind: "group", title: g.name, group: g, ...at(id) };
      }),
      ...peers.map((p): ConversationInfo => {
        const id = directConversation(user.id, p.id);
        return { id, kind: "direct", title: p.name, peer: info(p), ...at(id) };
      }),
    ];
    if (at(notices).lastSeq > 0) {
      list.push({
        id: notices,
        kind: "direct",
        title: "Notices",
        peer: { id: "system", name: "System" },
        ...at(notices),
      });
    }
    const withMessages = list.filter((c) => c.lastSeq > 0);
    const lasts = await this.#lastMessages(withMessages);
    withMessages.forEach((c, i) => {
      if (lasts[i]) c.last = lasts[i]!;
    });
    return list;
  }

  async #lastMessages(convs: ConversationInfo[]): Promise<(ChatMessage | null)[]> {
    const keys = convs.map((c) => messageKey(c.id, c.lastSeq));
    return (await getMany<ChatMessage>(this.#deps.kv, keys)).map((e) => e.value);
  }

  // ---- frames -------------------------------------------------------------------------------

  /**
   * Handles one text frame from a client. Never throws: every failure becomes an error frame,
   * and repeated rate-limit violations close the socket with 1008.
   */
  async receive(conn: Connection, text: string): Promise<void> {
    const client = this.#clients.get(conn.id);
    if (!client) return;
    this.#deps.metrics.framesIn++;
    let frame: ClientFrame | undefined;
    try {
      // Charged before parsing: a flood of garbage costs its sender like any other flood.
      this.#charge(client, false);
      frame = parseClientFrame(text);
      if (frame.type === "send") this.#charge(client, true);
    } catch (error) {
      return this.#fail(client, error, frame?.type, frame?.type === "send" ? frame.id : undefined);
    }
    const parsed = frame;
    // A connection's frames take effect in the order sent: each waits for the one before to be
    // applied (for a send: queued in the log, so sequence numbers follow the sending order).
    const run = client.chain.then(() => this.#apply(client, parsed));
    client.chain = run;
    await run;
  }

  async #apply(client: Client, frame: ClientFrame): Promise<void> {
    try {
      await client.opened;
      if (!client.live) {
        client.live = true;
        if (frame.type !== "resume") this.#deps.hub.live(client.conn.id);
      }
      await this.#dispatch(client, frame);
    } catch (error) {
      this.#fail(client, error, frame.type, frame.type === "send" ? frame.id : undefined);
    }
  }

  /** Sends an error frame for a frame the client could not send (binary, say). */
  reject(conn: Connection, error: ChatError): void {
    const client = this.#clients.get(conn.id);
    if (!client) return;
    try {
      this.#charge(client, false);
    } catch (limited) {
      return this.#fail(client, limited);
    }
    this.#fail(client, error);
  }

  /**
   * Takes a token from the frame budget, or for a send from the connection's and the user's
   * send budgets. Refusals are strikes; more than `CHAT_RATE_STRIKES` of them within
   * {@linkcode STRIKE_WINDOW_MS} close the socket with 1008.
   */
  #charge(client: Client, isSend: boolean): void {
    const now = Date.now();
    const refused = isSend
      ? [client.sends.take(now), this.#userSends.take(client.user.id, now)].find((t) => !t.ok)
      : [client.frames.take(now)].find((t) => !t.ok);
    if (!refused) return;
    this.#deps.metrics.rateLimited++;
    if (now - client.strikesSince > STRIKE_WINDOW_MS) {
      client.strikes = 0;
      client.strikesSince = now;
    }
    if (++client.strikes > this.#deps.config.CHAT_RATE_STRIKES) {
      client.conn.close(CLOSE_POLICY, "Rate limit exceeded repeatedly");
    }
    throw new ChatError(
      "rate_limited",
      `Too many frames: retry in ${refused.retryAfterMs} ms`,
      { retryAfterMs: refused.retryAfterMs },
    );
  }

  #fail(client: Client, error: unknown, ref?: string, id?: string): void {
    let frame: ServerFrameOf<"error">;
    if (error instanceof ChatError) {
      frame = { type: "error", code: error.code, message: error.message };
      if (error.retryAfterMs !== undefined) frame.retryAfterMs = error.retryAfterMs;
    } else {
      this.#deps.logger.error("frame_failed", {
        user: client.user.id,
        ref,
        error: error instanceof Error ? error.message : String(error),
      });
      frame = { type: "error", code: "internal", message: "Internal error: try again" };
    }
    if (ref) frame.ref = ref;
    if (id) frame.id = id;
    this.#deps.metrics.error(frame.code);
    this.#reply(client, frame);
  }

  #reply(client: Client, frame: ServerFrame): void {
    try {
      client.conn.send(JSON.stringify(frame));
    } catch {
      // Closed meanwhile.
    }
  }

  async #dispatch(client: Client, frame: ClientFrame): Promise<void> {
    const { hub, directory } = this.#deps;
    const user = client.user;
    switch (frame.type) {
      case "send": {
        // Waits until the message is queued in the log, not until it is stored: the ack
        // follows on its own, and the connection's next frame need not wait for the commit.
        await new Promise<void>((queued) => {
          this.post(user, frame, client.conn.id, queued).then(
            (ack) => this.#reply(client, ack),
            (error) => this.#fail(client, error, "send", frame.id),
          ).finally(queued);
        });
        return;
      }
      case "history": {
        const limit = Math.min(frame.limit ?? this.limits.pageSize, 200);
        const page = await this.history(user, frame.conv, frame.before, limit, client.conn.id);
        this.#reply(client, { type: "history", conv: frame.conv, ...page });
        return;
      }
      case "resume":
        await hub.resume(client.conn.id, frame.since);
        return;
      case "typing":
        if (!(await this.#canUse(user, frame.conv, client.conn.id))) throw notFound(frame.conv);
        hub.typing(client.conn, frame.conv);
        return;
      case "read": {
        if (!(await this.#canUse(user, frame.conv, client.conn.id))) throw notFound(frame.conv);
        const seq = await directory.setRead(user.id, frame.conv, frame.seq);
        hub.sendToUser(user.id, { type: "read", conv: frame.conv, seq });
        return;
      }
      case "group.create":
        this.#reply(client, await this.createGroup(user, frame));
        return;
      case "group.join":
        await this.joinGroup(user, frame.group);
        return;
      case "group.leave":
        await this.leaveGroup(user, frame.group, user, "left");
        return;
      case "group.add":
        await this.addToGroup(user, frame.group, frame.user);
        return;
      case "group.remove":
        await this.removeFromGroup(user, frame.group, frame.user);
        return;
      case "group.members":
        this.#reply(client, await this.members(user, frame.group));
        return;
      case "group.list":
        this.#reply(client, await this.groups(user));
        return;
      case "dm.open":
        this.#reply(client, await this.openDirect(user, frame.user));
        return;
      case "user.block":
      case "user.unblock": {
        const blocked = frame.type === "user.block";
        if (frame.user === user.id) throw new ChatError("bad_frame", "Cannot block yourself");
        await directory.setBlocked(user.id, frame.user, blocked);
        hub.sendToUser(user.id, { type: "blocked", user: frame.user, blocked });
        return;
      }
      case "presence.list":
        this.#reply(client, { type: "online", users: hub.presence.online(1000) });
        return;
      case "presence.watch":
        hub.watch(client.conn.id, frame.users);
        return;
      case "user.find": {
        const prefix = canonicalName(frame.name);
        const users = prefix ? await directory.findUsers(prefix, 20) : [];
        this.#reply(client, { type: "users", users });
        return;
      }
      case "ping":
        this.#reply(
          client,
          frame.t === undefined ? { type: "pong" } : { type: "pong", t: frame.t },
        );
        return;
    }
  }

  // ---- the data path ------------------------------------------------------------------------

  /**
   * Posts a message: access check, limits, append to the log (which fans out on commit), ack.
   * `connId` is the sending connection, for the fast in-memory access check.
   *
   * @throws {ChatError} `not_found` (no such conversation, or not yours), `forbidden` (blocked),
   * `too_large`, `bad_frame`
   */
  post(
    user: UserRecord,
    input: PostInput,
    connId?: string,
    queued?: () => void,
  ): Promise<ServerFrameOf<"ack">> {
    return withSpan("chat.post", { "chat.transport": connId ? "socket" : "api" }, async (span) => {
      const ack = await this.#post(user, input, connId, queued);
      span?.setAttributes({
        "chat.conv.kind": parseConversation(ack.conv).kind,
        "chat.seq": ack.seq,
        "chat.duplicate": ack.duplicate ?? false,
      });
      return ack;
    });
  }

  async #post(
    user: UserRecord,
    input: PostInput,
    connId?: string,
    queued?: () => void,
  ): Promise<ServerFrameOf<"ack">> {
    checkText(input.text, this.#deps.config.CHAT_MAX_MESSAGE_BYTES, utf8Length);
    let conv: ConversationId;
    if (input.to !== undefined) {
      conv = directConversation(user.id, input.to);
      if (input.conv !== undefined && input.conv !== conv) {
        throw new ChatError(
          "bad_frame",
          "Expected either conv or to, or both naming the same chat",
        );
      }
    } else if (input.conv !== undefined) {
      conv = input.conv;
    } else {
      throw new ChatError("bad_frame", "Invalid send frame: expected conv or to");
    }
    const refuseIf = await this.#authorizePost(user, conv, connId);
    const { message, duplicate } = await withSpan("chat.kv.append", {}, () => {
      const appended = this.#deps.log.append({
        conv,
        id: input.id,
        from: user.id,
        name: user.name,
        text: input.text,
        kind: "text",
        refuseIf,
      });
      queued?.();
      return appended;
    });
    const ack: ServerFrameOf<"ack"> = {
      type: "ack",
      id: input.id,
      conv: message.conv,
      seq: message.seq,
      ts: message.ts,
    };
    if (duplicate) ack.duplicate = true;
    else this.#deps.metrics.messagesIn++;
    return ack;
  }

  /**
   * Checks that `user` may post in `conv`. For a direct chat it returns the block the log must
   * find absent when it stores the message: checked in the append's own commit, so a block
   * holds on every node at once without a read per message.
   */
  async #authorizePost(
    user: UserRecord,
    conv: ConversationId,
    connId?: string,
  ): Promise<AppendInput["refuseIf"]> {
    const parsed = parseConversation(conv);
    if (parsed.kind === "direct") {
      const [a, b] = parsed.users;
      if ((a !== user.id && b !== user.id) || conv !== directConversation(a, b)) {
        throw notFound(conv);
      }
      if (a === b) throw new ChatError("bad_frame", "Cannot send a direct message to yourself");
      const peer = a === user.id ? b : a;
      if (!(connId && this.#deps.hub.isSubscribed(connId, conv))) {
        if (!(await this.#deps.directory.user(peer))) throw notFound(conv);
        await this.#deps.directory.openDirect(user.id, peer);
      }
      return {
        key: blockKey(peer, user.id),
        error: () =>
          new ChatError("forbidden", "Cannot send: this user does not accept your messages"),
      };
    }
    if (!(await this.#canUse(user, conv, connId))) throw notFound(conv);
  }

  /** Whether `user` belongs to `conv`; in memory when a connection of theirs receives it. */
  async #canUse(user: UserRecord, conv: ConversationId, connId?: string): Promise<boolean> {
    if (connId && this.#deps.hub.isSubscribed(connId, conv)) return true;
    return await this.canAccess(user.id, conv);
  }

  /** Whether `user` may read and write `conv` (from KV: the authority). */
  async canAccess(user: UserId, conv: ConversationId): Promise<boolean> {
    const parsed = parseConversation(conv);
    switch (parsed.kind) {
      case "lobby":
        return true;
      case "group":
        return await this.#deps.directory.isMember(parsed.group, user);
      case "direct":
        if (conv !== directConversation(...parsed.users)) return false;
        // `d:<me>:<me>` holds the notices pushed to me: mine to read, no one's to write.
        if (parsed.users[0] === parsed.users[1]) return parsed.users[0] === user;
        return parsed.users.includes(user) &&
          (await this.#deps.directory.users(parsed.users)).length === 2;
    }
  }

  /**
   * A page of history, for members only.
   *
   * @throws {ChatError} `not_found` for a conversation that does not exist or is not yours
   */
  async history(
    user: UserRecord,
    conv: ConversationId,
    before: number | undefined,
    limit: number,
    connId?: string,
  ): Promise<{ messages: ChatMessage[]; more: boolean }> {
    // Read alongside the check (one round trip over a network), returned only if it passes.
    const page = this.#deps.log.page(conv, before, limit);
    page.catch(() => {});
    if (!(await this.#canUse(user, conv, connId))) throw notFound(conv);
    return await page;
  }

  // ---- groups -------------------------------------------------------------------------------

  /** Creates a group owned by `user`. */
  async createGroup(
    user: UserRecord,
    frame: Pick<ClientFrameOf<"group.create">, "name" | "public">,
  ): Promise<ServerFrameOf<"conversation">> {
    const c = this.#deps.config;
    const name = checkGroupName(frame.name, c.CHAT_MAX_GROUP_NAME_LENGTH);
    const take = this.#groupCreates.take(user.id);
    if (!take.ok) {
      throw new ChatError("rate_limited", "Too many groups created: try again later", {
        retryAfterMs: take.retryAfterMs,
      });
    }
    await this.#checkGroupCount(user.id);
    const group = await this.#deps.directory.createGroup(user.id, name, frame.public ?? true);
    const conv = groupConversation(group.id);
    const notice = await this.#membership(conv, user, { event: "created", user: info(user) });
    const conversation = groupInfo(group, notice);
    this.#deps.hub.subscribe(user.id, conv, notice.seq - 1);
    this.#deps.hub.sendToUser(user.id, { type: "conversation", conversation });
    return { type: "conversation", conversation };
  }

  async #checkGroupCount(user: UserId): Promise<void> {
    const max = this.#deps.config.CHAT_MAX_GROUPS_PER_USER;
    if ((await this.#deps.directory.groupCount(user, max)) >= max) {
      throw new ChatError("limit_reached", `Cannot join more than ${max} groups`);
    }
  }

  async #groupFor(user: UserRecord, id: string, needMember: boolean): Promise<GroupRecord> {
    const group = await this.#deps.directory.group(id);
    if (!group) throw notFound(groupConversation(id));
    if (needMember && !(await this.#deps.directory.isMember(id, user.id))) {
      throw notFound(groupConversation(id));
    }
    return group;
  }

  /** Joins a public group. */
  async joinGroup(user: UserRecord, id: string): Promise<void> {
    const group = await this.#groupFor(user, id, false);
    if (!group.public) throw notFound(groupConversation(id));
    await this.#checkGroupCount(user.id);
    if (!(await this.#deps.directory.addMember(id, user.id))) {
      throw new ChatError("conflict", "Cannot join: you are already a member");
    }
    await this.#admit(group, user, user, "joined");
  }

  /** The owner adds a user to a group. */
  async addToGroup(owner: UserRecord, id: string, userId: UserId): Promise<void> {
    const group = await this.#groupFor(owner, id, true);
    if (group.owner !== owner.id) {
      throw new ChatError("forbidden", "Cannot add members: only the group owner can");
    }
    const user = await this.#deps.directory.user(userId);
    if (!user) throw new ChatError("not_found", "Cannot add: no such user");
    await this.#checkGroupCount(user.id);
    if (!(await this.#deps.directory.addMember(id, user.id))) {
      throw new ChatError("conflict", "Cannot add: already a member");
    }
    await this.#admit(group, user, owner, "added");
  }

  async #admit(
    group: GroupRecord,
    user: UserRecord,
    actor: UserRecord,
    event: "joined" | "added",
  ): Promise<void> {
    const conv = groupConversation(group.id);
    const notice = await this.#membership(conv, actor, { event, user: info(user) });
    const conversation = groupInfo(group, notice);
    this.#deps.hub.subscribe(user.id, conv, notice.seq - 1);
    this.#deps.hub.sendToUser(user.id, { type: "conversation", conversation });
  }

  /** A member leaves (`left`) or the owner removes them (`removed`). */
  async leaveGroup(
    actor: UserRecord,
    id: string,
    user: UserInfo,
    event: "left" | "removed",
  ): Promise<void> {
    const group = await this.#groupFor(actor, id, true);
    if (!(await this.#deps.directory.removeMember(id, user.id))) {
      throw new ChatError("not_found", "Cannot remove: not a member");
    }
    const conv = groupConversation(group.id);
    await this.#membership(conv, actor, { event, user: info(user) });
    this.#deps.hub.unsubscribe(user.id, conv);
    this.#deps.hub.sendToUser(user.id, { type: "conversation.removed", conv });
  }

  /** The owner removes a member. */
  async removeFromGroup(owner: UserRecord, id: string, userId: UserId): Promise<void> {
    const group = await this.#groupFor(owner, id, true);
    if (group.owner !== owner.id) {
      throw new ChatError("forbidden", "Cannot remove members: only the group owner can");
    }
    if (userId === owner.id) throw new ChatError("bad_frame", "Cannot remove yourself: leave");
    const user = await this.#deps.directory.user(userId);
    if (!user) throw new ChatError("not_found", "Cannot remove: not a member");
    await this.leaveGroup(owner, id, user, "removed");
  }

  /** Stores a membership notice in the group's log, so every node applies it in order. */
  async #membership(
    conv: ConversationId,
    actor: UserRecord,
    meta: MembershipEvent,
  ): Promise<ChatMessage> {
    const texts = {
      created: `${meta.user.name} created the group`,
      joined: `${meta.user.name} joined`,
      added: `${actor.name} added ${meta.user.name}`,
      left: `${meta.user.name} left`,
      removed: `${actor.name} removed ${meta.user.name}`,
    };
    const { message } = await this.#deps.log.append({
      conv,
      id: `sys-${randomId(16)}`,
      from: actor.id,
      name: actor.name,
      text: texts[meta.event],
      kind: "notice",
      meta,
    });
    return message;
  }

  /** Members of a group, for members only. */
  async members(user: UserRecord, id: string): Promise<ServerFrameOf<"members">> {
    await this.#groupFor(user, id, true);
    const users = await this.#deps.directory.users(await this.#deps.directory.memberIds(id));
    const presence = this.#deps.hub.presence;
    return {
      type: "members",
      group: id,
      members: users.map((u) => ({ ...info(u), online: presence.isOnline(u.id) })),
    };
  }

  /** Public groups and the user's own. */
  async groups(user: UserRecord): Promise<ServerFrameOf<"groups">> {
    const { directory } = this.#deps;
    const [open, mine] = await Promise.all([
      directory.publicGroups(200),
      directory.groupsOf(user.id),
    ]);
    const mineIds = new Set(mine.map((g) => g.id));
    const all = [...mine, ...open.filter((g) => !mineIds.has(g.id))];
    const counts = await directory.memberCounts(all.map((g) => g.id));
    return {
      type: "groups",
      groups: all.map((g) => ({ ...g, member: mineIds.has(g.id), members: counts.get(g.id) ?? 0 })),
    };
  }

  /** Opens (or finds) the direct conversation with another user. */
  async openDirect(user: UserRecord, peerId: UserId): Promise<ServerFrameOf<"conversation">> {
    if (peerId === user.id) throw new ChatError("bad_frame", "Cannot chat with yourself");
    const peer = await this.#deps.directory.user(peerId);
    if (!peer) throw new ChatError("not_found", "Cannot open a chat: no such user");
    await this.#deps.directory.openDirect(user.id, peer.id);
    const conv = directConversation(user.id, peer.id);
    const head = await this.#deps.log.head(conv);
    const [read] = (await this.#deps.directory.readPositions(user.id, [conv])).values();
    this.#deps.hub.subscribe(user.id, conv, head);
    const conversation: ConversationInfo = {
      id: conv,
      kind: "direct",
      title: peer.name,
      peer: info(peer),
      lastSeq: head,
      read: Math.min(read, head),
    };
    return { type: "conversation", conversation };
  }

  // ---- push ---------------------------------------------------------------------------------

  /**
   * Pushes a server notice to a user (their direct line from the system), a group, or the
   * lobby (everyone). Stored in history like any message and fanned out on every node.
   */
  async push(
    target: PushTarget,
    text: string,
    id = `push-${randomId(16)}`,
  ): Promise<{ conv: ConversationId; seq: number; duplicate: boolean; online: number }> {
    checkText(text, this.#deps.config.CHAT_MAX_MESSAGE_BYTES, utf8Length);
    const { directory, hub } = this.#deps;
    let conv: ConversationId;
    let online = 0;
    if ("user" in target) {
      const user = await directory.user(target.user);
      if (!user) throw new ChatError("not_found", "Cannot push: no such user");
      conv = `d:${user.id}:${user.id}`;
      online = hub.presence.isOnline(user.id) ? 1 : 0;
    } else if ("group" in target) {
      if (!(await directory.group(target.group))) {
        throw new ChatError("not_found", "Cannot push: no such group");
      }
      conv = groupConversation(target.group);
      const ids = await directory.memberIds(target.group);
      online = ids.filter((u) => hub.presence.isOnline(u)).length;
    } else {
      conv = LOBBY;
      online = hub.presence.count;
    }
    const { message, duplicate } = await this.#deps.log.append({
      conv,
      id,
      from: "system",
      name: "System",
      text,
      kind: "notice",
    });
    return { conv, seq: message.seq, duplicate, online };
  }

  /** Closes every socket (shutdown). */
  closeAll(): void {
    this.#deps.hub.close();
  }
}

function notFound(conv: ConversationId): ChatError {
  return new ChatError("not_found", `Conversation ${conv} not found`);
}

function groupInfo(group: GroupInfo, notice: ChatMessage): ConversationInfo {
  return {
    id: groupConversation(group.id),
    kind: "group",
    title: group.name,
    group,
    lastSeq: notice.seq,
    read: notice.seq - 1,
    last: notice,
  };
}
