/**
 * One node of the service, assembled: the log of record, the directory, accounts, the buses,
 * the hub and the service, wired together from a KV handle and a configuration. `main.ts` and
 * the tests build nodes here; nothing here opens KV or reads the environment.
 *
 * @module
 */
import { Auth } from "./auth.ts";
import type { Bus } from "./bus.ts";
import { MultiBus } from "./bus.ts";
import { BroadcastBus } from "./bus_broadcast.ts";
import { KvBus } from "./bus_kv.ts";
import type { Config } from "./config.ts";
import { Directory, randomId } from "./directory.ts";
import { Hub } from "./hub.ts";
import type { Logger } from "./logger.ts";
import { createLogger } from "./logger.ts";
import { MessageLog } from "./message_log.ts";
import { Metrics } from "./metrics.ts";
import { ChatService } from "./service.ts";
import { withSpanSync } from "./telemetry.ts";

/** Options of {@linkcode createNode}. */
export interface NodeOptions {
  kv: Deno.Kv;
  config: Config;
  /** The node id; random by default. */
  node?: string;
  /** Buses to use instead of those named by `CHAT_BUS` (tests pass a `LocalBus`). */
  buses?: Bus[];
}

/** A running node. */
export interface ChatNode {
  readonly id: string;
  readonly config: Config;
  readonly kv: Deno.Kv;
  readonly log: MessageLog;
  readonly directory: Directory;
  readonly auth: Auth;
  readonly hub: Hub;
  readonly bus: Bus;
  readonly service: ChatService;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly started: number;
  /** Whether the node is shutting down (new sockets are refused). */
  readonly draining: boolean;
  /** Tells clients to reconnect (1012), finishes accepted writes, closes the buses. */
  shutdown(): Promise<void>;
}

/** Builds and starts a node. */
export async function createNode(options: NodeOptions): Promise<ChatNode> {
  const { kv, config } = options;
  const id = options.node ?? `n-${randomId(8)}`;
  const logger = createLogger(config.CHAT_LOG_LEVEL, id);
  const metrics = new Metrics();
  const kinds = config.CHAT_BUS.filter((k) => k !== "none");
  const buses: Bus[] = options.buses ?? await Promise.all(kinds.map(async (kind): Promise<Bus> => {
    switch (kind) {
      case "broadcast":
        return new BroadcastBus("chat");
      case "kv":
        return new KvBus(kv, { node: id, appendsInLog: true });
      case "redis": {
        // Loaded only when asked for: the Redis client's modules take about half a second of CPU
        // to load, at every start of every isolate.
        const { RedisBus } = await import("./bus_redis.ts");
        return new RedisBus({
          url: config.REDIS_URL,
          node: id,
          channel: config.CHAT_REDIS_CHANNEL,
        });
      }
      default:
        throw new TypeError(`Unknown bus: ${kind}`);
    }
  }));
  const bus = metrics.measure(new MultiBus(buses));
  const relay = buses.find((b): b is KvBus => b instanceof KvBus);
  // The hub is created below; the log calls it on each commit.
  // deno-lint-ignore prefer-const -- assigned once the log exists: the log calls the hub.
  let hub!: Hub;
  const log = new MessageLog(kv, {
    retentionCount: config.CHAT_RETENTION_COUNT,
    retentionMs: config.CHAT_RETENTION_DAYS * 86_400_000,
    relay: relay
      ? {
        node: id,
        committed: (versionstamp) => relay.committed(versionstamp),
        active: () => relay.relaying,
      }
      : undefined,
    onCommit(messages, ms, versionstamp) {
      metrics.kvWriteMs.observe(ms);
      withSpanSync(
        "chat.fanout",
        { "chat.messages": messages.length },
        () => hub.appended(messages, versionstamp),
      );
    },
  });
  hub = new Hub({
    node: id,
    log,
    bus,
    maxBufferedBytes: config.CHAT_MAX_BUFFERED_BYTES,
    resumeLimit: config.CHAT_RESUME_LIMIT,
    presenceCrowd: config.CHAT_PRESENCE_CROWD,
    onFanout(message, recipients) {
      metrics.messagesOut += recipients;
      metrics.fanoutMs.observe(Math.max(0, Date.now() - message.ts));
    },
    onError(error, context) {
      logger.warn("hub_error", { context, error: String(error) });
    },
  });
  const directory = new Directory(kv);
  const auth = new Auth(kv, directory, {
    secret: config.CHAT_SECRET,
    sessionMs: config.CHAT_SESSION_HOURS * 3600_000,
    allowGuests: config.CHAT_ALLOW_GUESTS,
    maxNameLength: config.CHAT_MAX_NAME_LENGTH,
    signInPerMinute: config.CHAT_SIGNIN_PER_MINUTE,
  });
  const service = new ChatService({ config, kv, log, directory, hub, metrics, logger });
  await Promise.all(
    buses.map((b) => (b as { ready?: () => Promise<void> }).ready?.() ?? Promise.resolve()),
  );
  hub.start();
  let draining = false;
  let stopped: Promise<void> | null = null;
  logger.info("node_started", { buses: bus.name });
  return {
    id,
    config,
    kv,
    log,
    directory,
    auth,
    hub,
    bus,
    service,
    metrics,
    logger,
    started: Date.now(),
    get draining() {
      return draining;
    },
    shutdown() {
      stopped ??= (async () => {
        draining = true;
        logger.info("node_stopping", { connections: hub.connections });
        // Clients stop sending, and what they sent is acked before their sockets close.
        hub.announceRestart();
        await log.flush();
        service.closeAll();
        await log.close();
        await bus.close();
        logger.info("node_stopped");
      })();
      return stopped;
    },
  };
}
