/**
 * The entry point, for `deno serve` (one isolate per worker with `--parallel`). It is the only
 * module that touches globals: it reads the environment, opens KV, builds the node and the app,
 * and handles SIGINT/SIGTERM: stop accepting sockets, tell clients to reconnect (1012), finish
 * the accepted KV writes, and exit within 5 s, once every worker of the process is done.
 *
 * @module
 */
import { loadConfig } from "./chat/config.ts";
import { openKv } from "./chat/kv_open.ts";
import { createNode } from "./chat/node.ts";
import { createApp } from "./routes/app.ts";
import { preferVectoredWrites } from "./routes/ws.ts";

// `deno serve` adds its own SIGTERM/SIGINT listener once this module has run: it shuts the HTTP
// server down at once, closing every socket with 1001 before the hub's 1012 goes out and while
// the log may still be writing. Its listener is kept aside here and called at the end of our own
// shutdown, to stop the listener once the sockets are told to reconnect.
const addSignalListener = Deno.addSignalListener.bind(Deno);
const runtimeShutdown = new Set<() => void>();
try {
  Object.defineProperty(Deno, "addSignalListener", {
    configurable: true,
    writable: true,
    value: (signal: Deno.Signal, handler: () => void) => {
      if (signal === "SIGTERM" || signal === "SIGINT") runtimeShutdown.add(handler);
      else addSignalListener(signal, handler);
    },
  });
} catch {
  // A runtime that does not allow it: its own shutdown then closes sockets with 1001.
}

// Before any socket opens: a socket must not keep a buffer the size of its largest frame.
preferVectoredWrites(Deno.env);

const config = loadConfig(Deno.env.toObject());
// No path on Deno Deploy: the app's managed database.
const kv = await openKv(
  Deno.env.get("DENO_DEPLOYMENT_ID") && !Deno.env.get("CHAT_KV_PATH")
    ? undefined
    : config.CHAT_KV_PATH || undefined,
);
const node = await createNode({ kv, config });
const app = createApp(node);

// With `deno serve --parallel` every worker isolate gets the signal, and `Deno.exit` in any of
// them ends the whole process: a worker that finished first would cut the others' shutdown
// short. So each worker says hello on a channel of this process at start, and on a signal exits
// only once every worker it heard from has finished (or at the deadline).
const DEADLINE_MS = 4500;
const ANNOUNCE_MS = 250;
const CLOSE_GRACE_MS = 300;
const peers = new Set<string>();
const finished = new Set<string>();
let lifecycle: BroadcastChannel | null = null;
try {
  lifecycle = new BroadcastChannel(`chat-lifecycle-${Deno.pid}`);
  lifecycle.onmessage = (event: MessageEvent<{ type: string; id: string }>) => {
    const { type, id } = event.data;
    if (id === node.id) return;
    peers.add(id);
    if (type === "hello") lifecycle?.postMessage({ type: "here", id: node.id });
    if (type === "done") {
      finished.add(id);
      exitWhenAllDone();
    }
  };
  lifecycle.postMessage({ type: "hello", id: node.id });
} catch {
  // No BroadcastChannel: one isolate per process, nothing to wait for.
}

let stopping = false;
let stopped = false;

function exitWhenAllDone(): void {
  if (!stopped) return;
  for (const peer of peers) if (!finished.has(peer)) return;
  Deno.exit(0);
}

async function stop(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  node.logger.info("signal", { signal, workers: peers.size + 1, deferred: runtimeShutdown.size });
  // Deno Deploy sends SIGKILL 5 s after SIGINT: exit before, whatever is left.
  setTimeout(() => Deno.exit(0), DEADLINE_MS);
  // Clients stop sending on `reconnect`; frames already on their way arrive before the close.
  node.hub.announceRestart();
  await new Promise((r) => setTimeout(r, ANNOUNCE_MS));
  try {
    await node.shutdown();
  } catch (error) {
    node.logger.error("shutdown_failed", { error: String(error) });
  }
  // A socket's close event fires as soon as close() is called, while the close frame is still
  // on its way: exiting at once would reset the connections of clients still sending, and they
  // would see an abnormal closure instead of 1012. Give the frames a moment.
  await new Promise((r) => setTimeout(r, CLOSE_GRACE_MS));
  for (const handler of runtimeShutdown) {
    try {
      handler();
    } catch {
      // The HTTP server is closing anyway.
    }
  }
  try {
    kv.close();
  } catch {
    // Already closed.
  }
  stopped = true;
  lifecycle?.postMessage({ type: "done", id: node.id });
  exitWhenAllDone();
}
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  try {
    addSignalListener(signal, () => void stop(signal));
  } catch {
    // Signals are not available everywhere (some hosted runtimes).
  }
}

let listening = false;
const server = {
  fetch: (request: Request, info: Deno.ServeHandlerInfo) => app.fetch(request, info),
  onListen(addr: Deno.Addr) {
    listening = true;
    node.logger.info("listening", { addr });
  },
} satisfies Deno.ServeDefaultExport;
export default server;

// Deno Deploy starts the entrypoint like `deno run`, where nothing serves a default export: serve
// it here then. (Under `deno serve` the server has called onListen before this timer fires.)
if (Deno.env.get("DENO_DEPLOY")) {
  setTimeout(() => {
    if (!listening) Deno.serve({ onListen: server.onListen }, server.fetch);
  }, 0);
}
