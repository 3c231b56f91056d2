/**
 * The entry point, for `deno serve` (one isolate per worker with `--parallel`). It is the only
 * module that touches globals: it reads the environment, opens KV, builds the node and the app,
 * and handles SIGINT/SIGTERM: tell clients to reconnect (1012), finish writes, exit within 5 s.
 *
 * @module
 */
import { loadConfig } from "./chat/config.ts";
import { createNode } from "./chat/node.ts";
import { createApp } from "./routes/app.ts";

const config = loadConfig(Deno.env.toObject());
const path = config.CHAT_KV_PATH;
const local = path !== "" && path !== ":memory:" && !/^https?:\/\//.test(path);
if (local) {
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
  await Deno.mkdir(dir, { recursive: true });
}
// No path on Deno Deploy: the app's managed database.
const kv = await Deno.openKv(
  Deno.env.get("DENO_DEPLOYMENT_ID") && !Deno.env.get("CHAT_KV_PATH")
    ? undefined
    : path || undefined,
);
const node = await createNode({ kv, config });
const app = createApp(node);

let stopping = false;
async function stop(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  node.logger.info("signal", { signal });
  const deadline = setTimeout(() => Deno.exit(0), 4500);
  try {
    await node.shutdown();
    kv.close();
  } finally {
    clearTimeout(deadline);
    Deno.exit(0);
  }
}
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  try {
    Deno.addSignalListener(signal, () => void stop(signal));
  } catch {
    // Signals are not available everywhere (some hosted runtimes).
  }
}

export default {
  fetch: (request: Request, info: Deno.ServeHandlerInfo) => app.fetch(request, info),
} satisfies Deno.ServeDefaultExport;
