/**
 * The minimal Deno relay: `Deno.serve` + upgrade + a Set. Every text frame is sent to every open
 * socket (sender included). No validation, no storage: the ceiling our server is measured against.
 *
 * Direct messages (the load generator's `dm` mode): a client that connects with `?u=<user>` is
 * that user; a frame `<user>|<payload>` goes to every socket of that user and of the sender, and
 * the sending socket gets a short ack, so a direct message costs the frames it costs ours (one in,
 * the message to both users, the ack). Nothing is parsed beyond the `|`.
 *
 * Run: deno run -A bench/peers/deno_relay.ts <port>
 *
 * @module
 */
const port = Number(Deno.args[0] ?? Deno.env.get("PORT") ?? 8001);
const sockets = new Set<WebSocket>();
const users = new Map<string, Set<WebSocket>>();
const JOINED = '{"j":1}';
const ACK = '{"a":1}';

/** Sends `data` to every open socket of `user`. */
function sendTo(user: string | null, data: string): void {
  for (const s of (user && users.get(user)) || []) {
    if (s.readyState === 1) s.send(data);
  }
}

Deno.serve({
  port,
  hostname: "127.0.0.1",
  onListen: () => console.log(`deno_relay listening on ${port}`),
}, (req) => {
  if (req.headers.get("upgrade") !== "websocket") {
    return new Response("deno relay\n");
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
    if (typeof data === "string" && data.charCodeAt(0) !== 123 /* { */) {
      const bar = data.indexOf("|");
      const payload = data.slice(bar + 1);
      sendTo(data.slice(0, bar), payload);
      sendTo(user, payload);
      socket.send(ACK);
      return;
    }
    for (const s of sockets) {
      if (s.readyState === 1) s.send(data);
    }
  };
  const gone = () => {
    sockets.delete(socket);
    if (user) users.get(user)?.delete(socket);
  };
  socket.onclose = gone;
  socket.onerror = gone;
  return response;
});
