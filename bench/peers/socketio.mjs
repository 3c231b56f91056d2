// Socket.IO 4.8 peer with rooms: a client emits "join" (room name) and gets "joined"; an emitted
// "msg" goes to every socket in the room (sender included): io.to(room).emit("msg", data).
// Run: node bench/peers/socketio.mjs <port>
import http from "node:http";
import { createRequire } from "node:module";
// `require`, so that `deno check bench/` does not try to resolve the Node-only package.
const { Server } = createRequire(import.meta.url)("socket.io");

const port = Number(process.argv[2] ?? process.env.PORT ?? 8003);
const server = http.createServer((_req, res) => res.end("socket.io\n"));
const io = new Server(server, {
  transports: ["websocket"],
  perMessageDeflate: false,
  maxHttpBufferSize: 1e6,
  pingInterval: 25_000,
  pingTimeout: 60_000,
});
io.on("connection", (socket) => {
  socket.on("join", (room) => {
    socket.join(String(room));
    socket.data.room = String(room);
    socket.emit("joined", String(room));
  });
  socket.on("msg", (data) => {
    const room = socket.data.room;
    if (room) io.to(room).emit("msg", data);
  });
});
server.listen(
  port,
  "127.0.0.1",
  () => console.log(`socketio listening on ${port}`),
);
