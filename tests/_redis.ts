/**
 * A real `redis-server` for tests: a child process on a port of its own, that can be killed and
 * started again on the same port. Fails, not skips, when `redis-server` is missing.
 *
 * @module
 */
import { freePort, until } from "./_harness.ts";

/** A redis-server child process. */
export class RedisServer {
  readonly port: number;
  #child: Deno.ChildProcess | null = null;

  constructor(port = freePort()) {
    this.port = port;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** Starts the server and waits until it accepts connections. */
  async start(): Promise<void> {
    const command = new Deno.Command("redis-server", {
      args: ["--port", `${this.port}`, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    });
    try {
      this.#child = command.spawn();
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) {
        throw new Error(
          "redis-server is not on PATH; the Redis tests need a real server " +
            "(apt-get install -y redis-server)",
        );
      }
      throw error;
    }
    let exited = false;
    this.#child.status.then(() => exited = true);
    await until(
      async () => {
        if (exited) throw new Error(`redis-server exited on start (port ${this.port} taken?)`);
        try {
          (await Deno.connect({ hostname: "127.0.0.1", port: this.port })).close();
          return true;
        } catch {
          return false;
        }
      },
      10_000,
      `redis-server listening on port ${this.port}`,
    );
  }

  /** Stops the server: SIGKILL to simulate a crash, SIGTERM for a clean shutdown. */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = null;
    try {
      child.kill(signal);
    } catch {
      // Already exited.
    }
    await child.status;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop("SIGKILL");
  }
}
