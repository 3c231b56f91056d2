/**
 * Operations: `GET /healthz` (KV and bus reachable) and `GET /metrics` (Prometheus text,
 * behind a bearer token), plus `GET /api/node` naming the node that served the request.
 *
 * @module
 */
import { Hono } from "hono";
import type { ChatNode } from "../chat/node.ts";
import { bearerToken, constantTimeEqual } from "../chat/secrets.ts";
import { errorJson } from "./errors.ts";

/** How long `/healthz` waits for a KV read before calling KV unreachable. */
export const HEALTH_KV_TIMEOUT_MS = 2000;

/**
 * What `/healthz` answers: 200 when KV answers a read within {@linkcode HEALTH_KV_TIMEOUT_MS},
 * every bus is connected and the node is not draining; 503 otherwise, with the same body saying
 * which part failed.
 */
export interface Health {
  ok: boolean;
  node: string;
  /** KV answered a read. */
  kv: boolean;
  /** Milliseconds the KV read took (or the timeout). */
  kvMs: number;
  bus: { name: string; healthy: boolean };
  draining: boolean;
  connections: number;
  uptimeSeconds: number;
}

/** Checks KV and the bus, for `/healthz`. */
export async function checkHealth(node: ChatNode): Promise<Health> {
  const started = performance.now();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const read = node.kv.get(["health"]).then(() => true, () => false);
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), HEALTH_KV_TIMEOUT_MS);
  });
  let kv: boolean;
  try {
    kv = await Promise.race([read, timeout]);
  } finally {
    clearTimeout(timer);
  }
  const kvMs = Math.round((performance.now() - started) * 10) / 10;
  const bus = node.bus.healthy();
  return {
    ok: kv && bus && !node.draining,
    node: node.id,
    kv,
    kvMs,
    bus: { name: node.bus.name, healthy: bus },
    draining: node.draining,
    connections: node.hub.connections,
    uptimeSeconds: Math.round((Date.now() - node.started) / 1000),
  };
}

/** The Prometheus text of a node: its own metrics plus the hub's and the bus's, read now. */
export function renderMetrics(node: ChatNode): string {
  const hub = node.hub;
  return node.metrics.render({
    chat_node_info: {
      help: "This node's id and buses (a scrape reaches one isolate)",
      value: 1,
      labels: { node: node.id, bus: node.bus.name },
    },
    chat_connections: { help: "Open sockets on this node", value: hub.connections },
    chat_users_online: { help: "Users online on any node", value: hub.presence.count },
    chat_bus_nodes: { help: "Other nodes heard on the bus", value: hub.presence.nodes },
    chat_bus_healthy: {
      help: "1 when every bus is connected",
      value: node.bus.healthy() ? 1 : 0,
    },
    chat_draining: { help: "1 while the node shuts down", value: node.draining ? 1 : 0 },
    chat_delivered_total: { help: "Frames fanned out to sockets", value: hub.stats.delivered },
    chat_gap_fills_total: { help: "Gaps repaired from KV", value: hub.stats.gapFills },
    chat_gap_messages_total: {
      help: "Messages read from KV to fill gaps",
      value: hub.stats.gapMessages,
    },
    chat_slow_consumers_dropped_total: {
      help: "Sockets closed for not reading",
      value: hub.stats.slowClosed,
    },
    chat_log_commits_total: { help: "Commits of the message log", value: node.log.stats.commits },
    chat_log_conflicts_total: {
      help: "Message log commits refused by a check (another writer first): retried",
      value: node.log.stats.conflicts,
    },
    chat_log_locked_total: {
      help: "Message log commits that found the KV file locked: retried",
      value: node.log.stats.locked,
    },
    chat_bus_in_total: { help: "Envelopes received from other nodes", value: hub.stats.busIn },
    chat_bus_out_total: { help: "Envelopes published", value: hub.stats.busOut },
    chat_uptime_seconds: {
      help: "Seconds since start",
      value: (Date.now() - node.started) / 1000,
    },
  });
}

/** The operations routes. */
export function opsRoutes(node: ChatNode): Hono {
  const app = new Hono();

  app.get("/healthz", async (c) => {
    const health = await checkHealth(node);
    c.header("cache-control", "no-store");
    return c.json(health, health.ok ? 200 : 503);
  });

  app.get("/metrics", (c) => {
    const token = node.config.CHAT_METRICS_TOKEN;
    if (!token) return errorJson(c, "not_found", "Metrics are disabled: set CHAT_METRICS_TOKEN");
    const given = bearerToken(c.req.header("authorization"));
    if (given === undefined || !constantTimeEqual(given, token)) {
      c.header("www-authenticate", 'Bearer realm="metrics"');
      return errorJson(c, "unauthorized", "Expected the metrics bearer token");
    }
    c.header("cache-control", "no-store");
    return c.text(renderMetrics(node), 200, {
      "content-type": "text/plain; version=0.0.4; charset=utf-8",
    });
  });

  app.get("/api/node", (c) => c.json({ node: node.id, connections: node.hub.connections }));

  return app;
}
