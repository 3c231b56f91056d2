/**
 * Server push, `POST /api/push`: each target (a user, a group, everyone), delivered live to our
 * clients and to legacy clients (as `system`), on every isolate, stored in history; auth failures
 * and bad bodies.
 */
import assert from "node:assert/strict";
import type { LocalBus } from "../chat/bus.ts";
import { LocalNetwork } from "../chat/bus.ts";
import { legacySockets } from "../routes/legacy.ts";
import type { Frame, TestServer } from "./_harness.ts";
import { signIn, startServer, tempKvPath, TestClient, uniqueName, until } from "./_harness.ts";

const ADMIN = "push-admin-token-0123456789";

function start(config: Record<string, unknown> = { CHAT_ADMIN_TOKEN: ADMIN }) {
  return startServer({ config, app: { sockets: legacySockets } });
}

async function push(
  server: { url: string },
  body: unknown,
  token: string | null = ADMIN,
  scheme = "Bearer",
): Promise<{ status: number; body: Frame }> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (token !== null) headers.authorization = `${scheme} ${token}`;
  const res = await fetch(`${server.url}/api/push`, {
    method: "POST",
    headers,
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

async function ours(server: TestServer, name = uniqueName("bob")) {
  const who = await signIn(server.url, name);
  const client = await TestClient.connect(server, who.token);
  return { ...who, client };
}

async function seed(server: TestServer, name = uniqueName("lin")) {
  const client = new TestClient(`${server.ws}/`);
  await client.opened;
  await client.next("handshake");
  client.send({ type: "login", content: name });
  const login = await client.next("login");
  return { client, uid: login.uid as string, name: login.content as string };
}

async function history(server: TestServer, token: string, conv: string): Promise<Frame[]> {
  const res = await fetch(
    `${server.url}/api/conversations/${encodeURIComponent(conv)}/messages`,
    { headers: { authorization: `Bearer ${token}` } },
  );
  assert.equal(res.status, 200);
  return (await res.json()).messages;
}

Deno.test("push to one user: live to our client and the seed client, stored, others not", async () => {
  await using server = await start();
  const ann = await ours(server);
  await using ca = ann.client;
  const bob = await ours(server);
  await using cb = bob.client;
  const lin = await seed(server);
  await using cl = lin.client;

  const toAnn = await push(server, { to: { user: ann.user.id }, text: "Your order shipped" });
  assert.equal(toAnn.status, 200, JSON.stringify(toAnn.body));
  const conv = `d:${ann.user.id}:${ann.user.id}`;
  assert.deepEqual(
    { ...toAnn.body.delivered, seq: 0 },
    { conv, seq: 0, duplicate: false, online: 1 },
  );
  const notice = await ca.next("message", (f) => f.conv === conv);
  assert.equal(notice.text, "Your order shipped");
  assert.equal(notice.kind, "notice");
  assert.equal(notice.from, "system");
  assert.equal(notice.seq, toAnn.body.delivered.seq);
  assert.ok((await history(server, ann.token, conv)).some((m) => m.text === "Your order shipped"));

  const toLin = await push(server, { to: { user: lin.uid }, text: "Hello <b>seed</b>" });
  assert.equal(toLin.status, 200);
  assert.equal(toLin.body.delivered.online, 1);
  assert.deepEqual(await cl.next("system"), {
    type: "system",
    content: "Hello &lt;b&gt;seed&lt;/b&gt;",
  });

  // Nobody else got either.
  await cb.post("lobby", "marker");
  await cb.next("message", (f) => f.text === "marker");
  assert.ok(!cb.frames.some((f) => f.type === "message" && f.kind === "notice"));
  await cl.next("user", (f) => f.content === "marker");
  assert.ok(!cl.frames.some((f) => (f.type as string) === "system"));
  // A user with no connection still gets it stored.
  const away = await signIn(server.url, uniqueName("away"));
  const offline = await push(server, { to: { user: away.user.id }, text: "later" });
  assert.equal(offline.body.delivered.online, 0);
  const stored = await history(server, away.token, `d:${away.user.id}:${away.user.id}`);
  assert.deepEqual(stored.map((m) => m.text), ["later"]);
});

Deno.test("push to a group: its members only, legacy members as system with gid", async () => {
  await using server = await start();
  const ann = await ours(server);
  await using ca = ann.client;
  const bob = await ours(server);
  await using cb = bob.client;
  const lin = await seed(server);
  await using cl = lin.client;
  ca.send({ type: "group.create", name: "ops", public: false });
  const made = await ca.next("conversation", (f) => f.conversation.title === "ops");
  const gid = made.conversation.group.id as string;
  ca.send({ type: "group.add", group: gid, user: lin.uid });
  await cl.next("system", (f) => f.gid === gid);

  const res = await push(server, { to: { group: gid }, text: "Deploy at 5", id: "deploy-5" });
  assert.equal(res.status, 200);
  assert.equal(res.body.delivered.conv, `g:${gid}`);
  assert.equal(res.body.delivered.online, 2);
  const got = await ca.next("message", (f) =>
    f.conv === `g:${gid}` && f.kind === "notice" &&
    f.from === "system");
  assert.equal(got.text, "Deploy at 5");
  assert.equal(got.id, "deploy-5");
  assert.deepEqual(await cl.next("system", (f) => f.content === "Deploy at 5"), {
    type: "system",
    content: "Deploy at 5",
    gid,
  });
  // The same id again is stored once.
  const again = await push(server, { to: { group: gid }, text: "Deploy at 5", id: "deploy-5" });
  assert.equal(again.status, 200);
  assert.equal(again.body.delivered.duplicate, true);
  assert.equal(again.body.delivered.seq, res.body.delivered.seq);

  await cb.post("lobby", "marker");
  await cb.next("message", (f) => f.text === "marker");
  assert.ok(!cb.frames.some((f) => f.type === "message" && f.kind === "notice"));
  assert.ok(
    (await history(server, ann.token, `g:${gid}`)).some((m) => m.text === "Deploy at 5"),
  );
});

Deno.test("push to everyone: lobby notice to all, seed clients as system", async () => {
  await using server = await start();
  const ann = await ours(server);
  await using ca = ann.client;
  const lin = await seed(server);
  await using cl = lin.client;
  await until(() => server.node.hub.presence.count >= 2, 5000, "both online");
  const res = await push(server, { to: { all: true }, text: "Maintenance tonight" });
  assert.equal(res.status, 200);
  assert.equal(res.body.delivered.conv, "lobby");
  assert.equal(res.body.delivered.online, 2);
  const got = await ca.next("message", (f) => f.conv === "lobby" && f.kind === "notice");
  assert.equal(got.text, "Maintenance tonight");
  assert.equal(got.name, "System");
  assert.deepEqual(await cl.next("system"), { type: "system", content: "Maintenance tonight" });
  assert.ok((await history(server, ann.token, "lobby")).some((m) => m.kind === "notice"));
});

Deno.test("push is delivered on every isolate", async () => {
  const network = new LocalNetwork();
  const kvPath = await tempKvPath();
  const options = (bus: LocalBus) => ({
    kvPath,
    buses: [bus],
    config: { CHAT_ADMIN_TOKEN: ADMIN },
    app: { sockets: legacySockets },
  });
  await using a = await startServer(options(network.join()));
  await using b = await startServer(options(network.join()));
  const ann = await ours(a);
  await using ca = ann.client;
  const lin = await seed(b);
  await using cl = lin.client;
  await until(() => a.node.hub.presence.isOnline(lin.uid), 5000, "presence across isolates");
  // Pushed through isolate a, to a user connected to isolate b, and to everyone.
  const one = await push(a, { to: { user: lin.uid }, text: "for lin" });
  assert.equal(one.status, 200);
  assert.equal(one.body.delivered.online, 1);
  assert.equal((await cl.next("system")).content, "for lin");
  const all = await push(b, { to: { all: true }, text: "for all" });
  assert.equal(all.status, 200);
  assert.equal((await ca.next("message", (f) => f.kind === "notice")).text, "for all");
  assert.equal((await cl.next("system")).content, "for all");
});

Deno.test("push auth: missing, wrong or malformed token is 401; no token configured is 401", async () => {
  await using server = await start();
  const body = { to: { all: true }, text: "x" };
  for (
    const [token, scheme] of [
      [null, "Bearer"],
      ["wrong-token-0123456789", "Bearer"],
      [ADMIN.slice(0, -1), "Bearer"],
      [ADMIN + "x", "Bearer"],
      [ADMIN, "Basic"],
      ["", "Bearer"],
    ] as const
  ) {
    const res = await push(server, body, token, scheme);
    assert.equal(res.status, 401, `${scheme} ${token}`);
    assert.equal(res.body.error.code, "unauthorized");
  }
  await using off = await start({});
  const res = await push(off, body, ADMIN);
  assert.equal(res.status, 401);
  assert.equal(res.body.error.code, "unauthorized");
  // Nothing was stored by the refused pushes.
  const who = await signIn(server.url, uniqueName("ann"));
  assert.deepEqual(await history(server, who.token, "lobby"), []);
});

Deno.test("push bad requests: 4xx with a JSON error saying what was expected", async () => {
  await using server = await start();
  const cases: [unknown, number, string, RegExp][] = [
    ["not json", 400, "bad_json", /JSON object/],
    ["[1,2]", 400, "bad_json", /JSON object/],
    [{ text: "x" }, 400, "bad_frame", /"to"/],
    [{ to: {}, text: "x" }, 400, "bad_frame", /"to"/],
    [{ to: "everyone", text: "x" }, 400, "bad_frame", /"to"/],
    [{ to: { user: 42 }, text: "x" }, 400, "bad_frame", /"to"/],
    [{ to: { all: "yes" }, text: "x" }, 400, "bad_frame", /"to"/],
    [{ to: { all: true } }, 400, "bad_frame", /"text"/],
    [{ to: { all: true }, text: 5 }, 400, "bad_frame", /"text"/],
    [{ to: { all: true }, text: "   " }, 400, "bad_frame", /not blank/],
    [{ to: { all: true }, text: "a\u0000b" }, 400, "bad_frame", /control/],
    [{ to: { all: true }, text: "x", id: "bad id!" }, 400, "bad_frame", /"id"/],
    [{ to: { all: true }, text: "x".repeat(5000) }, 413, "too_large", /at most/],
    [{ to: { user: "nobody" }, text: "x" }, 404, "not_found", /no such user/],
    [{ to: { group: "nogroup" }, text: "x" }, 404, "not_found", /no such group/],
  ];
  for (const [body, status, code, message] of cases) {
    const res = await push(server, body);
    assert.equal(res.status, status, JSON.stringify(body).slice(0, 80));
    assert.equal(res.body.error.code, code, JSON.stringify(res.body));
    assert.match(res.body.error.message, message);
  }
  const huge = await push(server, JSON.stringify({ to: { all: true }, text: "y".repeat(200_000) }));
  assert.equal(huge.status, 413);
  const who = await signIn(server.url, uniqueName("ann"));
  assert.deepEqual(await history(server, who.token, "lobby"), []);
});
