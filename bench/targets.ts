/**
 * The benchmark's targets: how to start ours and each peer, and what the load generator needs to
 * know of it. Shared by `bench/run.ts` (every workload) and `bench/interleave.ts` (rounds side by
 * side), so both start a server the same way.
 *
 * @module
 */
import { exists, OURS_ENV } from "./lib.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const BENCH = `${ROOT}/bench`;

/** The peers' npm packages (`bench/package.json`), installed on first use. */
export const NODE_MODULES = `${BENCH}/node_modules`;
/** Bun, from its npm package. */
export const BUN = `${NODE_MODULES}/bun/bin/bun.exe`;

/** How one server is started. */
export interface ServerOpts {
  /** Where its KV file goes. */
  dir: string;
  /** The checkout whose `main.ts` and `bench/peers/` it runs; this one by default. */
  root?: string;
  /** `deno serve --parallel` workers (ours only). */
  workers?: number;
  /** The cores it is pinned to. */
  cores?: string;
  /** Cores' worth of CPU the whole server may use (a cgroup quota), when set. */
  quota?: number;
  /** Environment beyond the target's own. */
  env?: Record<string, string>;
}

/** A server the benchmark can start. */
export interface TargetDef {
  name: string;
  label: string;
  /** Its command line, listening on 127.0.0.1 at `port`. */
  cmd(port: number, opts: ServerOpts): string[];
  /** Its environment (`opts.env` is added by the caller). */
  env?(opts: ServerOpts): Record<string, string>;
  /** Runs on Node or Bun, with the packages in `NODE_MODULES`. */
  node?: boolean;
  /** Which server's protocol the load generator speaks to it; its own name by default. */
  loadAs?: string;
  /** Flags the load generator gets for it. */
  loadFlags?: Record<string, string>;
}

/** A fresh KV file name in `dir`. */
const kvFile = (dir: string, name: string) =>
  `${dir}/${name}-${crypto.randomUUID().slice(0, 8)}.kv`;
const peer = (o: ServerOpts, file: string) => `${o.root ?? ROOT}/bench/peers/${file}`;

/**
 * Every target by name: `ours` (its clients ask for batch frames, as the web client does),
 * `single` (ours with clients that do not), and the peers `relay`, `framed`, `kvrelay`, `ws`,
 * `socketio`, `uws`, `bun`.
 */
export const TARGETS: Record<string, TargetDef> = {
  ours: {
    name: "ours",
    label: "ours (Hono + KV)",
    cmd: (port, o) => [
      "deno",
      "serve",
      "--allow-all",
      ...((o.workers ?? 1) > 1 ? ["--parallel"] : []),
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      `${o.root ?? ROOT}/main.ts`,
    ],
    env: (o) => ({
      ...OURS_ENV,
      CHAT_KV_PATH: kvFile(o.dir, "ours"),
      DENO_JOBS: String(o.workers ?? 1),
    }),
  },
  single: {
    name: "single",
    label: "ours, single frames",
    cmd: (port, o) => TARGETS.ours.cmd(port, o),
    env: (o) => TARGETS.ours.env!(o),
    loadAs: "ours",
    loadFlags: { batch: "false" },
  },
  relay: {
    name: "relay",
    label: "Deno relay",
    cmd: (port, o) => ["deno", "run", "-A", peer(o, "deno_relay.ts"), String(port)],
  },
  framed: {
    name: "framed",
    label: "Deno relay, our frame",
    cmd: (port, o) => [
      "deno",
      "run",
      "-A",
      peer(o, "deno_kv_relay.ts"),
      String(port),
      "--no-store",
    ],
  },
  kvrelay: {
    name: "kvrelay",
    label: "Deno relay, our frame, KV",
    cmd: (port, o) => [
      "deno",
      "run",
      "-A",
      "--unstable-kv",
      peer(o, "deno_kv_relay.ts"),
      String(port),
      kvFile(o.dir, "kvrelay"),
    ],
  },
  ws: {
    name: "ws",
    label: "Node + ws",
    node: true,
    cmd: (port, o) => ["node", peer(o, "node_ws.mjs"), String(port)],
  },
  socketio: {
    name: "socketio",
    label: "Socket.IO 4.8",
    node: true,
    cmd: (port, o) => ["node", peer(o, "socketio.mjs"), String(port)],
  },
  uws: {
    name: "uws",
    label: "uWebSockets.js",
    node: true,
    cmd: (port, o) => ["node", peer(o, "uws.mjs"), String(port)],
  },
  bun: {
    name: "bun",
    label: "Bun publish",
    node: true,
    cmd: (port, o) => [BUN, peer(o, "bun_publish.ts"), String(port)],
  },
};

/** Installs the peers' npm packages into `NODE_MODULES` when `needed` and not there yet. */
export async function ensureNodeDeps(needed: boolean): Promise<void> {
  if (!needed || await exists(`${NODE_MODULES}/.package-lock.json`)) return;
  console.error("installing the peers' npm packages into bench/node_modules ...");
  const out = await new Deno.Command("npm", {
    args: ["install", "--no-audit", "--no-fund", "--prefix", BENCH],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error("npm install in bench/ failed");
}
