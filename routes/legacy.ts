/**
 * The legacy dialects: the JSON frames of the seed tutorials' browser clients (PHP WebSocket chat
 * rooms), spoken at `/ws/legacy` and at a bare socket upgrade of `/`, where those clients connect.
 *
 * A thin adapter: a legacy client signs in in band by name (no cookie, no session), becomes an
 * ordinary guest user, and from then on its frames (parsed by `chat/legacy_protocol.ts`) go
 * through {@linkcode ChatService.post} and the service's frames come back translated
 * ({@linkcode toLegacy}): lobby messages as `user`, direct messages as `pm`, group messages as
 * `groupPm`, notices as `system`, presence changes as `login`/`logout` with the list of names
 * online. See `docs/protocol.md`, "Legacy dialects".
 *
 * Outgoing `content`, `from` and `user_list` are HTML-escaped: the seed clients put what they
 * receive into `innerHTML`, and they must keep working unchanged without running other users'
 * markup.
 *
 * @module
 */
import type { Context, Hono } from "hono";
import type { UserRecord } from "../chat/directory.ts";
import { randomId } from "../chat/directory.ts";
import type { Connection } from "../chat/hub.ts";
import type { ChatNode } from "../chat/node.ts";
import { canonicalName, checkUserName } from "../chat/names.ts";
import { parseLegacy } from "../chat/legacy_protocol.ts";
import type { LegacyFrame } from "../chat/legacy_protocol.ts";
import { ChatError, parseConversation, utf8Length } from "../chat/protocol.ts";
import type { ServerFrame, UserId, UserInfo } from "../chat/protocol.ts";
import { KeyedLimiter, TokenBucket } from "../chat/rate_limit.ts";
import { CLOSE_POLICY, CLOSE_TOO_BIG } from "../chat/service.ts";
import { addressOf } from "./session.ts";
import {
  addressOverLimit,
  bump,
  checkUpgrade,
  politeCloser,
  socketCounts,
} from "./socket_policy.ts";
import type { PoliteCloser } from "./socket_policy.ts";

// The dialect is defined in chat/, but this adapter is where callers have always found it.
export { parseLegacy };
export type { LegacyFrame, LegacyRequest } from "../chat/legacy_protocol.ts";

/** The name a seed client sends when it has none (seed 000): the server picks one. */
export const PLACEHOLDER_NAME = "login";

/** Most names in a `user_list`. */
const MAX_USER_LIST = 500;
/** Most frames waiting to be handled on one socket before it is closed. */
const MAX_PENDING = 64;
const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

const ESCAPES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#39;",
};

/** Escapes text for the `innerHTML` of the seed clients. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

function names(users: UserInfo[]): string[] {
  return users.map((u) => escapeHtml(u.name));
}

/**
 * Translates one frame of our protocol into the frames a legacy client gets: `welcome` becomes
 * the user's own `login`; `message` becomes `user`, `pm`, `groupPm` or (notices) `system`;
 * `presence` becomes `login`/`logout` per change; `reconnect` and `error` become `system`.
 * Everything else (acks, typing, read marks, conversation lists) has no legacy form and is
 * dropped.
 *
 * @param online the users online now, for `user_list`
 * @param seen the users this client was told are online, kept up to date here, so that it is
 * not told twice
 */
export function toLegacy(
  frame: ServerFrame,
  self: UserInfo,
  online: () => UserInfo[],
  seen?: Set<UserId>,
): LegacyFrame[] {
  switch (frame.type) {
    case "welcome": {
      const users = frame.online.some((u) => u.id === self.id)
        ? frame.online
        : [self, ...frame.online];
      for (const u of users) seen?.add(u.id);
      return [{
        type: "login",
        content: escapeHtml(self.name),
        uid: self.id,
        user_list: names(users),
      }];
    }
    case "message": {
      const content = escapeHtml(frame.text);
      const parsed = parseConversation(frame.conv);
      if (frame.kind === "notice") {
        return [
          parsed.kind === "group"
            ? { type: "system", content, gid: parsed.group }
            : { type: "system", content },
        ];
      }
      const from = escapeHtml(frame.name);
      switch (parsed.kind) {
        case "lobby":
          return [{ type: "user", from, uid: frame.from, content }];
        case "group":
          return [{ type: "groupPm", gid: parsed.group, from, uid: frame.from, content }];
        case "direct": {
          const [a, b] = parsed.users;
          const to = frame.from === a ? b : a;
          return [{ type: "pm", from, uid: frame.from, to, content }];
        }
      }
      return [];
    }
    case "presence": {
      const changes = frame.changes.filter((change) => {
        if (change.user.id === self.id) return false;
        if (!seen) return true;
        if (seen.has(change.user.id) === change.online) return false;
        if (change.online) seen.add(change.user.id);
        else seen.delete(change.user.id);
        return true;
      });
      if (!changes.length) return [];
      const user_list = names(online());
      return changes.map((change) => ({
        type: change.online ? "login" : "logout",
        content: escapeHtml(change.user.name),
        uid: change.user.id,
        user_list,
      }));
    }
    case "reconnect":
      return [{ type: "system", content: escapeHtml(frame.reason) }];
    case "error":
      return [{ type: "system", content: escapeHtml(`error: ${frame.message}`) }];
    default:
      return [];
  }
}

// Per node, not per module: tests run several nodes in one process.
/** Sign-ins per address. */
const signIns = new WeakMap<ChatNode, KeyedLimiter>();

/** One legacy socket: in-band sign-in, then an ordinary connection of the service. */
class LegacyClient {
  readonly #node: ChatNode;
  readonly #socket: WebSocket;
  readonly #address: string;
  readonly #frames: TokenBucket;
  readonly #sends: TokenBucket;
  #strikes = 0;
  #pending = 0;
  #chain: Promise<void> = Promise.resolve();
  #user: UserRecord | null = null;
  #conn: Connection | null = null;
  /** Who this client was told is online. */
  readonly #seen = new Set<UserId>();
  #closed = false;
  readonly #closer: PoliteCloser;

  constructor(node: ChatNode, socket: WebSocket, address: string) {
    this.#node = node;
    this.#socket = socket;
    this.#closer = politeCloser(socket);
    this.#address = address;
    const c = node.config;
    this.#sends = new TokenBucket(c.CHAT_RATE_BURST, c.CHAT_RATE_PER_SECOND);
    this.#frames = new TokenBucket(c.CHAT_RATE_BURST * 4, c.CHAT_RATE_PER_SECOND * 6 + 10);
    socket.onopen = () => this.#write({ type: "handshake", content: "done" });
    socket.onmessage = (event: MessageEvent) => this.#onMessage(event.data);
    socket.onclose = () => this.#onClose();
    socket.onerror = () => this.#onClose();
  }

  #write(frame: LegacyFrame): void {
    if (this.#socket.readyState === WebSocket.OPEN) this.#socket.send(JSON.stringify(frame));
  }

  #close(code: number, reason: string): void {
    this.#closer.close(code, reason);
  }

  #fail(error: unknown): void {
    let message: string;
    if (error instanceof ChatError) message = error.message;
    else {
      this.#node.logger.error("legacy_frame_failed", {
        user: this.#user?.id,
        error: error instanceof Error ? error.message : String(error),
      });
      message = "Internal error: try again";
    }
    if (error instanceof ChatError) this.#node.metrics.error(error.code);
    this.#write({ type: "system", content: escapeHtml(`error: ${message}`) });
  }

  #onMessage(data: unknown): void {
    if (!this.#closer.frame() || this.#closed) return;
    const maxBytes = this.#node.config.CHAT_MAX_FRAME_BYTES;
    if (typeof data !== "string") {
      const size = data instanceof Blob ? data.size : (data as ArrayBuffer).byteLength;
      if (size > maxBytes) return this.#close(CLOSE_TOO_BIG, `Frame over ${maxBytes} bytes`);
      return this.#fail(new ChatError("bad_frame", "Expected a text frame, got a binary frame"));
    }
    if (data.length > maxBytes || (data.length * 3 > maxBytes && utf8Length(data) > maxBytes)) {
      return this.#close(CLOSE_TOO_BIG, `Frame over ${maxBytes} bytes`);
    }
    this.#node.metrics.framesIn++;
    const take = this.#frames.take();
    if (!take.ok) return this.#limited(take.retryAfterMs);
    if (++this.#pending > MAX_PENDING) {
      return this.#close(CLOSE_POLICY, "Too many frames waiting: slow down");
    }
    this.#chain = this.#chain.then(async () => {
      try {
        if (!this.#closed) await this.#handle(data);
      } catch (error) {
        this.#fail(error);
      } finally {
        this.#pending--;
      }
    });
  }

  #limited(retryAfterMs: number): void {
    this.#node.metrics.rateLimited++;
    if (++this.#strikes > this.#node.config.CHAT_RATE_STRIKES) {
      this.#close(CLOSE_POLICY, "Rate limit exceeded repeatedly");
      return;
    }
    this.#fail(new ChatError("rate_limited", `Too many messages: retry in ${retryAfterMs} ms`));
  }

  async #handle(text: string): Promise<void> {
    const request = parseLegacy(text);
    if (request.type === "login") {
      if (this.#user) throw new ChatError("conflict", `Already signed in as ${this.#user.name}`);
      await this.#login(request.name);
      return;
    }
    if (request.type === "logout") {
      this.#close(1000, "Signed out");
      return;
    }
    // The plain-text seeds (001, 003) never sign in: their first message does, as a guest.
    if (!this.#user && request.type === "user" && request.plain) await this.#login(undefined);
    const user = this.#user;
    const conn = this.#conn;
    if (!user || !conn) {
      throw new ChatError(
        "unauthorized",
        'Expected {"type":"login","content":"<your name>"} first',
      );
    }
    const take = this.#sends.take();
    if (!take.ok) return this.#limited(take.retryAfterMs);
    this.#strikes = 0;
    const { service } = this.#node;
    const id = `l-${randomId(16)}`;
    switch (request.type) {
      case "user":
        await service.post(user, { id, conv: "lobby", text: request.text }, conn.id);
        return;
      case "pm": {
        const peer = await this.#findUser(request.to);
        if (peer.id === user.id) {
          throw new ChatError("bad_frame", "Cannot send a private message to yourself");
        }
        await service.post(user, { id, to: peer.id, text: request.text }, conn.id);
        return;
      }
      case "group": {
        const gid = request.gid;
        if (!ID_PATTERN.test(gid)) throw new ChatError("not_found", `Group ${gid} not found`);
        const conv = `g:${gid}`;
        // Seed 000 has no "join" frame: writing to a public group joins it.
        if (!this.#node.hub.isSubscribed(conn.id, conv)) {
          if (!(await this.#node.directory.isMember(gid, user.id))) {
            await service.joinGroup(user, gid);
          }
        }
        await service.post(user, { id, conv, text: request.text }, conn.id);
        return;
      }
    }
  }

  /** A user by the id or the name given out in login frames. */
  async #findUser(key: string): Promise<UserRecord> {
    const { directory } = this.#node;
    const byId = ID_PATTERN.test(key) ? await directory.user(key) : null;
    const user = byId ?? await directory.userByName(canonicalName(key));
    if (!user) throw new ChatError("not_found", `No user with the id or name ${key}`);
    return user;
  }

  /**
   * Signs in as a new guest: the name asked for, or a free variant of it when taken; a
   * generated name for the placeholder `login`, no name, or a name that breaks the rules.
   */
  async #login(asked: unknown): Promise<void> {
    const node = this.#node;
    if (!node.auth.allowGuests) {
      throw new ChatError("forbidden", "Cannot sign in as a guest: guests are disabled");
    }
    const c = node.config;
    let limiter = signIns.get(node);
    if (!limiter) {
      limiter = new KeyedLimiter(c.CHAT_SIGNIN_PER_MINUTE * 3, c.CHAT_SIGNIN_PER_MINUTE / 20);
      signIns.set(node, limiter);
    }
    const take = limiter.take(this.#address);
    if (!take.ok) {
      throw new ChatError(
        "rate_limited",
        `Too many sign-ins: retry in ${Math.ceil(take.retryAfterMs / 1000)} s`,
      );
    }
    let base: string | null = null;
    let refused: string | null = null;
    const placeholder = asked === undefined || asked === null ||
      (typeof asked === "string" &&
        (asked.trim() === "" || canonicalName(asked) === PLACEHOLDER_NAME));
    if (!placeholder) {
      try {
        base = checkUserName(asked, c.CHAT_MAX_NAME_LENGTH).display;
      } catch (error) {
        if (!(error instanceof ChatError)) throw error;
        refused = error.message;
      }
    }
    const user = await this.#createUser(base, c.CHAT_MAX_NAME_LENGTH);
    if (this.#closed) return;
    this.#user = user;
    const conn: Connection = {
      id: randomId(16),
      user: { id: user.id, name: user.name },
      send: (data) => this.#deliver(data),
      bufferedAmount: () => this.#socket.bufferedAmount,
      close: (code, reason) => this.#close(code, reason),
      // The seed clients show everyone online (`user_list`), so they hear every change.
      allPresence: true,
    };
    this.#conn = conn;
    if (refused) {
      this.#write({
        type: "system",
        content: escapeHtml(`Name not accepted (${refused}): you are ${user.name}`),
      });
    }
    // The welcome becomes this client's own login frame; then live messages flow.
    await node.service.open(conn, user);
    node.hub.live(conn.id);
    node.logger.debug("legacy_login", { user: user.id, asked: typeof asked === "string" });
  }

  async #createUser(base: string | null, maxLength: number): Promise<UserRecord> {
    const { directory } = this.#node;
    for (let attempt = 0; attempt < 5; attempt++) {
      let name: string;
      if (base === null) {
        name = await directory.freeName(`Guest-${1000 + randomInt(9000)}`, canonicalName);
      } else if (attempt === 0) {
        name = base;
      } else {
        // Room for the "-1234" that freeName may add.
        const stem = [...base].slice(0, maxLength - 5).join("").trimEnd();
        name = await directory.freeName(stem, canonicalName);
      }
      try {
        checkUserName(name, maxLength);
      } catch {
        base = null;
        continue;
      }
      try {
        return await directory.createUser(name, canonicalName(name));
      } catch (error) {
        if (!(error instanceof ChatError) || error.code !== "conflict") throw error;
      }
    }
    return await directory.createUser(`Guest-${randomId(8)}`, `guest-${randomId(8)}`);
  }

  /** A frame of ours for this client: translated, or dropped. */
  #deliver(data: string): void {
    const user = this.#conn?.user;
    if (!user || this.#socket.readyState !== WebSocket.OPEN) return;
    let frame: ServerFrame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    const online = () => this.#node.hub.presence.online(MAX_USER_LIST);
    for (const legacy of toLegacy(frame, user, online, this.#seen)) this.#write(legacy);
  }

  #onClose(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closer.dispose();
    bump(socketCounts(this.#node).addresses, this.#address, -1);
    if (this.#conn) this.#node.service.close(this.#conn);
  }
}

function randomInt(below: number): number {
  return crypto.getRandomValues(new Uint32Array(1))[0] % below;
}

/**
 * The legacy socket handler. No session and no Origin check: the sign-in is in band and no
 * cookie is read, so a page on any origin may connect (as the seed pages, opened from disk or
 * another host, do).
 */
export function legacyHandler(node: ChatNode, c: Context): Response {
  const refused = checkUpgrade(node, c);
  if (refused) return refused;
  const address = addressOf(c);
  const over = addressOverLimit(node, c, address);
  if (over) return over;
  const { socket, response } = Deno.upgradeWebSocket(c.req.raw, {
    idleTimeout: node.config.CHAT_IDLE_TIMEOUT_SECONDS,
  });
  bump(socketCounts(node).addresses, address, 1);
  new LegacyClient(node, socket, address);
  return response;
}

/**
 * Mounts the legacy dialects: `/ws/legacy`, and a WebSocket upgrade of `/` (other requests
 * for `/` go on to the web client). Pass as `createApp(node, { sockets: legacySockets })`.
 */
export function legacySockets(app: Hono, node: ChatNode): void {
  app.get("/ws/legacy", (c) => legacyHandler(node, c));
  app.get("/", async (c, next) => {
    if (c.req.header("upgrade")?.toLowerCase() !== "websocket") return await next();
    return legacyHandler(node, c);
  });
}
