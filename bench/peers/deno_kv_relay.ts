/**
 * The minimal Deno relay with storage on: the least a server can do and still meet the issue's
 * "storage on". Like `deno_relay.ts` (`Deno.serve` + upgrade + a Set), but every message gets a
 * sequence number and is committed to a local Deno KV file before it is fanned out, and it goes
 * out as a frame with the fields of our `message` frame (conversation, sequence, id, sender,
 * name, text, kind, time), so the bytes on the wire match ours. Appends share commits as in our
 * message log: one commit in flight, the appends that arrive meanwhile share the next, and a
 * 1 ms window while commits follow each other. No validation, no deduplication, no expiry, no
 * bus, no presence: what is left over between ours and this peer is our own code; what is
 * between this peer and `deno_relay.ts` is the runtime's price of storage and of sending after
 * a commit (the frame's size alone does not count: see docs/benchmarks.md).
 *
 * Run: deno run -A --unstable-kv bench/peers/deno_kv_relay.ts <port> [kv file | --no-store]
 *
 * With `--no-store` it skips the commit (the sequence numbers stay): the relay with our frame
 * and nothing else, which splits the price of the frame from the price of storage.
 *
 * Direct messages (the load generator's `dm` mode), as in `deno_relay.ts`: `?u=<user>` names the
 * socket's user and a frame `<user>|<payload>` is a direct message. Each pair of users has its
 * own conversation and sequence (kept in memory); the message and the conversation's head are
 * committed with the batch, then the message goes to both users' sockets and an ack to the
 * sending socket. No check in the commit: a second writer would break the sequence, which ours
 * guards against (its head and dedupe checks).
 *
 * The frame starts with the client's payload object (`{"t":…`), so the load generator reads it
 * as it reads the relay's.
 *
 * @module
 */
const port = Number(Deno.args[0] ?? Deno.env.get("PORT") ?? 8001);
const store = Deno.args[1] !== "--no-store";
const kv = store
  ? await Deno.openKv(Deno.args[1] ?? `${await Deno.makeTempDir()}/kv_relay.kv`)
  : null;
const sockets = new Set<WebSocket>();
const users = new Map<string, Set<WebSocket>>();
const JOINED = '{"j":1}';
const ROOM = "g:kvrelay0001";

/** A message waiting for its commit: to the room, or from `from` to the user `to`. */
interface Queued {
  payload: string;
  from?: string;
  to?: string;
  socket?: WebSocket;
}

const seqs = new Map<string, number>();
const queue: Queued[] = [];
let scheduled = false;
let inflight = false;
let lastCommitEnd = -Infinity;

/** Commits the queued payloads in one atomic write, then sends each to every socket. */
async function flush(): Promise<void> {
  scheduled = false;
  if (inflight || queue.length === 0) return;
  inflight = true;
  const batch = queue.splice(0, 300);
  const ts = Date.now();
  const atomic = kv?.atomic();
  const frames: [Queued, string, string][] = [];
  const heads = new Map<string, number>();
  for (const item of batch) {
    const conv = item.to ? `d:${[item.from, item.to].sort().join(":")}` : ROOM;
    const s = (seqs.get(conv) ?? 0) + 1;
    seqs.set(conv, s);
    heads.set(conv, s);
    const id = `kvr00-${s}`;
    const message = {
      conv,
      seq: s,
      id,
      from: item.from ?? "u_kvrelay00001",
      name: "bench-kvrelay",
      text: item.payload,
      kind: "text",
      ts,
    };
    atomic?.set(["m", conv, s], message);
    // The payload's own keys first, so the frame starts with `{"t":`.
    frames.push([
      item,
      JSON.stringify({
        ...parsePayload(item.payload),
        type: "message",
        ...message,
      }),
      `{"type":"ack","id":"${id}","conv":"${conv}","seq":${s}}`,
    ]);
  }
  for (const [conv, s] of heads) atomic?.set(["head", conv], s);
  try {
    await atomic?.commit();
  } catch (error) {
    console.error(`kv_relay: commit failed: ${error}`);
    inflight = false;
    return;
  }
  for (const [item, frame, ack] of frames) {
    if (item.to) {
      sendTo(item.to, frame);
      sendTo(item.from!, frame);
      if (item.socket!.readyState === 1) item.socket!.send(ack);
      continue;
    }
    for (const s of sockets) {
      if (s.readyState === 1) s.send(frame);
    }
  }
  inflight = false;
  lastCommitEnd = performance.now();
  if (queue.length) schedule();
}

/** The client's payload object (its keys first, so the frame starts with `{"t":`). */
function parsePayload(payload: string): Record<string, unknown> {
  try {
    const value = JSON.parse(payload);
    return typeof value === "object" && value !== null ? value : {};
  } catch {
    return {};
  }
}

/** Sends `data` to every open socket of `user`. */
function sendTo(user: string, data: string): void {
  for (const s of users.get(user) ?? []) {
    if (s.readyState === 1) s.send(data);
  }
}

function schedule(): void {
  if (scheduled) return;
  scheduled = true;
  // As our message log: at once after a quiet spell, a 1 ms window while commits follow each
  // other.
  if (performance.now() - lastCommitEnd < 2) setTimeout(flush, 1);
  else queueMicrotask(flush);
}

Deno.serve({
  port,
  hostname: "127.0.0.1",
  onListen: () =>
    console.log(
      `deno_kv_relay listening on ${port}${store ? "" : " (not storing)"}`,
    ),
}, (req) => {
  if (req.headers.get("upgrade") !== "websocket") {
    return new Response("deno kv relay\n");
  }
  const user = new URL(req.url).searchParams.get("u");
  const { socket, response } = Deno.upgradeWebSocket(req);
  socket.onopen = () => {
    sockets.add(socket);
    if (user) {
      let set = users.get(user);
      if (!set) users.set(user, set = new Set());
      set.add(socket);
    }
    socket.send(JOINED);
  };
  socket.onmessage = (event) => {
    const data = event.data;
    if (typeof data !== "string") return;
    if (user && data.charCodeAt(0) !== 123 /* { */) {
      const bar = data.indexOf("|");
      queue.push({
        payload: data.slice(bar + 1),
        from: user,
        to: data.slice(0, bar),
        socket,
      });
    } else queue.push({ payload: data });
    schedule();
  };
  const gone = () => {
    sockets.delete(socket);
    if (user) users.get(user)?.delete(socket);
  };
  socket.onclose = gone;
  socket.onerror = gone;
  return response;
});
