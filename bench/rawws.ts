/**
 * A lean RFC 6455 WebSocket client over `Deno.connect`, for the load generator: one read returns
 * many frames, and benchmark messages are recognised on the bytes (no string per frame), so one
 * generator core can receive several hundred thousand frames a second. Other frames are decoded
 * and handed over as text. Client frames are masked (with a zero key: the bytes stay as they are).
 *
 * @module
 */
import { numberAt } from "./number_at.mjs";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** What a raw socket reports to its owner. */
export interface RawHandlers {
  /** A text frame containing the benchmark key: the number after it, and the frame's bytes. */
  onBench(t: number, frame: Uint8Array, keyEnd: number): void;
  /** Any other text frame. */
  onText(text: string): void;
  onClose(code: number, reason: string): void;
}

/** Finds `needle` in `hay[from, to)`; -1 when absent. */
export function indexOfBytes(
  hay: Uint8Array,
  needle: Uint8Array,
  from: number,
  to: number,
): number {
  const first = needle[0];
  const n = needle.length;
  const last = to - n;
  outer: for (let i = from; i <= last; i++) {
    if (hay[i] !== first) continue;
    for (let j = 1; j < n; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/** Parses a non-negative decimal number at `at` (shared with the Node receiver). */
export { numberAt };

/** A client WebSocket on a raw TCP connection. */
export class RawSocket {
  open = false;
  closed = false;
  #conn!: Deno.TcpConn;
  // Small while a socket is quiet, doubled while reads fill it (up to READ_MAX): a buffer of
  // 256 KB per socket from the start cost the generator 330 µs and 256 KB of memory per open,
  // more than the servers' own CPU for an open (docs/benchmarks_history.md, "The generator's
  // read buffer").
  #buf = new Uint8Array(READ_MIN);
  #len = 0;
  #queue: Uint8Array[] = [];
  #queued = 0;
  #writing = false;
  #key: Uint8Array;
  #handlers: RawHandlers;
  #paused = false;
  #fragments: Uint8Array[] = [];

  #prefix: Uint8Array;

  /** `key` precedes the number of a benchmark frame, which starts with `prefix`. */
  constructor(key: string, prefix: string, handlers: RawHandlers) {
    this.#key = encoder.encode(key);
    this.#prefix = encoder.encode(prefix);
    this.#handlers = handlers;
  }

  /** Connects and completes the opening handshake. */
  async connect(url: URL, headers: Record<string, string> = {}): Promise<void> {
    this.#conn = await Deno.connect({
      hostname: url.hostname,
      port: Number(url.port || 80),
    });
    this.#conn.setNoDelay(true);
    const key = btoa(
      String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))),
    );
    const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`)
      .join("");
    const request = `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\n` +
      `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\n` +
      `Sec-WebSocket-Version: 13\r\n${extra}\r\n`;
    await this.#writeAll(encoder.encode(request));
    // Read the response head; frames may follow in the same read.
    for (;;) {
      const n = await this.#conn.read(this.#buf.subarray(this.#len));
      if (n === null) throw new Error("connection closed during the handshake");
      this.#len += n;
      const end = indexOfBytes(this.#buf, CRLF2, 0, this.#len);
      if (end >= 0) {
        const head = decoder.decode(this.#buf.subarray(0, end));
        if (!head.startsWith("HTTP/1.1 101")) {
          throw new Error(`handshake refused: ${head.split("\r\n")[0]}`);
        }
        this.#buf.copyWithin(0, end + 4, this.#len);
        this.#len -= end + 4;
        break;
      }
      if (this.#len === this.#buf.length) {
        throw new Error("handshake response too large");
      }
    }
    this.open = true;
    this.#parse();
    void this.#readLoop();
  }

  /** Stops reading from the socket (the peer's sends pile up in the kernel, then at the server). */
  pause() {
    this.#paused = true;
  }

  /** Reads what is queued until the server closes or `ms` pass; whether it closed, bytes read. */
  async drainUntilClosed(
    ms: number,
  ): Promise<{ closed: boolean; bytes: number }> {
    const until = performance.now() + ms;
    const buf = new Uint8Array(1 << 20);
    let bytes = 0;
    while (performance.now() < until) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const n = await Promise.race([
        this.#conn.read(buf).catch(() => null),
        new Promise<number>((r) =>
          timer = setTimeout(
            () => r(-1),
            Math.max(1, until - performance.now()),
          )
        ),
      ]);
      clearTimeout(timer);
      if (n === null) return { closed: true, bytes };
      if (n === -1) break;
      bytes += n;
    }
    return { closed: false, bytes };
  }

  /** Sends a text frame. */
  send(text: string) {
    if (!this.open) return;
    const body = encoder.encode(text);
    this.#enqueue(frame(0x1, body));
  }

  close() {
    if (this.closed) return;
    if (this.open) {
      this.open = false;
      try {
        this.#enqueue(frame(0x8, new Uint8Array([0x03, 0xe8])));
      } catch { /* gone */ }
    }
    setTimeout(() => this.#shutdown(), 50);
  }

  #shutdown() {
    if (this.closed) return;
    this.closed = true;
    this.open = false;
    try {
      this.#conn.close();
    } catch { /* closed */ }
  }

  #enqueue(bytes: Uint8Array) {
    this.#queue.push(bytes);
    this.#queued += bytes.length;
    if (!this.#writing) void this.#flush();
  }

  async #flush() {
    this.#writing = true;
    try {
      while (this.#queue.length) {
        let chunk: Uint8Array;
        if (this.#queue.length === 1) chunk = this.#queue[0];
        else {
          chunk = new Uint8Array(this.#queued);
          let off = 0;
          for (const q of this.#queue) {
            chunk.set(q, off);
            off += q.length;
          }
        }
        this.#queue = [];
        this.#queued = 0;
        await this.#writeAll(chunk);
      }
    } catch {
      this.#queue = [];
      this.#queued = 0;
    } finally {
      this.#writing = false;
    }
  }

  async #writeAll(data: Uint8Array) {
    let off = 0;
    while (off < data.length) off += await this.#conn.write(data.subarray(off));
  }

  async #readLoop() {
    // Whether the last read filled every free byte: more may wait in the kernel.
    let filled = false;
    try {
      while (!this.closed) {
        if (this.#paused) return;
        // Full of an unfinished frame, or filled by the last read (up to READ_MAX): double it.
        if (this.#len === this.#buf.length || (filled && this.#buf.length < READ_MAX)) {
          const bigger = new Uint8Array(this.#buf.length * 2);
          bigger.set(this.#buf.subarray(0, this.#len));
          this.#buf = bigger;
        }
        const free = this.#buf.length - this.#len;
        const n = await this.#conn.read(this.#buf.subarray(this.#len));
        if (n === null) break;
        this.#len += n;
        filled = n === free;
        this.#parse();
      }
    } catch { /* reset */ }
    if (this.#paused) return;
    const wasOpen = this.open;
    this.open = false;
    this.#shutdown();
    if (wasOpen) this.#handlers.onClose(1006, "connection lost");
  }

  #parse() {
    const buf = this.#buf;
    const len = this.#len;
    let off = 0;
    while (len - off >= 2) {
      const b0 = buf[off];
      const b1 = buf[off + 1];
      let plen = b1 & 0x7f;
      let hdr = 2;
      if (plen === 126) {
        if (len - off < 4) break;
        plen = (buf[off + 2] << 8) | buf[off + 3];
        hdr = 4;
      } else if (plen === 127) {
        if (len - off < 10) break;
        plen = Number(
          new DataView(buf.buffer, buf.byteOffset + off + 2, 8).getBigUint64(0),
        );
        hdr = 10;
      }
      if (b1 & 0x80) hdr += 4; // servers do not mask; skip a key if one came
      if (len - off < hdr + plen) {
        if (hdr + plen > buf.length) {
          const bigger = new Uint8Array(hdr + plen + 1024);
          bigger.set(buf.subarray(0, len));
          this.#buf = bigger;
        }
        break;
      }
      this.#frame(b0 & 0x80, b0 & 0x0f, buf, off + hdr, off + hdr + plen);
      off += hdr + plen;
    }
    if (off > 0) {
      this.#buf.copyWithin(0, off, len);
      this.#len = len - off;
    }
  }

  #frame(
    fin: number,
    opcode: number,
    buf: Uint8Array,
    start: number,
    end: number,
  ) {
    if (opcode === 0x1 || opcode === 0x2 || opcode === 0x0) {
      if (!fin || this.#fragments.length) {
        this.#fragments.push(buf.slice(start, end));
        if (!fin) return;
        const total = this.#fragments.reduce((a, f) => a + f.length, 0);
        const whole = new Uint8Array(total);
        let o = 0;
        for (const f of this.#fragments) {
          whole.set(f, o);
          o += f.length;
        }
        this.#fragments = [];
        this.#message(whole, 0, whole.length);
      } else this.#message(buf, start, end);
    } else if (opcode === 0x9) {
      this.#enqueue(frame(0xa, buf.slice(start, end)));
    } else if (opcode === 0x8) {
      const code = end - start >= 2 ? (buf[start] << 8) | buf[start + 1] : 1005;
      const reason = decoder.decode(
        buf.subarray(Math.min(end, start + 2), end),
      );
      const wasOpen = this.open;
      if (wasOpen) {
        this.#enqueue(frame(0x8, buf.slice(start, Math.min(end, start + 2))));
      }
      this.open = false;
      setTimeout(() => this.#shutdown(), 50);
      if (wasOpen) this.#handlers.onClose(code, reason);
    }
  }

  #message(buf: Uint8Array, start: number, end: number) {
    if (startsWith(buf, start, end, BATCH)) {
      for (const [s, e] of batchElements(buf, start + BATCH.length, end)) this.#one(buf, s, e);
    } else this.#one(buf, start, end);
  }

  #one(buf: Uint8Array, start: number, end: number) {
    const k = startsWith(buf, start, end, this.#prefix)
      ? indexOfBytes(buf, this.#key, start, end)
      : -1;
    if (k >= 0) {
      const at = k + this.#key.length;
      this.#handlers.onBench(
        numberAt(buf, at),
        buf.subarray(start, end),
        at - start,
      );
    } else {
      this.#handlers.onText(decoder.decode(buf.subarray(start, end)));
    }
  }
}

const CRLF2 = encoder.encode("\r\n\r\n");
/** A socket's first read buffer, and the size reads that fill it grow it to. */
const READ_MIN = 1 << 13;
const READ_MAX = 1 << 18;
/** How a batch frame of ours starts: its elements follow (docs/protocol.md). */
const BATCH = encoder.encode('{"type":"batch","frames":[');

function startsWith(buf: Uint8Array, start: number, end: number, prefix: Uint8Array): boolean {
  if (end - start < prefix.length) return false;
  for (let j = 0; j < prefix.length; j++) if (buf[start + j] !== prefix[j]) return false;
  return true;
}

/**
 * The [start, end) byte ranges of the JSON objects in the array that begins at `from` (just past
 * its `[`): a scan that tracks strings and nesting, cheaper than decoding and parsing the text.
 */
export function batchElements(buf: Uint8Array, from: number, end: number): [number, number][] {
  const out: [number, number][] = [];
  let depth = 0;
  let inString = false;
  let begin = -1;
  for (let i = from; i < end; i++) {
    const b = buf[i];
    if (inString) {
      if (b === 0x5c) i++; // backslash: skip the escaped byte
      else if (b === 0x22) inString = false;
    } else if (b === 0x22) inString = true;
    else if (b === 0x7b || b === 0x5b) {
      if (depth++ === 0) begin = i;
    } else if (b === 0x7d || b === 0x5d) {
      if (depth === 0) break; // the array's `]`
      if (--depth === 0) out.push([begin, i + 1]);
    }
  }
  return out;
}

/** A masked client frame with a zero masking key. */
function frame(opcode: number, body: Uint8Array): Uint8Array {
  const len = body.length;
  const head = len < 126 ? 2 : len < 65536 ? 4 : 10;
  const out = new Uint8Array(head + 4 + len);
  out[0] = 0x80 | opcode;
  if (len < 126) out[1] = 0x80 | len;
  else if (len < 65536) {
    out[1] = 0x80 | 126;
    out[2] = len >> 8;
    out[3] = len & 0xff;
  } else {
    out[1] = 0x80 | 127;
    new DataView(out.buffer).setBigUint64(2, BigInt(len));
  }
  // Masking key 0,0,0,0: masked bytes equal the plain bytes.
  out.set(body, head + 4);
  return out;
}
