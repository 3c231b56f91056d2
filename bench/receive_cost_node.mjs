/**
 * The Node half of `bench/receive_cost.ts`: `--clients` raw WebSocket clients (`node:net`, the
 * frames scanned on the bytes as `bench/rawws.ts` does) on the minimal relay; client 0 sends
 * `--rate` messages a second for `--seconds`, each to everyone. Prints `START` and `STOP` around
 * the measurement, then one `RESULT {json}` line: latency of every copy, and this process's CPU.
 *
 * Run: node bench/receive_cost_node.mjs --port P [--clients 1000] [--rate 25] [--seconds 6]
 */
import net from "node:net";
import { numberAt } from "./number_at.mjs";

const opts = { port: 0, clients: 1000, rate: 25, seconds: 6 };
for (let i = 2; i < process.argv.length; i += 2) {
  opts[process.argv[i].replace(/^--/, "")] = Number(process.argv[i + 1]);
}
const KEY = Buffer.from('"t":');
const latencies = [];
let measuring = false;
const now = () => performance.timeOrigin + performance.now();

function connect() {
  return new Promise((resolve, reject) => {
    const socket = net.connect(opts.port, "127.0.0.1");
    socket.setNoDelay(true);
    let buf = Buffer.alloc(0);
    let open = false;
    socket.on("connect", () =>
      socket.write(
        `GET / HTTP/1.1\r\nHost: 127.0.0.1:${opts.port}\r\nUpgrade: websocket\r\n` +
          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
          "Sec-WebSocket-Version: 13\r\n\r\n",
      ));
    socket.on("error", reject);
    socket.on("data", (data) => {
      buf = buf.length ? Buffer.concat([buf, data]) : data;
      if (!open) {
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        open = true;
        buf = buf.subarray(end + 4);
        resolve(socket);
      }
      let off = 0;
      while (buf.length - off >= 2) {
        let len = buf[off + 1] & 0x7f;
        let head = 2;
        if (len === 126) {
          if (buf.length - off < 4) break;
          len = buf.readUInt16BE(off + 2);
          head = 4;
        }
        if (buf.length - off < head + len) break;
        const start = off + head;
        const k = buf.indexOf(KEY, start);
        if (measuring && k >= 0 && k < start + len) {
          latencies.push(now() - numberAt(buf, k + KEY.length));
        }
        off = start + len;
      }
      buf = off === buf.length ? Buffer.alloc(0) : buf.subarray(off);
    });
  });
}

/** A masked client text frame with a zero key (short payloads only). */
function frame(text) {
  const body = Buffer.from(text);
  return Buffer.concat([Buffer.from([0x81, 0x80 | body.length, 0, 0, 0, 0]), body]);
}

const sockets = [];
for (let i = 0; i < opts.clients; i++) sockets.push(await connect());
await new Promise((r) => setTimeout(r, 1000));
console.log("START");
const cpu0 = process.cpuUsage();
const t0 = performance.now();
measuring = true;
const timer = setInterval(
  () => sockets[0].write(frame(`{"t":${now().toFixed(3)},"pad":"${"x".repeat(40)}"}`)),
  1000 / opts.rate,
);
await new Promise((r) => setTimeout(r, opts.seconds * 1000));
clearInterval(timer);
await new Promise((r) => setTimeout(r, 500));
measuring = false;
const cpu = process.cpuUsage(cpu0);
const elapsed = performance.now() - t0;
console.log("STOP");
latencies.sort((a, b) => a - b);
const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
console.log(
  "RESULT " + JSON.stringify({
    runtime: `node ${process.version}`,
    deliveries: latencies.length,
    p50: q(0.5),
    p99: q(0.99),
    max: latencies.at(-1),
    cpuPercent: ((cpu.user + cpu.system) / 1000 / elapsed) * 100,
    userUs: cpu.user / latencies.length,
    systemUs: cpu.system / latencies.length,
  }),
);
process.exit(0);
