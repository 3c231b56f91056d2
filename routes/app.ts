/**
 * The whole HTTP surface of a node as one Hono app. Socket routes come first: header-changing
 * middleware on a socket route throws "Headers are immutable" after the upgrade.
 *
 * @module
 */
import { Hono } from "hono";
import type { ChatNode } from "../chat/node.ts";
import { apiRoutes } from "./api.ts";
import { errorJson } from "./errors.ts";
import { legacySockets } from "./legacy.ts";
import { opsRoutes } from "./ops.ts";
import { pageRoutes, securityHeaders } from "./pages.ts";
import { sessionRoutes } from "./session.ts";
import { socketHandler } from "./ws.ts";

/** Options of {@linkcode createApp}. */
export interface AppOptions {
  /** Extra socket routes mounted before the middleware; the legacy dialects by default. */
  sockets?: (app: Hono, node: ChatNode) => void;
  /** The folder of the web client. */
  staticRoot?: URL;
}

/** The Hono app of a node. */
export function createApp(node: ChatNode, options: AppOptions = {}): Hono {
  const app = new Hono();
  app.get("/ws", (c) => socketHandler(node, c));
  (options.sockets ?? legacySockets)(app, node);
  app.use("*", securityHeaders);
  app.route("/api", sessionRoutes(node));
  app.route("/api", apiRoutes(node));
  app.route("/", opsRoutes(node));
  app.all("/api/*", (c) => errorJson(c, "not_found", `No route ${c.req.method} ${c.req.path}`));
  app.route("/", pageRoutes(options.staticRoot ?? new URL("../static/", import.meta.url)));
  app.notFound((c) => errorJson(c, "not_found", `No route ${c.req.method} ${c.req.path}`));
  app.onError((error, c) => {
    node.logger.error("http_error", { path: c.req.path, error: String(error) });
    return errorJson(c, "internal", "Internal error: try again");
  });
  return app;
}
