/**
 * The minimal Deno relay: `Deno.serve` + upgrade + a Set. Every text frame is sent to every open
 * socket (sender included). No validation, no storage: the ceiling our server is measured against.
 *
 * Run: deno run -A bench/peers/deno_relay.ts <port>
 *
 * @module
 */
const port = Number(Deno.args[0] ?? Deno.env.get("PORT") ?? 8001);
const sockets = new Set<WebSocket>();
const JOINED = '{"j":1}';

Deno.serve({
  port,
  hostname: "127.0.0.1",
  onListen: () => console.log(`deno_relay listening on ${port}`),
}, (req) => {
  if (req.headers.get("upgrade") !== "websocket") {
    return new Response("deno relay\n");
  }
  const { socket, response } = Deno.upgradeWebSocket(req);
  socket.onopen = () => {
    sockets.add(socket);
    socket.send(JOINED);
  };
  socket.onmessage = (event) => {
    const data = event.data;
    for (const s of sockets) {
      if (s.readyState === 1) s.send(data);
    }
  };
  socket.onclose = () => sockets.delete(socket);
  socket.onerror = () => sockets.delete(socket);
  return response;
});
