/**
 * Operations: `GET /healthz` (KV and bus reachable) and `GET /metrics` (Prometheus text,
 * behind a bearer token), plus `GET /api/node` naming the node that served the request.
 *
 * @module
 */
import { Hono } from "hono";
import type { ChatNode } from "../chat/node.ts";
import { errorJson } from "./errors.ts";

/** The operations routes. */
export function opsRoutes(node: ChatNode): Hono {
  const app = new Hono();

  app.get("/healthz", async (c) => {
    let kv = false;
    try {
      await node.kv.get(["health"]);
      kv = true;
    } catch {
      kv = false;
    }
    const bus = node.bus.healthy();
    const ok = kv && bus && !node.draining;
    return c.json(
      {
        ok,
        node: node.id,
        kv,
        bus: { name: node.bus.name, healthy: bus },
        draining: node.draining,
      },
      ok ? 200 : 503,
    );
  });

  app.get("/metrics", (c) => {
    const token = node.config.CHAT_METRICS_TOKEN;
    if (!token) return errorJson(c, "not_found", "Metrics are disabled: set CHAT_METRICS_TOKEN");
    if (c.req.header("authorization") !== `Bearer ${token}`) {
      return errorJson(c, "unauthorized", "Expected the metrics bearer token");
    }
    const hub = node.hub;
    const text = node.metrics.render({
      chat_connections: { help: "Open sockets on this node", value: hub.connections },
      chat_users_online: { help: "Users online on any node", value: hub.presence.count },
      chat_bus_nodes: { help: "Other nodes heard on the bus", value: hub.presence.nodes },
      chat_bus_healthy: {
        help: "1 when every bus is connected",
        value: node.bus.healthy() ? 1 : 0,
      },
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
      chat_bus_in_total: { help: "Envelopes received from other nodes", value: hub.stats.busIn },
      chat_bus_out_total: { help: "Envelopes published", value: hub.stats.busOut },
      chat_uptime_seconds: {
        help: "Seconds since start",
        value: (Date.now() - node.started) / 1000,
      },
    });
    return c.text(text, 200, { "content-type": "text/plain; version=0.0.4" });
  });

  app.get("/api/node", (c) => c.json({ node: node.id, connections: node.hub.connections }));

  return app;
}
