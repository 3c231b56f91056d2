/**
 * Frames bound for one socket, coalesced per tick for a client that asked for it.
 *
 * Every WebSocket frame the server sends is a `send` system call, and on a busy server those
 * calls are most of its CPU (`docs/benchmarks.md`). When a commit stores several messages of a
 * conversation, each member gets several frames in the same tick. A client that opens its socket
 * with `?batch=1` gets them as one `{"type":"batch","frames":[…]}` frame instead: the frames are
 * already serialized, so the batch is a string join, and nothing waits for it (the outbox is
 * flushed at the end of the tick that filled it). A lone frame is never wrapped. Clients that do
 * not ask get every frame on its own, as before.
 *
 * @module
 */

/** What the outbox writes to: a WebSocket, or anything with its `readyState` and `send`. */
export interface FrameSink {
  readonly readyState: number;
  send(data: string): void;
}

/** Options of {@linkcode SocketOutbox}. */
export interface SocketOutboxOptions {
  /** Coalesce the frames of a tick into one batch frame (the client asked with `?batch=1`). */
  batch: boolean;
  /** Frames per batch frame at most (default 256); more go out in further batch frames. */
  maxFrames?: number;
  /**
   * Characters per batch frame at most (default 64 KiB), unless one frame is longer. 256 frames
   * of a typical message fit; at the top fan-out step it gave a lower p99 than 256 KiB and than
   * 16 KiB (docs/benchmarks_history.md, "Session of 2026-12-06, later"). It was also chosen
   * while Deno kept a buffer the size of a socket's largest frame; vectored writes
   * (`preferVectoredWrites` in routes/ws.ts) have since removed that cost.
   */
  maxChars?: number;
}

/** `WebSocket.OPEN`, as a constant so the module also runs where `WebSocket` is absent. */
const OPEN = 1;

/**
 * Outboxes with frames queued in this tick: one microtask flushes them all (one per socket
 * would cost a microtask per member of a group for every message).
 */
const dirty: SocketOutbox[] = [];
let scheduled = false;

/**
 * The last batch frame built in a flush of every outbox, and the frames it holds. The members of
 * a group get the same frames in a tick, and the hub fills their outboxes one after another: the
 * next outbox with the same frames sends the same string, built once, not once per member.
 */
interface BatchMemo {
  frames: readonly string[];
  batch: string;
}

function flushAll(): void {
  scheduled = false;
  const memo: BatchMemo = { frames: [], batch: "" };
  // A flush cannot queue frames (sending calls no JavaScript), so the list does not grow here.
  for (let i = 0; i < dirty.length; i++) dirty[i].flush(memo);
  dirty.length = 0;
}

/** Whether two lists hold the same frames, in order. */
function sameFrames(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The batch frame holding `frames` (each a serialized server frame), in order. */
export function batchFrame(frames: readonly string[]): string {
  return `{"type":"batch","frames":[${frames.join(",")}]}`;
}

/**
 * Sends text frames to one socket, in order: at once, or (with `batch`) at the end of the tick,
 * the tick's frames as one batch frame.
 *
 * @example
 * ```ts
 * const outbox = new SocketOutbox(socket, { batch: true });
 * outbox.send('{"type":"pong","t":1}');
 * outbox.send('{"type":"pong","t":2}');
 * // At the end of the tick, one frame goes out:
 * // {"type":"batch","frames":[{"type":"pong","t":1},{"type":"pong","t":2}]}
 * ```
 */
export class SocketOutbox {
  readonly #sink: FrameSink;
  readonly #batch: boolean;
  readonly #maxFrames: number;
  readonly #maxChars: number;
  /**
   * The one frame queued, while there is one; from the second on, all of them are in `#many`. A
   * tick of a fan-out leaves one frame per member, and an array per member per tick was garbage.
   */
  #one: string | undefined = undefined;
  #many: string[] | undefined = undefined;
  #chars = 0;

  constructor(sink: FrameSink, options: SocketOutboxOptions) {
    this.#sink = sink;
    this.#batch = options.batch;
    this.#maxFrames = options.maxFrames ?? 256;
    this.#maxChars = options.maxChars ?? 64 * 1024;
  }

  /** Characters queued in the outbox and not yet handed to the socket. */
  get pendingChars(): number {
    return this.#chars;
  }

  /** Sends a frame, or queues it for the end of the tick; never throws. */
  send(data: string): void {
    if (!this.#batch) {
      this.#write(data);
      return;
    }
    const queued = this.#many?.length ?? (this.#one === undefined ? 0 : 1);
    if (queued >= this.#maxFrames || (queued > 0 && this.#chars + data.length > this.#maxChars)) {
      this.flush();
    }
    this.#chars += data.length;
    if (this.#many) this.#many.push(data);
    else if (this.#one !== undefined) {
      this.#many = [this.#one, data];
      this.#one = undefined;
    } else {
      this.#one = data;
      dirty.push(this);
      if (!scheduled) {
        scheduled = true;
        queueMicrotask(flushAll);
      }
    }
  }

  /**
   * Hands the queued frames to the socket now (before a close, say). `memo`: the batch frame
   * another outbox just built, reused when this one holds the same frames.
   */
  flush(memo?: BatchMemo): void {
    const one = this.#one;
    const frames = this.#many;
    this.#one = this.#many = undefined;
    this.#chars = 0;
    if (one !== undefined) return this.#write(one);
    if (!frames) return;
    if (!memo) return this.#write(batchFrame(frames));
    if (!sameFrames(memo.frames, frames)) {
      memo.frames = frames;
      memo.batch = batchFrame(frames);
    }
    this.#write(memo.batch);
  }

  #write(data: string): void {
    if (this.#sink.readyState !== OPEN) return;
    try {
      this.#sink.send(data);
    } catch {
      // Closed meanwhile: the close handler cleans up.
    }
  }
}
