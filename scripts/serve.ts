/**
 * Starts the service with `deno serve --parallel` on `PORT` (default 8000), with least-privilege
 * permissions for the server: network, environment, reading, and writing only the KV folder.
 * `deno task dev` adds `--watch`. Prints the URL to open, forwards SIGINT/SIGTERM to the server
 * (which shuts down gracefully) and exits with its status.
 *
 * @module
 */
const port = Number(Deno.env.get("PORT") ?? "8000");
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`Invalid PORT: expected an integer from 0 to 65535, got "${Deno.env.get("PORT")}"`);
  Deno.exit(2);
}
const kvPath = Deno.env.get("CHAT_KV_PATH") || "data/chat.kv";
const remote = /^https?:\/\//.test(kvPath) || kvPath === ":memory:";
const kvDir = kvPath.includes("/") ? kvPath.slice(0, kvPath.lastIndexOf("/")) : ".";

const staticDir = new URL("../static", import.meta.url).pathname;
const watch = Deno.args.includes("--watch");
const args = [
  "serve",
  "--parallel",
  "--allow-net",
  "--allow-env",
  // The web client's files and the KV folder: nothing else is read or written.
  `--allow-read=${staticDir}${remote ? "" : `,${kvDir}`}`,
  ...(remote ? [] : [`--allow-write=${kvDir}`]),
  ...(watch ? ["--watch"] : []),
  "--port",
  String(port),
  new URL("../main.ts", import.meta.url).pathname,
];
const child = new Deno.Command(Deno.execPath(), { args, stdin: "inherit" }).spawn();
console.log(`Chat is starting: open http://localhost:${port}/`);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => {
    try {
      child.kill(signal);
    } catch {
      // Already exited.
    }
  });
}
const status = await child.status;
Deno.exit(status.code);
