/**
 * Configuration of the chat service, read once from environment variables and validated.
 *
 * Every knob lives here so the README's table and the code cannot drift apart: each entry
 * names its variable, its default and what it means.
 *
 * @module
 */
import { z } from "zod";

const bool = z.enum(["true", "false", "1", "0", "yes", "no"]).transform((v) =>
  v === "true" || v === "1" || v === "yes"
);
const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);

/** Names of the buses a node can use, alone or together (comma separated in `CHAT_BUS`). */
export const BUS_KINDS = ["broadcast", "kv", "redis", "none"] as const;
/** One of {@linkcode BUS_KINDS}. */
export type BusKind = typeof BUS_KINDS[number];

/** The schema of every environment variable the service reads, with its default. */
export const CONFIG_SCHEMA = z.object({
  /** Where history lives: a file path, `:memory:`, a KV Connect URL, or empty for Deploy. */
  CHAT_KV_PATH: z.string().default("data/chat.kv").refine(
    (path) => !path.includes("://") || isKvConnectUrl(path),
    "Expected a file path, :memory:, or a KV Connect URL (http:// or https://)",
  ),
  /** Which buses carry "new messages" notices between isolates and machines. */
  CHAT_BUS: z.string().default("broadcast,kv").transform((s, ctx) => {
    const kinds = s.split(",").map((k) => k.trim()).filter(Boolean);
    for (const kind of kinds) {
      if (!(BUS_KINDS as readonly string[]).includes(kind)) {
        ctx.addIssue({
          code: "custom",
          message: `Expected one of ${BUS_KINDS.join(", ")}, got "${kind}"`,
        });
        return z.NEVER;
      }
    }
    return kinds as BusKind[];
  }),
  /** Redis URL for the Redis bus. */
  REDIS_URL: z.string().url().default("redis://127.0.0.1:6379").refine(
    (url) => /^rediss?:\/\//.test(url),
    "Expected a redis:// or rediss:// URL",
  ),
  /** Redis pub/sub channel; deployments sharing one Redis server need channels of their own. */
  CHAT_REDIS_CHANNEL: z.string().regex(/^[\w.:-]{1,64}$/, "Expected 1 to 64 of A-Z a-z 0-9 _ . : -")
    .default("chat"),
  /** Secret that signs session tokens; generated once and kept in KV when empty. */
  CHAT_SECRET: z.string().min(32, "Expected at least 32 characters").optional(),
  /** Bearer token for `POST /api/push`; push is disabled when empty. */
  CHAT_ADMIN_TOKEN: z.string().min(16, "Expected at least 16 characters").optional(),
  /** Bearer token for `GET /metrics`; metrics are disabled when empty. */
  CHAT_METRICS_TOKEN: z.string().min(16, "Expected at least 16 characters").optional(),
  /** Whether a name alone (no password) signs in, as in the seeds' clients. */
  CHAT_ALLOW_GUESTS: bool.default(true),
  /** Origins allowed to open a socket, comma separated; empty means the service's own origin. */
  CHAT_ALLOWED_ORIGINS: z.string().default("").transform((s) =>
    s.split(",").map((o) => o.trim()).filter(Boolean)
  ),
  /** Largest message text in UTF-8 bytes. */
  CHAT_MAX_MESSAGE_BYTES: int(1, 60_000).default(4_000),
  /** Largest inbound frame in bytes; above it the socket is closed with 1009. */
  CHAT_MAX_FRAME_BYTES: int(256, 1_048_576).default(16_384),
  /** Longest user name, in characters. */
  CHAT_MAX_NAME_LENGTH: int(2, 64).default(24),
  /** Longest group name, in characters. */
  CHAT_MAX_GROUP_NAME_LENGTH: int(2, 128).default(48),
  /** Messages a connection may send in a burst. */
  CHAT_RATE_BURST: int(1, 100_000).default(20),
  /** Messages per second that refill a connection's budget. */
  CHAT_RATE_PER_SECOND: z.coerce.number().positive().max(100_000).default(5),
  /** Messages a user may send in a burst, over all their connections. */
  CHAT_USER_RATE_BURST: int(1, 100_000).default(40),
  /** Messages per second that refill a user's budget. */
  CHAT_USER_RATE_PER_SECOND: z.coerce.number().positive().max(100_000).default(10),
  /** Rate-limit violations in a row after which the socket is closed with 1008. */
  CHAT_RATE_STRIKES: int(1, 1000).default(20),
  /** Sign-in attempts per name and per address per minute. */
  CHAT_SIGNIN_PER_MINUTE: int(1, 100_000).default(10),
  /** Groups a user may create per hour. */
  CHAT_GROUP_CREATES_PER_HOUR: int(1, 100_000).default(20),
  /** Groups a user may be a member of. */
  CHAT_MAX_GROUPS_PER_USER: int(1, 100_000).default(200),
  /** Open sockets per user. */
  CHAT_MAX_CONNECTIONS_PER_USER: int(1, 100_000).default(10),
  /** Open sockets per remote address. */
  CHAT_MAX_CONNECTIONS_PER_ADDRESS: int(1, 1_000_000).default(200),
  /** Seconds without traffic before the runtime pings and then closes a socket. */
  CHAT_IDLE_TIMEOUT_SECONDS: int(5, 3600).default(60),
  /** Messages in one history page. */
  CHAT_PAGE_SIZE: int(1, 200).default(50),
  /** Most messages replayed per conversation on resume before the client must reload. */
  CHAT_RESUME_LIMIT: int(1, 5000).default(500),
  /** Messages kept per conversation. */
  CHAT_RETENTION_COUNT: int(10, 10_000_000).default(10_000),
  /** Days a message is kept. */
  CHAT_RETENTION_DAYS: z.coerce.number().positive().max(36500).default(30),
  /**
   * Users online (or changes at once) above which a connection hears presence changes only of
   * the users it watches (its direct chats' peers, `presence.watch`), and the online count.
   */
  CHAT_PRESENCE_CROWD: int(0, 1_000_000).default(200),
  /** Bytes queued on a socket beyond which it is closed as a slow consumer. */
  CHAT_MAX_BUFFERED_BYTES: int(1024, 1 << 30).default(4 << 20),
  /** Session lifetime in hours. */
  CHAT_SESSION_HOURS: z.coerce.number().positive().max(24 * 365).default(24 * 30),
  /** Log level of the structured JSON log. */
  CHAT_LOG_LEVEL: z.enum(["debug", "info", "warn", "error", "silent"]).default("info"),
});

/** Whether a KV location is a KV Connect URL (a `denokv` server, or Deploy's KV from outside). */
export function isKvConnectUrl(path: string): boolean {
  if (!/^https?:\/\//.test(path)) return false;
  try {
    new URL(path);
    return true;
  } catch {
    return false;
  }
}

/** The validated configuration. */
export type Config = z.output<typeof CONFIG_SCHEMA>;

/**
 * Reads and validates the configuration from a map of environment variables.
 *
 * Empty strings count as unset, so `FOO=` falls back to the default.
 *
 * @throws {TypeError} naming every bad variable, what was expected and what came
 */
export function loadConfig(env: Record<string, string | undefined>): Config {
  const present: Record<string, string> = {};
  for (const key of Object.keys(CONFIG_SCHEMA.shape)) {
    const value = env[key];
    if (value !== undefined && value !== "") present[key] = value;
  }
  const result = CONFIG_SCHEMA.safeParse(present);
  const lines = result.success
    ? []
    : result.error.issues.map((issue) =>
      `${issue.path.join(".")}=${JSON.stringify(present[String(issue.path[0])])}: ${issue.message}`
    );
  // Read by Deno itself when KV is a KV Connect URL; checked here so a missing token fails at
  // start with its name, not at the first KV call. Never part of the returned configuration.
  if (result.success && isKvConnectUrl(result.data.CHAT_KV_PATH) && !env.DENO_KV_ACCESS_TOKEN) {
    lines.push(
      `DENO_KV_ACCESS_TOKEN: Expected a token for the KV Connect URL in CHAT_KV_PATH, got none`,
    );
  }
  if (!result.success || lines.length) {
    throw new TypeError(`Invalid configuration: ${lines.join("; ")}`);
  }
  return result.data;
}

/** The configuration with every default, as tests start from. */
export function defaultConfig(overrides: Partial<Config> = {}): Config {
  return { ...loadConfig({}), ...overrides };
}
