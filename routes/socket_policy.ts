/**
 * What every socket route shares: the handshake checks made before anything else (draining, a
 * real upgrade, the per-address limit), the per-node counts behind the connection limits, and
 * the polite close for policy and size violations.
 *
 * @module
 */
import type { Context } from "hono";
import type { ChatNode } from "../chat/node.ts";
import type { ErrorCode } from "../chat/protocol.ts";
import { CLOSE_POLICY, CLOSE_TOO_BIG } from "../chat/service.ts";
import { errorJson } from "./errors.ts";
import { addressOf } from "./session.ts";

/** Milliseconds without inbound frames before a policy close frame is sent. */
const CLOSE_QUIET_MS = 50;
/** Longest wait for that pause; then the socket is closed anyway. */
const CLOSE_DRAIN_MAX_MS = 1000;

/** Open (or opening) sockets of one node, per address and per user. */
export interface SocketCounts {
  addresses: Map<string, number>;
  users: Map<string, number>;
}

// Per node, not per module: tests run several nodes in one process.
const counts = new WeakMap<ChatNode, SocketCounts>();

/** The socket counts of a node, shared by `/ws` and the legacy routes. */
export function socketCounts(node: ChatNode): SocketCounts {
  let c = counts.get(node);
  if (!c) counts.set(node, c = { addresses: new Map(), users: new Map() });
  return c;
}

/** Adds `by` to the count of `key`, forgetting zeros. */
export function bump(map: Map<string, number>, key: string, by: number): void {
  const n = (map.get(key) ?? 0) + by;
  if (n <= 0) map.delete(key);
  else map.set(key, n);
}

/** Refuses a socket handshake: counted, and logged with the reason and the address only. */
export function refuseUpgrade(
  node: ChatNode,
  c: Context,
  code: ErrorCode,
  message: string,
): Response {
  node.metrics.refusedUpgrades++;
  // The reason and the address only: never the token, the ticket or the query string.
  node.logger.info("socket_refused", { code, address: addressOf(c) });
  return errorJson(c, code, message);
}

/**
 * The checks every socket route makes first: the node is not draining, and the request asks
 * for a WebSocket upgrade. Returns the refusal, or undefined when the handshake may go on.
 */
export function checkUpgrade(node: ChatNode, c: Context): Response | undefined {
  if (node.draining) {
    return refuseUpgrade(node, c, "unavailable", "Server restarting: reconnect shortly");
  }
  // Not counted as a refused upgrade: no upgrade was asked for.
  if (c.req.header("upgrade")?.toLowerCase() !== "websocket") {
    return errorJson(c, "bad_frame", "Expected a WebSocket upgrade request");
  }
  return undefined;
}

/** A refusal when `address` has as many sockets as allowed, else undefined. */
export function addressOverLimit(
  node: ChatNode,
  c: Context,
  address: string,
): Response | undefined {
  const max = node.config.CHAT_MAX_CONNECTIONS_PER_ADDRESS;
  if ((socketCounts(node).addresses.get(address) ?? 0) < max) return undefined;
  return refuseUpgrade(
    node,
    c,
    "limit_reached",
    `Too many connections: at most ${max} per address`,
  );
}

/** A socket's close, patient for policy and size violations. */
export interface PoliteCloser {
  /** Call on every inbound frame; returns false once a close was requested (ignore the frame). */
  frame(): boolean;
  /** Closes: at once, or for 1008/1009 once the client pauses (at most a second). */
  close(code: number, reason: string): void;
  /** Stops a pending close timer (the socket closed). */
  dispose(): void;
}

/**
 * A Deno server socket that gets a data frame after it sent its close frame drops the connection
 * without that frame (Deno 2.9), so a client still sending would never learn why it was closed.
 * For a policy or size close, frames are ignored until the client pauses (or a second passes),
 * then the close frame goes out.
 */
export function politeCloser(socket: WebSocket): PoliteCloser {
  let lastFrameAt = 0;
  let requested = false;
  let drain: ReturnType<typeof setTimeout> | undefined;
  return {
    frame() {
      lastFrameAt = Date.now();
      return !requested;
    },
    close(code, reason) {
      if (socket.readyState > WebSocket.OPEN) return;
      const patient = code === CLOSE_POLICY || code === CLOSE_TOO_BIG;
      if (requested && patient) return;
      requested = true;
      clearTimeout(drain);
      const deadline = Date.now() + CLOSE_DRAIN_MAX_MS;
      const attempt = () => {
        drain = undefined;
        if (socket.readyState > WebSocket.OPEN) return;
        const quiet = Date.now() - lastFrameAt;
        if (
          !patient || socket.readyState !== WebSocket.OPEN || quiet >= CLOSE_QUIET_MS ||
          Date.now() >= deadline
        ) {
          socket.close(code, reason);
        } else {
          drain = setTimeout(attempt, CLOSE_QUIET_MS - quiet);
        }
      };
      attempt();
    },
    dispose() {
      clearTimeout(drain);
    },
  };
}
