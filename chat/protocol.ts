/**
 * The wire protocol spoken at `/ws`: client frames (validated here, once, at the edge), server
 * frames (plain types), and the stable error codes. See `docs/protocol.md` for examples.
 *
 * @module
 */
import { z } from "zod";

/** Identifier of a user: chosen by the server. */
export type UserId = string;
/** Identifier of a conversation: `lobby`, `g:<groupId>` or `d:<userId>:<userId>` (sorted). */
export type ConversationId = string;

/** The one public group every user is in. */
export const LOBBY: ConversationId = "lobby";

const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
const CONVERSATION_PATTERN =
  /^(lobby|g:[A-Za-z0-9_-]{1,64}|d:[A-Za-z0-9_-]{1,64}:[A-Za-z0-9_-]{1,64})$/;

const id = z.string().regex(ID_PATTERN, "Expected 1 to 64 letters, digits, _ or -");
const conversation = z.string().regex(
  CONVERSATION_PATTERN,
  "Expected a conversation id: lobby, g:<group> or d:<user>:<user>",
);
const seq = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

/** Schemas of every frame a client may send, keyed by `type`. Unknown fields are refused. */
export const CLIENT_FRAME_SCHEMAS = {
  send: z.strictObject({
    type: z.literal("send"),
    /** Client-chosen message id: a resend with the same id is stored once. */
    id,
    conv: conversation.optional(),
    /** Recipient user id, to start or continue a direct conversation without knowing its id. */
    to: id.optional(),
    text: z.string(),
  }),
  history: z.strictObject({
    type: z.literal("history"),
    conv: conversation,
    before: seq.optional(),
    limit: z.number().int().min(1).max(200).optional(),
  }),
  typing: z.strictObject({ type: z.literal("typing"), conv: conversation }),
  resume: z.strictObject({
    type: z.literal("resume"),
    /** The last sequence number the client saw, per conversation. */
    since: z.record(conversation, seq),
  }),
  read: z.strictObject({ type: z.literal("read"), conv: conversation, seq }),
  "group.create": z.strictObject({
    type: z.literal("group.create"),
    name: z.string(),
    /** Public groups can be joined by anyone; private ones only by the owner adding members. */
    public: z.boolean().optional(),
  }),
  "group.join": z.strictObject({ type: z.literal("group.join"), group: id }),
  "group.leave": z.strictObject({ type: z.literal("group.leave"), group: id }),
  "group.add": z.strictObject({ type: z.literal("group.add"), group: id, user: id }),
  "group.remove": z.strictObject({ type: z.literal("group.remove"), group: id, user: id }),
  "group.members": z.strictObject({ type: z.literal("group.members"), group: id }),
  "group.list": z.strictObject({ type: z.literal("group.list") }),
  "dm.open": z.strictObject({ type: z.literal("dm.open"), user: id }),
  "user.block": z.strictObject({ type: z.literal("user.block"), user: id }),
  "user.unblock": z.strictObject({ type: z.literal("user.unblock"), user: id }),
  "presence.list": z.strictObject({ type: z.literal("presence.list") }),
  "presence.watch": z.strictObject({
    type: z.literal("presence.watch"),
    users: z.array(id).max(500),
  }),
  "user.find": z.strictObject({ type: z.literal("user.find"), name: z.string().max(200) }),
  ping: z.strictObject({ type: z.literal("ping"), t: z.number().optional() }),
} as const;

/** Every `type` a client may send. */
export type ClientFrameType = keyof typeof CLIENT_FRAME_SCHEMAS;
/** A validated client frame. */
export type ClientFrame = {
  [K in ClientFrameType]: z.output<(typeof CLIENT_FRAME_SCHEMAS)[K]>;
}[ClientFrameType];
/** The validated client frame of one type. */
export type ClientFrameOf<K extends ClientFrameType> = z.output<(typeof CLIENT_FRAME_SCHEMAS)[K]>;

/** Stable error codes: clients branch on these, never on the message text. */
export const ERROR_CODES = [
  "bad_json",
  "bad_frame",
  "unknown_type",
  "too_large",
  "rate_limited",
  "not_found",
  "forbidden",
  "unauthorized",
  "conflict",
  "limit_reached",
  "unavailable",
  "internal",
] as const;
/** One of {@linkcode ERROR_CODES}. */
export type ErrorCode = typeof ERROR_CODES[number];

/** An error with a stable code, thrown by the core and turned into an error frame at the edge. */
export class ChatError extends Error {
  /** The stable code sent to the client. */
  readonly code: ErrorCode;
  /** Milliseconds after which a retry may succeed, for `rate_limited`. */
  readonly retryAfterMs?: number;
  constructor(code: ErrorCode, message: string, options?: { retryAfterMs?: number }) {
    super(message);
    this.name = "ChatError";
    this.code = code;
    this.retryAfterMs = options?.retryAfterMs;
  }
}

/** The longest nesting depth, frame bytes aside, a client frame may have. */
const MAX_DEPTH = 4;

function depthOf(value: unknown, depth = 0): number {
  if (depth > MAX_DEPTH || value === null || typeof value !== "object") return depth;
  let max = depth;
  for (const child of Object.values(value as Record<string, unknown>)) {
    max = Math.max(max, depthOf(child, depth + 1));
    if (max > MAX_DEPTH) break;
  }
  return max;
}

/**
 * Parses and validates one text frame from a client.
 *
 * @throws {ChatError} `bad_json`, `bad_frame` or `unknown_type`, with a message saying what was
 * expected and what came
 */
export function parseClientFrame(text: string): ClientFrame {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new ChatError("bad_json", `Expected a JSON object: ${(error as Error).message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new ChatError(
      "bad_frame",
      `Expected a JSON object, got ${
        value === null ? "null" : Array.isArray(value) ? "an array" : typeof value
      }`,
    );
  }
  if (depthOf(value) > MAX_DEPTH) {
    throw new ChatError("bad_frame", `Expected at most ${MAX_DEPTH} levels of nesting`);
  }
  const type = (value as { type?: unknown }).type;
  if (typeof type !== "string") {
    throw new ChatError("bad_frame", 'Expected a string field "type"');
  }
  const schema = Object.hasOwn(CLIENT_FRAME_SCHEMAS, type)
    ? CLIENT_FRAME_SCHEMAS[type as ClientFrameType]
    : undefined;
  if (!schema) {
    throw new ChatError(
      "unknown_type",
      `Expected type to be one of ${Object.keys(CLIENT_FRAME_SCHEMAS).join(", ")}, got ${
        JSON.stringify(type.slice(0, 40))
      }`,
    );
  }
  const result = schema.safeParse(value);
  if (!result.success) {
    const issue = result.error.issues[0];
    const where = issue.path.length ? issue.path.join(".") : "frame";
    throw new ChatError("bad_frame", `Invalid ${type} frame: ${where}: ${issue.message}`);
  }
  return result.data as ClientFrame;
}

/** The conversation id of the direct conversation between two users (order does not matter). */
export function directConversation(a: UserId, b: UserId): ConversationId {
  return a < b ? `d:${a}:${b}` : `d:${b}:${a}`;
}

/** The conversation id of a group. */
export function groupConversation(groupId: string): ConversationId {
  return `g:${groupId}`;
}

/** What a conversation id names. */
export type ParsedConversation =
  | { kind: "lobby" }
  | { kind: "group"; group: string }
  | { kind: "direct"; users: [UserId, UserId] };

/** Splits a conversation id into what it names. */
export function parseConversation(conv: ConversationId): ParsedConversation {
  if (conv === LOBBY) return { kind: "lobby" };
  if (conv.startsWith("g:")) return { kind: "group", group: conv.slice(2) };
  const [, a, b] = conv.split(":");
  return { kind: "direct", users: [a, b] };
}

/** The UTF-8 length of a string, without allocating. */
export function utf8Length(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        bytes += 4;
        i++;
      } else bytes += 3;
    } else bytes += 3;
  }
  return bytes;
}

// ---- Server frames -------------------------------------------------------------------------

/** A user as others see them. */
export interface UserInfo {
  id: UserId;
  name: string;
}

/** A stored message, as sent to clients and kept in KV. */
export interface ChatMessage {
  conv: ConversationId;
  seq: number;
  /** The client-chosen id. */
  id: string;
  from: UserId;
  /** The sender's name at the time of sending. */
  name: string;
  text: string;
  /** Milliseconds since the epoch, server clock. */
  ts: number;
  /** `text` for users' messages, `notice` for server pushes and system events. */
  kind: "text" | "notice";
  /** For membership notices: what happened to whom. */
  meta?: MembershipEvent;
}

/** A change of a group's members, stored in the group's log so every isolate applies it in order. */
export interface MembershipEvent {
  event: "created" | "joined" | "left" | "removed" | "added";
  user: UserInfo;
}

/** A conversation as listed to a member. */
export interface ConversationInfo {
  id: ConversationId;
  kind: "lobby" | "group" | "direct";
  /** Group name, or the other user's name for a direct conversation. */
  title: string;
  /** The other user, for a direct conversation. */
  peer?: UserInfo;
  /** The group, for a group. */
  group?: GroupInfo;
  /** The sequence number of the newest message. */
  lastSeq: number;
  /** The newest sequence number the user has read (for unread counts). */
  read: number;
  /** The newest message, for the conversation list. */
  last?: ChatMessage;
}

/** A group as listed. */
export interface GroupInfo {
  id: string;
  name: string;
  owner: UserId;
  public: boolean;
  createdAt: number;
}

/** The limits a client must respect, sent in the welcome frame. */
export interface Limits {
  maxMessageBytes: number;
  maxFrameBytes: number;
  rate: { burst: number; perSecond: number };
  pageSize: number;
  resumeLimit: number;
}

/** Every frame the server sends. */
export type ServerFrame =
  | {
    type: "welcome";
    user: UserInfo;
    node: string;
    conversations: ConversationInfo[];
    /** Users online now (at most 50; `onlineCount` says how many in all, `presence.list` more). */
    online: UserInfo[];
    onlineCount: number;
    limits: Limits;
    resume: { lastSeq: Record<ConversationId, number> };
  }
  | { type: "ack"; id: string; conv: ConversationId; seq: number; ts: number; duplicate?: boolean }
  | ({ type: "message" } & ChatMessage)
  | {
    type: "history";
    conv: ConversationId;
    messages: ChatMessage[];
    /** Whether older messages exist. */
    more: boolean;
  }
  | { type: "resumed"; conv: ConversationId; from: number; to: number; reload: boolean }
  | { type: "typing"; conv: ConversationId; user: UserInfo }
  | {
    type: "presence";
    /**
     * Users who came online or went offline since the last presence frame: all of them, or in
     * a crowd only those the connection watches.
     */
    changes: { user: UserInfo; online: boolean }[];
    /** How many users are online now. */
    count: number;
    /**
     * More users are online than the server reports one by one: `changes` holds only the
     * peers of your direct conversations and the users of your `presence.watch` list.
     */
    crowd?: boolean;
  }
  | { type: "online"; users: UserInfo[] }
  | { type: "conversation"; conversation: ConversationInfo }
  | { type: "conversation.removed"; conv: ConversationId }
  | { type: "members"; group: string; members: (UserInfo & { online: boolean })[] }
  | { type: "groups"; groups: (GroupInfo & { member: boolean; members: number })[] }
  | { type: "users"; users: UserInfo[] }
  | { type: "blocked"; user: UserId; blocked: boolean }
  | { type: "read"; conv: ConversationId; seq: number }
  | { type: "pong"; t?: number }
  | { type: "reconnect"; reason: string }
  /**
   * The frames of one tick, in order, as one WebSocket frame: only to a socket opened with
   * `?batch=1` (routes/socket_outbox.ts), and never around a lone frame.
   */
  | { type: "batch"; frames: ServerFrame[] }
  | {
    type: "error";
    code: ErrorCode;
    message: string;
    /** The `type` of the frame that failed, when known. */
    ref?: string;
    /** The message id of a failed `send`. */
    id?: string;
    retryAfterMs?: number;
  };

/** The server frame of one type. */
export type ServerFrameOf<K extends ServerFrame["type"]> = Extract<ServerFrame, { type: K }>;
