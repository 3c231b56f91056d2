/**
 * Latency when every KV call is a network round trip: Deno Deploy's database, or a shared
 * `denokv` server when self-hosted. A local file answers in about 0.1 ms, so there the number of
 * dependent KV calls barely shows; over a network each one costs a round trip.
 *
 *   deno run -A --config deno.json bench/welcome_rounds.ts [--rtt 5] [--groups 20] [--dms 20]
 *     [--connects 40]
 *
 * Runs the app in this process on a KV file whose calls (get, getMany, list, commit) each wait
 * `--rtt` ms first, signs in a user with `--groups` groups and `--dms` direct conversations (set up
 * without the delay), then times, one after another, `--connects` times each and with no delay and with the
 * delay: a handshake (`new WebSocket` to `welcome`), a group message and a direct message (send
 * to ack), and a history page. The difference divided by the delay is the number of KV round
 * trips each waits for.
 *
 * @module
 */
import { defaultConfig } from "../chat/config.ts";
import { createNode } from "../chat/node.ts";
import { createApp } from "../routes/app.ts";
import { parseArgs, round } from "./lib.ts";

const args = parseArgs(Deno.args);
const RTT = Number(args.rtt ?? 5);
const GROUPS = Number(args.groups ?? 20);
const DMS = Number(args.dms ?? 20);
const CONNECTS = Number(args.connects ?? 40);

let delayMs = 0;
const wait = () => delayMs > 0 ? new Promise((r) => setTimeout(r, delayMs)) : Promise.resolve();

/** `kv` with a wait before each call that would cross the network to a remote KV. */
function remote(kv: Deno.Kv): Deno.Kv {
  return new Proxy(kv, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (prop === "get" || prop === "getMany") {
        return async (...a: unknown[]) => {
          await wait();
          return await (value as (...a: unknown[]) => Promise<unknown>).apply(target, a);
        };
      }
      if (prop === "list") {
        return (...a: unknown[]) => {
          const iter = (value as (...a: unknown[]) => Deno.KvListIterator<unknown>).apply(
            target,
            a,
          );
          return (async function* () {
            await wait();
            yield* iter;
          })();
        };
      }
      if (prop === "atomic") {
        return () => {
          const op = target.atomic();
          const commit = op.commit.bind(op);
          op.commit = async () => {
            await wait();
            return await commit();
          };
          return op;
        };
      }
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

const dir = await Deno.makeTempDir();
const kv = await Deno.openKv(`${dir}/chat.kv`);
const config = defaultConfig({
  CHAT_BUS: ["none"],
  CHAT_LOG_LEVEL: "silent",
  CHAT_SIGNIN_PER_MINUTE: 100_000,
  CHAT_GROUP_CREATES_PER_HOUR: 100_000,
  CHAT_RATE_BURST: 100_000,
  CHAT_RATE_PER_SECOND: 100_000,
  CHAT_USER_RATE_BURST: 100_000,
  CHAT_USER_RATE_PER_SECOND: 100_000,
});
const node = await createNode({ kv: remote(kv), config });
const app = createApp(node);
const ac = new AbortController();
const server = Deno.serve(
  { port: 0, hostname: "127.0.0.1", signal: ac.signal, onListen() {} },
  (req, info) => app.fetch(req, info),
);
const base = `http://127.0.0.1:${server.addr.port}`;

// deno-lint-ignore no-explicit-any
type Frame = any;

async function signIn(name: string): Promise<{ token: string; user: { id: string } }> {
  const res = await fetch(`${base}/api/session`, {
    method: "POST",
    headers: { "content-type": "application/json", origin: base },
    body: JSON.stringify({ name }),
  });
  if (!res.ok) throw new Error(`Expected a session for ${name}, got ${res.status}`);
  return await res.json();
}

function connect(token: string): Promise<{ ws: WebSocket; welcome: Frame; ms: number }> {
  const t = performance.now();
  const ws = new WebSocket(`${base.replace("http", "ws")}/ws`, {
    headers: { authorization: `Bearer ${token}`, origin: base },
  });
  return new Promise((resolve, reject) => {
    ws.onmessage = (e) => {
      const f = JSON.parse(e.data);
      if (f.type === "welcome") resolve({ ws, welcome: f, ms: performance.now() - t });
    };
    ws.onerror = () => reject(new Error("Expected a welcome, the socket failed"));
  });
}

/** Sends `frame` and waits for the first frame passing `test`; an error frame throws. */
function request(ws: WebSocket, frame: Frame, test: (f: Frame) => boolean): Promise<Frame> {
  return new Promise((resolve, reject) => {
    const on = (e: MessageEvent) => {
      const f = JSON.parse(e.data);
      if (f.type === "error") {
        ws.removeEventListener("message", on);
        reject(new Error(`Expected an answer to ${frame.type}, got ${e.data}`));
      }
      if (!test(f)) return;
      ws.removeEventListener("message", on);
      resolve(f);
    };
    ws.addEventListener("message", on);
    ws.send(JSON.stringify(frame));
  });
}

async function closed(ws: WebSocket): Promise<void> {
  if (ws.readyState === WebSocket.CLOSED) return;
  const done = new Promise((r) => ws.addEventListener("close", r, { once: true }));
  ws.close();
  await done;
}

const tag = Math.random().toString(36).slice(2, 6);
const ann = await signIn(`ann${tag}`);
const a = await connect(ann.token);
for (let g = 0; g < GROUPS; g++) {
  const name = `g${tag}${g}`;
  const created = await request(
    a.ws,
    { type: "group.create", name },
    (f) => f.type === "conversation" && f.conversation.title === name,
  );
  const conv = created.conversation.id;
  await request(a.ws, { type: "send", id: `g${g}`, conv, text: "hello" }, (f) => f.type === "ack");
}
for (let d = 0; d < DMS; d++) {
  const peer = await signIn(`p${tag}${d}`);
  const p = await connect(peer.token);
  const frame = { type: "send", id: `d${d}`, to: ann.user.id, text: "hi" };
  await request(p.ws, frame, (f) => f.type === "ack");
  await closed(p.ws);
}
await closed(a.ws);

/** Median time of `CONNECTS` runs of `step`, one after another, with `rtt` ms per KV call. */
async function median(rtt: number, step: () => Promise<number>): Promise<number> {
  delayMs = rtt;
  const times: number[] = [];
  for (let i = 0; i < CONNECTS; i++) times.push(await step());
  delayMs = 0;
  times.sort((x, y) => x - y);
  return times[Math.floor(times.length / 2)];
}

let listed = 0;
const handshake = async () => {
  const c = await connect(ann.token);
  listed = c.welcome.conversations.length;
  await closed(c.ws);
  return c.ms;
};
const me = await connect(ann.token);
const [group] = me.welcome.conversations.filter((c: Frame) => c.kind === "group");
const [direct] = me.welcome.conversations.filter((c: Frame) => c.kind === "direct");
let sent = 0;
const send = (target: Record<string, string>) => async () => {
  const t = performance.now();
  const id = `s${++sent}`;
  await request(me.ws, { type: "send", id, ...target, text: "x" }, (f) => f.type === "ack");
  return performance.now() - t;
};
const page = async () => {
  const t = performance.now();
  await request(me.ws, { type: "history", conv: group.id }, (f) => f.type === "history");
  return performance.now() - t;
};
const steps: [string, () => Promise<number>][] = [
  ["handshake (open to welcome)", handshake],
  ["group message (send to ack)", send({ conv: group.id })],
  ["direct message (send to ack)", send({ to: direct.peer.id })],
  ["history page (request to page)", page],
];
console.log(`${GROUPS} groups and ${DMS} direct conversations; p50 of ${CONNECTS} each`);
for (const [name, step] of steps) {
  const local = await median(0, step);
  const far = await median(RTT, step);
  console.log(
    `${name.padEnd(31)} local ${String(round(local, 2)).padStart(6)} ms, ` +
      `${RTT} ms per KV call ${String(round(far, 1)).padStart(6)} ms: ` +
      `${round((far - local) / RTT, 1)} round trips`,
  );
}
if (listed !== GROUPS + DMS + 1) {
  console.error(`Expected ${GROUPS + DMS + 1} listed, got ${listed}`);
}
await closed(me.ws);
delayMs = 0;
await node.shutdown();
ac.abort();
await server.finished;
kv.close();
await Deno.remove(dir, { recursive: true });
