/**
 * Sign-in, registration, sign-out, the current user, socket tickets and name suggestions, under
 * `/api`. The session travels as an HttpOnly, SameSite cookie for the browser and as a bearer
 * token for scripts; both are the same signed token.
 *
 * @module
 */
import { bearerToken } from "../chat/secrets.ts";
import type { Context } from "hono";
import { Hono } from "hono";
import { getConnInfo } from "hono/deno";
import { deleteCookie, getCookie, setCookie } from "hono/cookie";
import type { UserRecord } from "../chat/directory.ts";
import type { SignedIn } from "../chat/auth.ts";
import type { UserId } from "../chat/protocol.ts";
import { TICKET_MS } from "../chat/auth.ts";
import type { ChatNode } from "../chat/node.ts";
import { canonicalName } from "../chat/names.ts";
import { errorJson, errorResponse, jsonBody } from "./errors.ts";

/** The session cookie's name. */
export const SESSION_COOKIE = "chat_session";

/** The remote address of a request (the socket's peer). */
export function addressOf(c: Context): string {
  try {
    return getConnInfo(c).remote.address ?? "unknown";
  } catch {
    return "unknown";
  }
}

/**
 * Whether a request's `Origin` is allowed: the configured allow-list (`*` allows any), or the
 * service's own origin. A request without `Origin` is not from a browser page (browsers send it
 * on every WebSocket handshake and every cross-origin or state-changing fetch), so it is allowed:
 * it cannot carry a victim's cookie on an attacker's behalf.
 */
export function originAllowed(node: ChatNode, c: Context): boolean {
  const origin = c.req.header("origin");
  if (origin === undefined) return true;
  const allowed = node.config.CHAT_ALLOWED_ORIGINS;
  if (allowed.length) return allowed.includes(origin) || allowed.includes("*");
  const host = c.req.header("host");
  if (!host) return false;
  const proto = c.req.header("x-forwarded-proto")?.split(",")[0].trim() ??
    new URL(c.req.url).protocol.slice(0, -1);
  // Either scheme: a TLS-terminating proxy may not say which one the page used.
  return origin === `${proto}://${host}` || origin === `http://${host}` ||
    origin === `https://${host}`;
}

/** The session token of a request: the bearer header first, then the cookie. */
export function tokenOf(c: Context): string | undefined {
  return bearerToken(c.req.header("authorization")) ?? getCookie(c, SESSION_COOKIE);
}

/** The signed-in user of a request, or null; `ahead` as in `Auth.verify`. */
export async function authenticate(
  node: ChatNode,
  c: Context,
  ahead?: (user: UserId) => void,
): Promise<{ user: UserRecord; session: string } | null> {
  const token = tokenOf(c);
  if (!token || token.length > 200) return null;
  return await node.auth.verify(token, ahead);
}

function signedIn(c: Context, result: SignedIn, status: 200 | 201) {
  c.header("Cache-Control", "no-store");
  setCookie(c, SESSION_COOKIE, result.token, {
    httpOnly: true,
    sameSite: "Strict",
    path: "/",
    secure: new URL(c.req.url).protocol === "https:",
    expires: new Date(result.expiresAt),
  });
  return c.json({
    user: { id: result.user.id, name: result.user.name, registered: !!result.user.passwordHash },
    token: result.token,
    expiresAt: result.expiresAt,
  }, status);
}

/** The session routes. */
export function sessionRoutes(node: ChatNode): Hono {
  const app = new Hono();

  // Cross-site requests that change state are refused, whatever the cookie's SameSite.
  app.on(["POST", "DELETE", "PUT", "PATCH"], "*", async (c, next) => {
    if (!originAllowed(node, c)) return errorJson(c, "forbidden", "Origin not allowed");
    await next();
  });

  app.get("/names/suggest", async (c) => {
    const base = c.req.query("base");
    const name = await node.directory.freeName(
      base && /^[\p{L}\p{N}_-]{2,16}$/u.test(base)
        ? base
        : `Guest-${1000 + Math.floor(Math.random() * 9000)}`,
      canonicalName,
    );
    return c.json({ name });
  });

  app.post("/session", async (c) => {
    try {
      const body = await jsonBody(c);
      const result = await node.auth.signIn(body.name, body.password, addressOf(c));
      node.logger.info("signed_in", { user: result.user.id, guest: !result.user.passwordHash });
      return signedIn(c, result, 200);
    } catch (error) {
      return errorResponse(c, error);
    }
  });

  app.post("/register", async (c) => {
    try {
      const body = await jsonBody(c);
      const result = await node.auth.register(body.name, body.password, addressOf(c));
      node.logger.info("registered", { user: result.user.id });
      return signedIn(c, result, 201);
    } catch (error) {
      return errorResponse(c, error);
    }
  });

  app.delete("/session", async (c) => {
    const who = await authenticate(node, c);
    deleteCookie(c, SESSION_COOKIE, { path: "/" });
    if (!who) return errorJson(c, "unauthorized", "Expected a session: sign in first");
    await node.auth.revoke(who.session);
    node.hub.kick(who.user.id, "Signed out");
    node.logger.info("signed_out", { user: who.user.id });
    return c.json({ ok: true });
  });

  app.post("/password", async (c) => {
    const who = await authenticate(node, c);
    if (!who) return errorJson(c, "unauthorized", "Expected a session: sign in first");
    try {
      const body = await jsonBody(c);
      const result = await node.auth.changePassword(
        who.user,
        body.current,
        body.password,
        addressOf(c),
      );
      node.hub.kick(who.user.id, "Password changed: sign in again");
      node.logger.info("password_changed", { user: who.user.id });
      return signedIn(c, result, 200);
    } catch (error) {
      return errorResponse(c, error);
    }
  });

  app.get("/me", async (c) => {
    const who = await authenticate(node, c);
    if (!who) return errorJson(c, "unauthorized", "Expected a session: sign in first");
    const { id, name, passwordHash } = who.user;
    c.header("Cache-Control", "no-store");
    return c.json({ user: { id, name, registered: !!passwordHash } });
  });

  app.post("/session/ticket", async (c) => {
    const who = await authenticate(node, c);
    if (!who) return errorJson(c, "unauthorized", "Expected a session: sign in first");
    c.header("Cache-Control", "no-store");
    return c.json({
      ticket: await node.auth.ticket(who.user.id, who.session),
      expiresInMs: TICKET_MS,
    });
  });

  return app;
}
