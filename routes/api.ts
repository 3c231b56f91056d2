/**
 * REST routes under `/api` besides the session ones: history pages and server push.
 *
 * @module
 */
import { Hono } from "hono";
import type { ChatNode } from "../chat/node.ts";
import type { PushTarget } from "../chat/service.ts";
import { ChatError } from "../chat/protocol.ts";
import { bearerToken, constantTimeEqual } from "../chat/secrets.ts";
import { errorJson, errorResponse, jsonBody } from "./errors.ts";
import { authenticate } from "./session.ts";

const CONVERSATION = /^(lobby|g:[A-Za-z0-9_-]{1,64}|d:[A-Za-z0-9_-]{1,64}:[A-Za-z0-9_-]{1,64})$/;

function intParam(value: string | undefined, name: string, min: number, max: number) {
  if (value === undefined || value === "") return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new ChatError("bad_frame", `Expected ${name} to be an integer from ${min} to ${max}`);
  }
  return n;
}

/** History and push routes. */
export function apiRoutes(node: ChatNode): Hono {
  const app = new Hono();

  app.get("/conversations/:conv/messages", async (c) => {
    const who = await authenticate(node, c);
    if (!who) return errorJson(c, "unauthorized", "Expected a session: sign in first");
    try {
      const conv = c.req.param("conv");
      if (!CONVERSATION.test(conv)) throw new ChatError("not_found", `Conversation not found`);
      const before = intParam(c.req.query("before"), "before", 1, Number.MAX_SAFE_INTEGER);
      const limit = intParam(c.req.query("limit"), "limit", 1, 200) ?? node.config.CHAT_PAGE_SIZE;
      const page = await node.service.history(who.user, conv, before, limit);
      return c.json({ conv, ...page });
    } catch (error) {
      return errorResponse(c, error);
    }
  });

  app.post("/push", async (c) => {
    const token = node.config.CHAT_ADMIN_TOKEN;
    const given = bearerToken(c.req.header("authorization"));
    if (!token || given === undefined || !constantTimeEqual(given, token)) {
      return errorJson(c, "unauthorized", "Expected the admin bearer token");
    }
    try {
      const body = await jsonBody(c, 128 * 1024);
      const to = body.to as Record<string, unknown> | undefined;
      let target: PushTarget;
      if (to && typeof to === "object" && typeof to.user === "string") target = { user: to.user };
      else if (to && typeof to === "object" && typeof to.group === "string") {
        target = { group: to.group };
      } else if (to && typeof to === "object" && to.all === true) target = { all: true };
      else {
        throw new ChatError(
          "bad_frame",
          'Expected "to" to be {"user": id}, {"group": id} or {"all": true}',
        );
      }
      if (typeof body.text !== "string") {
        throw new ChatError("bad_frame", 'Expected "text" to be a string');
      }
      if (
        body.id !== undefined && (typeof body.id !== "string" || !/^[\w-]{1,64}$/.test(body.id))
      ) {
        throw new ChatError("bad_frame", 'Expected "id" to be 1 to 64 letters, digits, _ or -');
      }
      const result = await node.service.push(target, body.text, body.id as string | undefined);
      return c.json({ delivered: result });
    } catch (error) {
      return errorResponse(c, error);
    }
  });

  return app;
}
