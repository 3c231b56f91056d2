/**
 * The floor for the history endpoint: a tiny Deno server that answers one page of the newest
 * messages with a raw `kv.list` and `JSON.stringify`, nothing else (no auth, no validation).
 * Seeds `--messages` messages shaped like ours into its own KV file first.
 *
 * Run: deno run -A --unstable-kv bench/peers/kv_history.ts <port> <kv path>
 *
 * @module
 */
const port = Number(Deno.args[0] ?? 8006);
const path = Deno.args[1] ?? ":memory:";
const count = Number(Deno.args[2] ?? 300);
const kv = await Deno.openKv(path);
const conv = "lobby";
for (let seq = 1; seq <= count; seq += 100) {
  const op = kv.atomic();
  for (let s = seq; s < seq + 100 && s <= count; s++) {
    op.set(["msg", conv, s], {
      conv,
      seq: s,
      id: `seed-${s}`,
      from: "u_seed",
      name: "seed",
      text: `{"t":${(s * 1.5).toFixed(3)},"s":1,"i":${s}}`,
      ts: Date.now(),
      kind: "text",
    });
  }
  await op.commit();
}

Deno.serve({
  port,
  hostname: "127.0.0.1",
  onListen: () => console.log(`kv_history listening on ${port}`),
}, async (req) => {
  const url = new URL(req.url);
  if (url.pathname !== "/messages") return new Response("kv history\n");
  const limit = Math.min(200, Number(url.searchParams.get("limit") ?? 50));
  const messages = [];
  for await (
    const entry of kv.list({ prefix: ["msg", conv] }, { limit, reverse: true })
  ) {
    messages.push(entry.value);
  }
  messages.reverse();
  return Response.json({ conv, messages, more: true });
});
