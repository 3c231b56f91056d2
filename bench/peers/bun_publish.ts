// deno-lint-ignore-file no-explicit-any
// Bun peer (npm package `bun`): every client subscribes to one topic on open; a text frame is
// published to it with server.publish (sender included).
// Run: bench/node_modules/bun/bin/bun.exe bench/peers/bun_publish.ts <port>
declare const Bun: any; // Run by bun, not type-checked against Bun's types.
const port = Number(process.argv[2] ?? process.env.PORT ?? 8005);
const server = Bun.serve({
  port,
  hostname: "127.0.0.1",
  fetch(req: Request, srv: any) {
    if (srv.upgrade(req)) return undefined;
    return new Response("bun\n");
  },
  websocket: {
    perMessageDeflate: false,
    idleTimeout: 0,
    backpressureLimit: 64 * 1024 * 1024,
    open(ws: any) {
      ws.subscribe("room");
      ws.send('{"j":1}');
    },
    message(_ws: any, message: string | Uint8Array) {
      server.publish("room", message);
    },
  },
});
console.log(`bun_publish listening on ${port}`);
