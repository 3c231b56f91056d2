/**
 * HTTP error responses: a status and a JSON body `{ "error": { "code", "message" } }` with the
 * same stable codes as the socket's error frames.
 *
 * @module
 */
import type { Context } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { ChatError } from "../chat/protocol.ts";
import type { ErrorCode } from "../chat/protocol.ts";

const STATUS: Record<ErrorCode, ContentfulStatusCode> = {
  bad_json: 400,
  bad_frame: 400,
  unknown_type: 400,
  too_large: 413,
  rate_limited: 429,
  not_found: 404,
  forbidden: 403,
  unauthorized: 401,
  conflict: 409,
  limit_reached: 403,
  unavailable: 503,
  internal: 500,
};

/** The JSON error response for `code`. */
export function errorJson(c: Context, code: ErrorCode, message: string, retryAfterMs?: number) {
  if (retryAfterMs !== undefined) c.header("Retry-After", String(Math.ceil(retryAfterMs / 1000)));
  return c.json({ error: { code, message } }, STATUS[code]);
}

/** The JSON error response for a thrown error; unknown errors become a bare 500. */
export function errorResponse(c: Context, error: unknown) {
  if (error instanceof ChatError) {
    return errorJson(c, error.code, error.message, error.retryAfterMs);
  }
  console.error(JSON.stringify({ level: "error", event: "http_error", error: String(error) }));
  return errorJson(c, "internal", "Internal error: try again");
}

/**
 * Reads a JSON object body of at most `maxBytes`, or throws `too_large` or `bad_json`. The body
 * is read in chunks and abandoned as soon as it is too big, so a huge body is never buffered.
 */
export async function jsonBody(c: Context, maxBytes = 16_384): Promise<Record<string, unknown>> {
  const tooLarge = () => new ChatError("too_large", `Expected a body of at most ${maxBytes} bytes`);
  const declared = Number(c.req.header("content-length") ?? 0);
  if (declared > maxBytes) throw tooLarge();
  const chunks: Uint8Array[] = [];
  let size = 0;
  const body = c.req.raw.body;
  if (body) {
    const reader = body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > maxBytes) {
        await reader.cancel().catch(() => {});
        throw tooLarge();
      }
      chunks.push(value);
    }
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.byteLength;
  }
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new ChatError("bad_json", "Expected a JSON object body in UTF-8");
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new ChatError("bad_json", "Expected a JSON object body");
  }
  return value as Record<string, unknown>;
}
