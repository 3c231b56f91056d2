/**
 * Opening the log of record. Workers of `deno serve --parallel` open the same local file at the
 * same moment, and SQLite answers one of them `database is locked` while the other creates the
 * schema (about one start in sixteen with two workers on a fresh file), so the open is retried
 * like any other locked KV call.
 *
 * @module
 */
import { isKvConnectUrl } from "./config.ts";
import { retryLocked } from "./message_log.ts";

/** Whether `path` names a local file (not memory, not a remote KV Connect URL, not the default). */
export function isLocalKvPath(path: string | undefined): path is string {
  return path !== undefined && path !== "" && path !== ":memory:" && !isKvConnectUrl(path);
}

/**
 * Opens Deno KV at `path` (`undefined`: the runtime's default, the managed database on Deno
 * Deploy), creating a local file's folder first and retrying while another worker holds the
 * file's lock.
 *
 * @example
 * ```ts
 * const kv = await openKv("data/chat.kv");
 * ```
 */
export async function openKv(path: string | undefined): Promise<Deno.Kv> {
  if (isLocalKvPath(path) && path.includes("/")) {
    await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
  }
  return await retryLocked(() => Deno.openKv(path));
}
