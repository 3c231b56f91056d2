/**
 * Every Deno KV key the service uses, built by small typed functions so that a typo cannot
 * create a second, silent key space. Values are documented beside their key.
 *
 * @module
 */
import type { ConversationId, UserId } from "./protocol.ts";

/** `ChatMessage` number `seq` of a conversation. */
export const messageKey = (conv: ConversationId, seq: number): Deno.KvKey => ["msg", conv, seq];
/** Prefix of every message of a conversation, in sequence order. */
export const messagePrefix = (conv: ConversationId): Deno.KvKey => ["msg", conv];
/** `number`: the sequence number of a conversation's newest message. */
export const headKey = (conv: ConversationId): Deno.KvKey => ["head", conv];
/** `{ conv, seq, ts }`: where a client-chosen message id of a user was stored. */
export const dedupeKey = (user: UserId, clientId: string): Deno.KvKey => ["dedupe", user, clientId];
/** Relay log entries, keyed by commit versionstamp so they list in commit order. */
export const RELAY_LOG_PREFIX: Deno.KvKey = ["relay", "log"];
/**
 * `Deno.KvU64`: how many relay commits were made, by every node (a `sum` of 1 in each). Watched
 * by the KV bus: a node that made every commit since it last looked need not read the log.
 */
export const RELAY_COUNT_KEY: Deno.KvKey = ["relay", "count"];

/** `UserRecord` by id. */
export const userKey = (id: UserId): Deno.KvKey => ["user", id];
/** `UserId` by canonical (normalized, case-folded) name. */
export const userNameKey = (canonical: string): Deno.KvKey => ["user_name", canonical];
/** `SessionRecord` by session id. */
export const sessionKey = (id: string): Deno.KvKey => ["session", id];
/** Prefix of every session of a user (`true`), to revoke them all. */
export const userSessionKey = (user: UserId, session: string): Deno.KvKey => [
  "user_session",
  user,
  session,
];
/** `{ user, expires }`: a single-use socket ticket. */
export const ticketKey = (id: string): Deno.KvKey => ["ticket", id];
/** `string`: the generated signing secret, when none is configured. */
export const SECRET_KEY: Deno.KvKey = ["config", "secret"];

/** `GroupRecord` by id. */
export const groupKey = (id: string): Deno.KvKey => ["group", id];
/** `{ joinedAt }` for each member of a group. */
export const memberKey = (group: string, user: UserId): Deno.KvKey => ["member", group, user];
/** `{ joinedAt }` for each group of a user (mirror of `memberKey`, same commit). */
export const userGroupKey = (user: UserId, group: string): Deno.KvKey => [
  "user_group",
  user,
  group,
];
/** `{ since }` for each direct conversation of a user, keyed by the peer. */
export const userDirectKey = (user: UserId, peer: UserId): Deno.KvKey => [
  "user_direct",
  user,
  peer,
];
/** `true` when `user` blocks `other`. */
export const blockKey = (user: UserId, other: UserId): Deno.KvKey => ["block", user, other];
/** `number`: the last sequence number a user has read in a conversation. */
export const readKey = (user: UserId, conv: ConversationId): Deno.KvKey => ["read", user, conv];
