// uWebSockets.js peer (through @trufflesuite/uws-js-unofficial, which loads on Node 20): every
// client subscribes to one topic on open; a text frame is published to it (sender included).
// Run: node bench/peers/uws.mjs <port>
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const uWS = require("@trufflesuite/uws-js-unofficial");

const port = Number(process.argv[2] ?? process.env.PORT ?? 8004);
const app = uWS.App();
app.ws("/*", {
  compression: uWS.DISABLED,
  maxPayloadLength: 64 * 1024,
  maxBackpressure: 64 * 1024 * 1024,
  idleTimeout: 0,
  open: (ws) => {
    ws.subscribe("room");
    ws.send('{"j":1}', false);
  },
  message: (_ws, message, isBinary) => {
    app.publish("room", message, isBinary);
  },
});
app.get("/*", (res) => res.end("uws\n"));
app.listen("127.0.0.1", port, (token) => {
  if (!token) {
    console.error(`uws: cannot listen on ${port}`);
    process.exit(1);
  }
  console.log(`uws listening on ${port}`);
});
