// Node + npm ws peer: every text frame goes to every open client (sender included).
// Run: node bench/peers/node_ws.mjs <port>
import http from "node:http";
import { createRequire } from "node:module";
// `require`, so that `deno check bench/` does not try to resolve the Node-only package.
const { WebSocket, WebSocketServer } = createRequire(import.meta.url)("ws");

const port = Number(process.argv[2] ?? process.env.PORT ?? 8002);
const server = http.createServer((_req, res) => res.end("node ws\n"));
const wss = new WebSocketServer({ server, perMessageDeflate: false });
wss.on("connection", (ws) => {
  ws.send('{"j":1}');
  ws.on("message", (data, isBinary) => {
    // Pre-frame once, send the same buffer to everyone.
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    }
  });
});
server.listen(
  port,
  "127.0.0.1",
  () => console.log(`node_ws listening on ${port}`),
);
