/**
 * The socket route, `/ws`. The handshake is checked before the upgrade: the `Origin` must be
 * allowed, the session (cookie, bearer header or single-use ticket) must be valid, and the
 * user and address must be under their connection limits; otherwise an HTTP error and no
 * socket. After the upgrade every frame goes to the service.
 *
 * @module
 */
import type { Context } from "hono";
import type { UserRecord } from "../chat/directory.ts";
import { randomId } from "../chat/directory.ts";
import type { Connection } from "../chat/hub.ts";
import type { ChatNode } from "../chat/node.ts";
import { ChatError, utf8Length } from "../chat/protocol.ts";
import type { ConversationInfo, UserId } from "../chat/protocol.ts";
import { CLOSE_TOO_BIG } from "../chat/service.ts";
import {
  addressOverLimit,
  bump,
  checkUpgrade,
  politeCloser,
  refuseUpgrade,
  socketCounts,
} from "./socket_policy.ts";
import { addressOf, authenticate, originAllowed } from "./session.ts";
import { SocketOutbox } from "./socket_outbox.ts";

export { originAllowed };

/** The environment as {@linkcode preferVectoredWrites} needs it (`Deno.env` fits). */
export interface WritableEnv {
  get(key: string): string | undefined;
  set(key: string, value: string): void;
}

/**
 * Turns on vectored writes for WebSocket frames (`DENO_USE_WRITEV=1`) unless the environment
 * already says otherwise; returns whether they are on. Call it before the first socket opens:
 * the runtime reads the variable once.
 *
 * Without it, Deno copies every frame into a write buffer of the socket's own, which grows to the
 * largest frame the socket was ever sent and keeps that size for the socket's life: a socket that
 * got one 48 KB frame (a batch, a history page) held about 50 KB more than an idle one, for good
 * (docs/benchmarks_history.md, "A socket keeps its largest frame: the cause"). With vectored
 * writes a frame over 1 KB goes out from its own buffer, freed once written.
 */
export function preferVectoredWrites(env: WritableEnv): boolean {
  const given = env.get("DENO_USE_WRITEV");
  if (given !== undefined) return given !== "";
  try {
    env.set("DENO_USE_WRITEV", "1");
    return true;
  } catch {
    // No permission to set it: frames are copied, and a socket keeps its largest one.
    return false;
  }
}

/** A handshake that passed: the user, the address, and the welcome's reads when started. */
export interface Admitted {
  user: UserRecord;
  address: string;
  /** The user's conversations, read while the session was (see `Auth.verify`). */
  conversations?: Promise<ConversationInfo[]>;
}

/**
 * Checks the handshake: origin, session, limits. Returns the user, or an error response.
 */
export async function admit(node: ChatNode, c: Context): Promise<Admitted | Response> {
  const refused = checkUpgrade(node, c);
  if (refused) return refused;
  if (!originAllowed(node, c)) return refuseUpgrade(node, c, "forbidden", "Origin not allowed");
  // The only credential a URL may carry is a single-use ticket that expires in seconds.
  const ticket = c.req.query("ticket");
  // A signed token names its user: the welcome's reads start beside the session's (one KV
  // round trip fewer over a network), and are dropped unless the session holds for that user.
  let ahead: { user: UserId; conversations: Promise<ConversationInfo[]> } | undefined;
  const who = ticket !== undefined
    ? await node.auth.redeem(ticket)
    : await authenticate(node, c, (user) => {
      const conversations = node.service.conversationsOf({ id: user });
      conversations.catch(() => {});
      ahead = { user, conversations };
    });
  if (!who) {
    return refuseUpgrade(node, c, "unauthorized", "Expected a valid session: sign in first");
  }
  const address = addressOf(c);
  const conversations = ahead?.user === who.user.id ? ahead.conversations : undefined;
  return overLimit(node, c, who.user, address) ?? { user: who.user, address, conversations };
}

/** A refusal when `user` or `address` has as many sockets as allowed, else undefined. */
function overLimit(
  node: ChatNode,
  c: Context,
  user: UserRecord,
  address: string,
): Response | undefined {
  const config = node.config;
  const { users } = socketCounts(node);
  const perUser = Math.max(users.get(user.id) ?? 0, node.service.connectionsOf(user.id));
  if (perUser >= config.CHAT_MAX_CONNECTIONS_PER_USER) {
    return refuseUpgrade(
      node,
      c,
      "limit_reached",
      `Too many connections: at most ${config.CHAT_MAX_CONNECTIONS_PER_USER} per user`,
    );
  }
  return addressOverLimit(node, c, address);
}

/**
 * Upgrades the request and wires the socket to the service. The connection limits are checked
 * again here, in the same tick as the socket is counted, so concurrent handshakes cannot all
 * pass them.
 */
export function upgrade(
  node: ChatNode,
  c: Context,
  user: UserRecord,
  address: string,
  conversations?: Promise<ConversationInfo[]>,
): Response {
  const over = overLimit(node, c, user, address);
  if (over) return over;
  const { socket, response } = Deno.upgradeWebSocket(c.req.raw, {
    idleTimeout: node.config.CHAT_IDLE_TIMEOUT_SECONDS,
  });
  const closer = politeCloser(socket);
  const outbox = new SocketOutbox(socket, { batch: c.req.query("batch") === "1" });
  const conn: Connection = {
    id: randomId(16),
    user: { id: user.id, name: user.name },
    send: (data) => outbox.send(data),
    bufferedAmount: () => socket.bufferedAmount + outbox.pendingChars,
    close: (code, reason) => {
      outbox.flush();
      closer.close(code, reason);
    },
  };
  // Counted from the upgrade, not from `open`: concurrent handshakes cannot pass the limits.
  const { users, addresses } = socketCounts(node);
  bump(addresses, address, 1);
  bump(users, user.id, 1);
  const maxBytes = node.config.CHAT_MAX_FRAME_BYTES;
  let closed = false;
  const onClose = () => {
    if (closed) return;
    closed = true;
    closer.dispose();
    bump(addresses, address, -1);
    bump(users, user.id, -1);
    node.service.close(conn);
  };
  socket.onopen = () => {
    node.service.open(conn, user, conversations);
  };
  socket.onmessage = (event: MessageEvent) => {
    if (!closer.frame()) return;
    const data = event.data;
    if (typeof data !== "string") {
      const size = data instanceof Blob ? data.size : (data as ArrayBuffer).byteLength;
      if (size > maxBytes) return conn.close(CLOSE_TOO_BIG, `Frame over ${maxBytes} bytes`);
      node.service.reject(
        conn,
        new ChatError("bad_frame", "Expected a text frame with JSON, got a binary frame"),
      );
      return;
    }
    if (data.length > maxBytes || (data.length * 3 > maxBytes && utf8Length(data) > maxBytes)) {
      conn.close(CLOSE_TOO_BIG, `Frame over ${maxBytes} bytes`);
      return;
    }
    node.service.receive(conn, data);
  };
  socket.onclose = onClose;
  socket.onerror = onClose;
  return response;
}

/** The `/ws` handler. */
export async function socketHandler(node: ChatNode, c: Context): Promise<Response> {
  const admitted = await admit(node, c);
  if (admitted instanceof Response) return admitted;
  return upgrade(node, c, admitted.user, admitted.address, admitted.conversations);
}
