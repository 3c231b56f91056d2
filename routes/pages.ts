/**
 * The web client: the files of `static/`, served with security headers (a CSP that forbids
 * inline script, no framing, no sniffing). Files are read once and kept in memory.
 *
 * @module
 */
import type { Context, MiddlewareHandler } from "hono";
import { Hono } from "hono";

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  mjs: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  svg: "image/svg+xml",
  png: "image/png",
  ico: "image/x-icon",
  json: "application/json",
  webmanifest: "application/manifest+json",
  txt: "text/plain; charset=utf-8",
};

/** The Content-Security-Policy of every page. */
export const CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self' ws: wss:",
  "object-src 'none'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
  "form-action 'self'",
].join("; ");

/** Adds the security headers to every response. */
export const securityHeaders: MiddlewareHandler = async (c, next) => {
  await next();
  if (c.res.status === 101) return;
  c.header("Content-Security-Policy", CSP);
  c.header("X-Content-Type-Options", "nosniff");
  c.header("X-Frame-Options", "DENY");
  c.header("Referrer-Policy", "no-referrer");
  c.header("Cross-Origin-Opener-Policy", "same-origin");
  c.header("Permissions-Policy", "camera=(), microphone=(), geolocation=()");
  c.header("Cross-Origin-Resource-Policy", "same-origin");
  const https = new URL(c.req.url).protocol === "https:" ||
    c.req.header("x-forwarded-proto")?.split(",")[0].trim() === "https";
  if (https) c.header("Strict-Transport-Security", "max-age=31536000");
};

/** Routes serving `root` (a folder URL) at `/`. */
export function pageRoutes(root: URL): Hono {
  const app = new Hono();
  const cache = new Map<string, { body: Uint8Array<ArrayBuffer>; etag: string } | null>();

  async function load(path: string) {
    if (cache.has(path)) return cache.get(path)!;
    let file: { body: Uint8Array<ArrayBuffer>; etag: string } | null = null;
    try {
      const body = await Deno.readFile(new URL(path, root)) as Uint8Array<ArrayBuffer>;
      const digest = await crypto.subtle.digest("SHA-1", body);
      const etag = `"${
        [...new Uint8Array(digest)].slice(0, 8).map((b) => b.toString(16).padStart(2, "0")).join("")
      }"`;
      file = { body, etag };
    } catch {
      file = null;
    }
    cache.set(path, file);
    return file;
  }

  const serve = async (c: Context, path: string) => {
    if (!/^[a-zA-Z0-9_\-/]+\.[a-z0-9]+$/.test(path) || path.includes("..")) return c.notFound();
    const file = await load(path);
    if (!file) return c.notFound();
    if (c.req.header("if-none-match") === file.etag) return c.body(null, 304);
    const ext = path.slice(path.lastIndexOf(".") + 1);
    return c.body(file.body, 200, {
      "content-type": TYPES[ext] ?? "application/octet-stream",
      etag: file.etag,
      "cache-control": "no-cache",
    });
  };

  app.get("/", (c) => serve(c, "index.html"));
  app.get("/*", (c) => serve(c, c.req.path.slice(1)));
  return app;
}
