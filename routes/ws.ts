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
import { CLOSE_TOO_BIG } from "../chat/service.ts";
import { errorJson } from "./errors.ts";
import { addressOf, authenticate } from "./session.ts";

/** Whether a request's `Origin` may open a socket: the allow-list, or the service's own origin. */
export function originAllowed(node: ChatNode, c: Context): boolean {
  const origin = c.req.header("origin");
  // Non-browser clients send no Origin; a browser always does, so cookies cannot be abused.
  if (!origin) return true;
  const allowed = node.config.CHAT_ALLOWED_ORIGINS;
  if (allowed.length) return allowed.includes(origin) || allowed.includes("*");
  const host = c.req.header("host");
  const proto = c.req.header("x-forwarded-proto") ?? new URL(c.req.url).protocol.slice(0, -1);
  return !!host && (origin === `${proto}://${host}` || origin === `http://${host}` ||
    origin === `https://${host}`);
}

const addresses = new Map<string, number>();

/**
 * Checks the handshake: origin, session, limits. Returns the user, or an error response.
 */
export async function admit(
  node: ChatNode,
  c: Context,
): Promise<{ user: UserRecord; address: string } | Response> {
  if (node.draining) {
    node.metrics.refusedUpgrades++;
    return errorJson(c, "unavailable", "Server restarting: reconnect shortly");
  }
  if (c.req.header("upgrade")?.toLowerCase() !== "websocket") {
    return errorJson(c, "bad_frame", "Expected a WebSocket upgrade request");
  }
  if (!originAllowed(node, c)) {
    node.metrics.refusedUpgrades++;
    return errorJson(c, "forbidden", "Origin not allowed");
  }
  const ticket = c.req.query("ticket");
  const who = ticket ? await node.auth.redeem(ticket) : await authenticate(node, c);
  if (!who) {
    node.metrics.refusedUpgrades++;
    return errorJson(c, "unauthorized", "Expected a valid session: sign in first");
  }
  const address = addressOf(c);
  const config = node.config;
  if (node.service.connectionsOf(who.user.id) >= config.CHAT_MAX_CONNECTIONS_PER_USER) {
    node.metrics.refusedUpgrades++;
    return errorJson(
      c,
      "limit_reached",
      `Too many connections: at most ${config.CHAT_MAX_CONNECTIONS_PER_USER} per user`,
    );
  }
  if ((addresses.get(address) ?? 0) >= config.CHAT_MAX_CONNECTIONS_PER_ADDRESS) {
    node.metrics.refusedUpgrades++;
    return errorJson(
      c,
      "limit_reached",
      `Too many connections: at most ${config.CHAT_MAX_CONNECTIONS_PER_ADDRESS} per address`,
    );
  }
  return { user: who.user, address };
}

/**
 * Upgrades the request and wires the socket to the service. `adapt` lets another dialect (the
 * legacy endpoint) wrap the connection.
 */
export function upgrade(
  node: ChatNode,
  c: Context,
  user: UserRecord,
  address: string,
): Response {
  const { socket, response } = Deno.upgradeWebSocket(c.req.raw, {
    idleTimeout: node.config.CHAT_IDLE_TIMEOUT_SECONDS,
  });
  const conn: Connection = {
    id: randomId(16),
    user: { id: user.id, name: user.name },
    send: (data) => {
      if (socket.readyState === WebSocket.OPEN) socket.send(data);
    },
    bufferedAmount: () => socket.bufferedAmount,
    close: (code, reason) => {
      if (socket.readyState <= WebSocket.OPEN) socket.close(code, reason);
    },
  };
  addresses.set(address, (addresses.get(address) ?? 0) + 1);
  const maxBytes = node.config.CHAT_MAX_FRAME_BYTES;
  let closed = false;
  const onClose = () => {
    if (closed) return;
    closed = true;
    const n = (addresses.get(address) ?? 1) - 1;
    if (n <= 0) addresses.delete(address);
    else addresses.set(address, n);
    node.service.close(conn);
  };
  socket.onopen = () => {
    node.service.open(conn, user);
  };
  socket.onmessage = (event: MessageEvent) => {
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
  return upgrade(node, c, admitted.user, admitted.address);
}
