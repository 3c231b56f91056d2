/**
 * The legacy dialects: the JSON frames the seed tutorials' browser clients (PHP WebSocket chat
 * rooms) send and receive, spoken at `/ws/legacy` and at a bare socket upgrade of `/`. Client
 * frames are validated here, once, at the edge; `routes/legacy.ts` adapts them to the service.
 * See `docs/protocol.md`, "Legacy dialects".
 *
 * Unlike `/ws` frames, unknown fields are ignored (the seed pages send what they send), `uid` and
 * `gid` may be numbers, and text that is not a JSON object is a lobby message (seeds 001, 003).
 *
 * @module
 */
import { z } from "zod";
import { ChatError } from "./protocol.ts";

/** A frame of the legacy dialects, as the server sends it. */
export type LegacyFrame =
  | { type: "handshake"; content: "done" }
  | { type: "login" | "logout"; content: string; uid: string; user_list: string[] }
  | { type: "user"; from: string; uid: string; content: string }
  | { type: "pm"; from: string; uid: string; to: string; content: string }
  | { type: "groupPm"; gid: string; from: string; uid: string; content: string }
  | { type: "system"; content: string; gid?: string };

/** What a legacy client's text frame asks for. */
export type LegacyRequest =
  | { type: "login"; name: unknown }
  | { type: "logout" }
  | { type: "user"; text: string; plain?: true }
  | { type: "pm"; text: string; to: string }
  | { type: "group"; text: string; gid: string };

const content = z.string({
  error: (issue) =>
    `Expected "content" to be a string, got ${issue.input === null ? "null" : typeof issue.input}`,
});

/**
 * A user or group id as the seed pages send it: a non-blank string (trimmed) or a safe integer
 * (seed 000 keeps ids in numeric variables), always given back as a string.
 */
function target(field: "uid" | "gid") {
  // The same message on every check: a union reports whichever of its branches came closest.
  const error = `Expected "${field}" to be a string or an integer`;
  return z.union([
    z.string(error).trim().min(1, error),
    z.number(error).int(error).transform(String),
  ], { error });
}

/**
 * Schemas of the JSON frames a legacy client may send, keyed by `type`, each giving the
 * {@linkcode LegacyRequest} it stands for. Checked in field order: `content` before `uid` or
 * `gid`, so the first issue names the field the seed clients most often get wrong.
 */
export const LEGACY_FRAME_SCHEMAS = {
  // Any name, or none: a name that breaks the rules still signs in, under a generated name.
  login: z.object({ type: z.literal("login"), content: z.unknown().optional() })
    .transform(({ content }): LegacyRequest => ({ type: "login", name: content })),
  logout: z.object({ type: z.literal("logout") })
    .transform((): LegacyRequest => ({ type: "logout" })),
  user: z.object({ type: z.literal("user"), content })
    .transform(({ content }): LegacyRequest => ({ type: "user", text: content })),
  pm: z.object({ type: z.literal("pm"), content, uid: target("uid") })
    .transform(({ content, uid }): LegacyRequest => ({ type: "pm", text: content, to: uid })),
  group: z.object({ type: z.literal("group"), content, gid: target("gid") })
    .transform(({ content, gid }): LegacyRequest => ({ type: "group", text: content, gid })),
} as const satisfies Record<string, z.ZodType<LegacyRequest>>;

/** Every `type` of a legacy client's JSON frame. */
export type LegacyFrameType = keyof typeof LEGACY_FRAME_SCHEMAS;

/** The `msg=` prefix seed 003 puts before its plain-text messages. */
const PLAIN_PREFIX = "msg=";

/**
 * Parses a legacy client's text frame. A JSON object is one of the seed frames (`login`, `user`,
 * `pm`, `group`, or `logout`); anything else is plain text for the lobby, as seeds 001 and 003
 * send it, with the `msg=` prefix of seed 003 taken off.
 *
 * @example
 * ```ts
 * parseLegacy('{"type":"pm","content":"hi","uid":7}'); // { type: "pm", text: "hi", to: "7" }
 * parseLegacy("msg=hello"); // { type: "user", text: "hello", plain: true }
 * ```
 *
 * @throws {ChatError} `unknown_type` for a string `type` that is not a legacy frame's,
 * `bad_frame` for any other malformed frame, with a message saying what was expected
 */
export function parseLegacy(text: string): LegacyRequest {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    value = undefined;
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    const plain = text.startsWith(PLAIN_PREFIX) ? text.slice(PLAIN_PREFIX.length) : text;
    return { type: "user", text: plain, plain: true };
  }
  const type = (value as { type?: unknown }).type;
  const schema = typeof type === "string" && Object.hasOwn(LEGACY_FRAME_SCHEMAS, type)
    ? LEGACY_FRAME_SCHEMAS[type as LegacyFrameType]
    : undefined;
  if (!schema) {
    throw new ChatError(
      typeof type === "string" ? "unknown_type" : "bad_frame",
      `Expected "type" to be login, user, pm or group, got ${
        JSON.stringify(typeof type === "string" ? type.slice(0, 40) : type)
      }`,
    );
  }
  const result = schema.safeParse(value);
  if (!result.success) throw new ChatError("bad_frame", result.error.issues[0].message);
  return result.data;
}
