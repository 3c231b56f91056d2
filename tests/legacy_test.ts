/**
 * The legacy dialects of the seed tutorials, spoken by scripted clients exactly as the seed pages
 * speak them (handshake → login → user/pm/group), in the same lobby, direct conversations and
 * groups as clients of our own protocol.
 */
import assert from "node:assert/strict";
import type { LocalBus } from "../chat/bus.ts";
import { LocalNetwork } from "../chat/bus.ts";
import { escapeHtml, legacySockets, parseLegacy, toLegacy } from "../routes/legacy.ts";
import type { Frame, TestServer } from "./_harness.ts";
import { signIn, startServer, tempKvPath, TestClient, uniqueName, until } from "./_harness.ts";

const ADMIN = "test-admin-token-0123456789";

function start(config: Record<string, unknown> = {}) {
  return startServer({
    config: { CHAT_ADMIN_TOKEN: ADMIN, ...config },
    app: { sockets: legacySockets },
  });
}

/** A socket as a seed page opens it; frames are JSON, so the harness client queues them. */
async function open(
  server: TestServer,
  path = "/",
  headers?: Record<string, string>,
): Promise<TestClient> {
  const client = new TestClient(`${server.ws}${path}`, { headers });
  await client.opened;
  return client;
}

/** Seed 002/004: wait for the handshake, then log in by name; returns the own login frame. */
async function seedLogin(
  server: TestServer,
  name: string,
  path = "/",
): Promise<{ client: TestClient; login: Frame }> {
  const client = await open(server, path);
  const handshake = await client.next("handshake");
  assert.deepEqual(handshake, { type: "handshake", content: "done" });
  client.send({ type: "login", content: name });
  const login = await client.next("login");
  return { client, login };
}

async function ours(server: TestServer, name = uniqueName("bob")) {
  const who = await signIn(server.url, name);
  const client = await TestClient.connect(server, who.token);
  return { ...who, client };
}

Deno.test("seed 002/004 dialect: handshake, login, user list, lobby both ways, logout", async () => {
  await using server = await start();
  const bob = await ours(server);
  await using cb = bob.client;
  const name = uniqueName("lin");
  const { client: cl, login } = await seedLogin(server, name);
  await using _cl = cl;
  assert.equal(login.content, name);
  assert.equal(typeof login.uid, "string");
  assert.ok(login.user_list.includes(name), JSON.stringify(login));
  assert.ok(login.user_list.includes(bob.user.name), JSON.stringify(login));

  // Our client sees the legacy user come online like any user.
  await cb.next("presence", (f) => f.changes.some((c: Frame) => c.user.id === login.uid));

  // Lobby: legacy → everyone (sender included, as the seed server broadcasts).
  cl.send({ content: "你好 from the seed page", type: "user" });
  const got = await cb.next("message", (f) => f.conv === "lobby" && f.from === login.uid);
  assert.equal(got.text, "你好 from the seed page");
  assert.equal(got.name, name);
  assert.equal(got.kind, "text");
  const echo = await cl.next("user");
  assert.deepEqual(echo, {
    type: "user",
    from: name,
    uid: login.uid,
    content: "你好 from the seed page",
  });

  // Lobby: ours → legacy.
  await cb.post("lobby", "hi lin");
  const back = await cl.next("user", (f) => f.from === bob.user.name);
  assert.equal(back.content, "hi lin");
  assert.equal(back.uid, bob.user.id);

  // A second seed client logs in: the first gets a login frame with the new user list.
  const other = uniqueName("mei");
  const { client: cm } = await seedLogin(server, other);
  const seen = await cl.next("login", (f) => f.content === other);
  assert.ok(seen.user_list.includes(other) && seen.user_list.includes(name));
  await cm.close();
  const gone = await cl.next("logout", (f) => f.content === other);
  assert.ok(!gone.user_list.includes(other), JSON.stringify(gone));
  assert.ok(gone.user_list.includes(name));

  // Stored in KV history, readable over the API.
  const res = await fetch(`${server.url}/api/conversations/lobby/messages`, {
    headers: { authorization: `Bearer ${bob.token}` },
  });
  const page = await res.json();
  assert.ok(page.messages.some((m: Frame) => m.text === "你好 from the seed page"));

  await cl.close();
  await cb.next(
    "presence",
    (f) => f.changes.some((c: Frame) => c.user.id === login.uid && !c.online),
  );
});

Deno.test("seed 000 dialect: placeholder login, pm by id and by name, group and groupPm", async () => {
  await using server = await start();
  const bob = await ours(server);
  await using cb = bob.client;
  // Seed 000 sends its login on open, without waiting for the handshake.
  await using c0 = new TestClient(`${server.ws}/`);
  await c0.opened;
  c0.send(JSON.stringify({ type: "login", content: "login" }));
  await c0.next("handshake");
  const login = await c0.next("login");
  assert.match(login.content, /^Guest-\d{4}/);
  assert.notEqual(login.content, "login");
  const uid = login.uid as string;

  // pm by the user id given out in login frames.
  c0.send({ type: "pm", content: "private hello", uid: bob.user.id });
  const dm = await cb.next("message", (f) => f.conv.startsWith("d:") && f.from === uid);
  assert.equal(dm.text, "private hello");
  assert.equal(dm.conv, uid < bob.user.id ? `d:${uid}:${bob.user.id}` : `d:${bob.user.id}:${uid}`);
  const own = await c0.next("pm");
  assert.equal(own.from, login.content);
  assert.equal(own.to, bob.user.id);

  // pm by name, and a reply from our client arrives as pm.
  c0.send({ type: "pm", content: "by name", uid: bob.user.name.toUpperCase() });
  await cb.next("message", (f) => f.text === "by name" && f.conv === dm.conv);
  await cb.post({ to: uid }, "reply to seed");
  const pm = await c0.next("pm", (f) => f.from === bob.user.name);
  assert.deepEqual(pm, {
    type: "pm",
    from: bob.user.name,
    uid: bob.user.id,
    to: uid,
    content: "reply to seed",
  });

  // Group: our client creates it and adds the seed user, who learns the gid from a notice.
  cb.send({ type: "group.create", name: "团队", public: false });
  const created = await cb.next("conversation", (f) => f.conversation.title === "团队");
  const gid = created.conversation.group.id as string;
  cb.send({ type: "group.add", group: gid, user: uid });
  const added = await c0.next("system", (f) => f.gid === gid);
  assert.match(added.content, /added/);
  c0.send({ type: "group", content: "to the group", gid });
  const gm = await cb.next("message", (f) => f.conv === `g:${gid}` && f.from === uid);
  assert.equal(gm.text, "to the group");
  await c0.next("groupPm", (f) => f.uid === uid);
  await cb.post(`g:${gid}`, "group reply");
  const gpm = await c0.next("groupPm", (f) => f.uid === bob.user.id);
  assert.deepEqual(gpm, {
    type: "groupPm",
    gid,
    from: bob.user.name,
    uid: bob.user.id,
    content: "group reply",
  });

  // A seed client writing to a public group joins it (seed 000 has no join frame); to a
  // private group it is not in, it gets an error.
  const { client: c2, login: l2 } = await seedLogin(server, uniqueName("mei"));
  await using _c2 = c2;
  c2.send({ type: "group", content: "let me in", gid });
  assert.match((await c2.next("system")).content, /^error: .*not found/);
  cb.send({ type: "group.create", name: "open" });
  const made = await cb.next("conversation", (f) => f.conversation.title === "open");
  const pub = made.conversation.group.id as string;
  c2.send({ type: "group", content: "joining by writing", gid: pub });
  await cb.next("message", (f) => f.conv === `g:${pub}` && f.meta?.event === "joined");
  const joined = await cb.next("message", (f) => f.conv === `g:${pub}` && f.from === l2.uid);
  assert.equal(joined.text, "joining by writing");
});

Deno.test("legacy names: taken names get a free variant, bad names a generated one", async () => {
  await using server = await start();
  const taken = uniqueName("ann");
  await signIn(server.url, taken);
  const { client: c1, login: l1 } = await seedLogin(server, taken.toUpperCase(), "/ws/legacy");
  await using _c1 = c1;
  assert.notEqual(l1.content.toLowerCase(), taken.toLowerCase());
  assert.ok(l1.content.toLowerCase().startsWith(taken.toLowerCase()), l1.content);

  const { client: c2, login: l2 } = await seedLogin(server, "<img src=x onerror=alert(1)>");
  await using _c2 = c2;
  assert.match(l2.content, /^Guest-\d{4}/);
  const note = await c2.next("system");
  assert.match(note.content, /Name not accepted/);

  const { client: c3, login: l3 } = await seedLogin(server, "login");
  await using _c3 = c3;
  assert.match(l3.content, /^Guest-\d{4}/);
  assert.notEqual(l3.content, l2.content);

  // A second login on the same socket is refused.
  c3.send({ type: "login", content: "again" });
  assert.match((await c3.next("system")).content, /^error: Already signed in/);
});

Deno.test("legacy content is untrusted text: stored as sent, escaped for innerHTML clients", async () => {
  await using server = await start();
  const bob = await ours(server);
  await using cb = bob.client;
  const { client: cl, login } = await seedLogin(server, uniqueName("lin"));
  await using _cl = cl;
  cl.send({ type: "user", content: "<script>alert(1)</script> & co" });
  const m = await cb.next("message", (f) => f.from === login.uid);
  assert.equal(m.text, "<script>alert(1)</script> & co");
  const echo = await cl.next("user");
  assert.equal(echo.content, "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co");
  await cb.post("lobby", `<img src=x onerror="alert('x')">`);
  const got = await cl.next("user", (f) => f.uid === bob.user.id);
  assert.equal(got.content, "&lt;img src=x onerror=&quot;alert(&#39;x&#39;)&quot;&gt;");

  // Control characters and over-long messages are refused like anywhere else.
  cl.send({ type: "user", content: "bad\u0000text" });
  assert.match((await cl.next("system")).content, /^error: Expected text without control/);
  cl.send({ type: "user", content: "x".repeat(5000) });
  assert.match((await cl.next("system")).content, /^error: Expected a message of at most/);
});

Deno.test("legacy errors come back as system frames; the socket stays usable", async () => {
  await using server = await start();
  const cl = await open(server, "/ws/legacy");
  await using _cl = cl;
  await cl.next("handshake");
  cl.send({ type: "user", content: "too early" });
  assert.match(
    (await cl.next("system")).content,
    /^error: Expected \{&quot;type&quot;:&quot;login/,
  );
  cl.send({ type: "dance", content: "x" });
  assert.match((await cl.next("system")).content, /^error: Expected &quot;type&quot; to be login/);
  cl.send({ type: "login", content: uniqueName("lin") });
  await cl.next("login");
  cl.send({ type: "pm", content: "hi", uid: "nobody-here-at-all" });
  assert.match((await cl.next("system")).content, /^error: No user with the id or name/);
  cl.send({ type: "pm", content: "hi" });
  assert.match((await cl.next("system")).content, /^error: Expected &quot;uid&quot;/);
  cl.send({ type: "group", content: "hi", gid: 123 });
  assert.match((await cl.next("system")).content, /^error: .*not found/);
  cl.send({ type: "user", content: "   " });
  assert.match((await cl.next("system")).content, /^error: Expected a message that is not blank/);
  cl.send({ type: "user", content: 42 });
  assert.match((await cl.next("system")).content, /^error: Expected &quot;content&quot;/);
  cl.send({ type: "user", content: "still here" });
  assert.equal((await cl.next("user")).content, "still here");
  cl.send({ type: "logout" });
  const closed = await cl.closed;
  assert.equal(closed.code, 1000);
});

Deno.test("seed 003 plain text: msg=... signs in as a guest and posts to the lobby", async () => {
  await using server = await start();
  const bob = await ours(server);
  await using cb = bob.client;
  const c3 = await open(server);
  await using _c3 = c3;
  await c3.next("handshake");
  c3.socket.send("msg=纯文本 hello");
  const login = await c3.next("login");
  assert.match(login.content, /^Guest-/);
  const m = await cb.next("message", (f) => f.from === login.uid);
  assert.equal(m.text, "纯文本 hello");
  c3.socket.send("no prefix either");
  assert.equal((await cb.next("message", (f) => f.from === login.uid)).text, "no prefix either");
});

Deno.test("legacy endpoint: any Origin, no session; plain GET / still serves the page", async () => {
  await using server = await start();
  const { client, login } = await seedLogin(server, uniqueName("far"), "/ws/legacy");
  await client.close();
  assert.ok(login.uid);
  const evil = await open(server, "/", { origin: "http://elsewhere.example" });
  await using _evil = evil;
  await evil.next("handshake");
  const res = await fetch(`${server.url}/ws/legacy`);
  assert.equal(res.status, 400);
  assert.equal((await res.json()).error.code, "bad_frame");
  const page = await fetch(`${server.url}/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type") ?? "", /html/);
  await page.body?.cancel();
});

Deno.test("legacy frames are rate limited like ours, and oversize frames close the socket", async () => {
  await using server = await start({ CHAT_RATE_BURST: 3, CHAT_RATE_PER_SECOND: 0.5 });
  const { client: cl } = await seedLogin(server, uniqueName("fast"));
  await using _cl = cl;
  for (let i = 0; i < 6; i++) cl.send({ type: "user", content: `m${i}` });
  assert.match((await cl.next("system")).content, /^error: Too many messages/);
  cl.socket.send("x".repeat(20_000));
  assert.equal((await cl.closed).code, 1009);
});

Deno.test("shutdown tells legacy clients as a system notice", async () => {
  const server = await start();
  const { client: cl } = await seedLogin(server, uniqueName("lin"));
  try {
    await server.close();
    assert.match((await cl.next("system")).content, /reconnect/);
    assert.equal((await cl.closed).code, 1012);
  } finally {
    await cl.close();
  }
});

Deno.test("toLegacy and parseLegacy translate frame by frame", () => {
  const self = { id: "me", name: "Me" };
  const online = () => [self, { id: "u2", name: "A&B" }];
  const message = {
    type: "message" as const,
    seq: 1,
    id: "x",
    from: "u2",
    name: "A&B",
    text: "<hi>",
    ts: 1,
    kind: "text" as const,
  };
  const seen = new Set<string>();
  const welcome = toLegacy(
    {
      type: "welcome",
      user: self,
      node: "n",
      conversations: [],
      online: [{ id: "u2", name: "A&B" }],
      onlineCount: 1,
      limits: {
        maxMessageBytes: 1,
        maxFrameBytes: 1,
        rate: { burst: 1, perSecond: 1 },
        pageSize: 1,
        resumeLimit: 1,
      },
      resume: { lastSeq: {} },
    },
    self,
    online,
    seen,
  );
  assert.deepEqual(welcome, [
    { type: "login", content: "Me", uid: "me", user_list: ["Me", "A&amp;B"] },
  ]);
  // Told once: a presence change it already knows of is not repeated.
  const u2 = { id: "u2", name: "A&B" };
  assert.deepEqual(
    toLegacy(
      { type: "presence", changes: [{ user: u2, online: true }], count: 2 },
      self,
      online,
      seen,
    ),
    [],
  );
  assert.equal(
    toLegacy(
      { type: "presence", changes: [{ user: u2, online: false }], count: 1 },
      self,
      online,
      seen,
    )[0]
      .type,
    "logout",
  );
  assert.equal(
    toLegacy(
      { type: "presence", changes: [{ user: u2, online: true }], count: 2 },
      self,
      online,
      seen,
    )[0]
      .type,
    "login",
  );
  assert.deepEqual(toLegacy({ ...message, conv: "lobby" }, self, online), [
    { type: "user", from: "A&amp;B", uid: "u2", content: "&lt;hi&gt;" },
  ]);
  assert.deepEqual(toLegacy({ ...message, conv: "d:me:u2" }, self, online), [
    { type: "pm", from: "A&amp;B", uid: "u2", to: "me", content: "&lt;hi&gt;" },
  ]);
  assert.deepEqual(toLegacy({ ...message, conv: "g:g1" }, self, online), [
    { type: "groupPm", gid: "g1", from: "A&amp;B", uid: "u2", content: "&lt;hi&gt;" },
  ]);
  assert.deepEqual(
    toLegacy({ ...message, conv: "d:me:me", kind: "notice", from: "system" }, self, online),
    [{ type: "system", content: "&lt;hi&gt;" }],
  );
  assert.deepEqual(
    toLegacy(
      {
        type: "presence",
        changes: [{ user: self, online: true }, { user: { id: "u2", name: "A&B" }, online: false }],
        count: 1,
      },
      self,
      online,
    ),
    [{ type: "logout", content: "A&amp;B", uid: "u2", user_list: ["Me", "A&amp;B"] }],
  );
  assert.deepEqual(
    toLegacy({ type: "ack", id: "x", conv: "lobby", seq: 1, ts: 1 }, self, online),
    [],
  );
  assert.deepEqual(toLegacy({ type: "typing", conv: "lobby", user: self }, self, online), []);
  assert.deepEqual(parseLegacy("msg=hi"), { type: "user", text: "hi", plain: true });
  assert.deepEqual(parseLegacy('{"type":"pm","content":"a","uid":7}'), {
    type: "pm",
    text: "a",
    to: "7",
  });
  assert.deepEqual(parseLegacy('{"type":"group","content":"a","gid":"g1"}'), {
    type: "group",
    text: "a",
    gid: "g1",
  });
  assert.equal(
    escapeHtml(`<a href="x">'&'</a>`),
    "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;",
  );
});

Deno.test("legacy users and ours across two isolates sharing KV and a bus", async () => {
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
  const bob = await ours(b);
  await using cb = bob.client;
  const { client: cl, login } = await seedLogin(a, uniqueName("lin"));
  await using _cl = cl;
  await until(() => b.node.hub.presence.isOnline(login.uid), 5000, "presence across isolates");
  cl.send({ type: "user", content: "from isolate a" });
  assert.equal((await cb.next("message", (f) => f.from === login.uid)).text, "from isolate a");
  await cb.post({ to: login.uid }, "dm across isolates");
  assert.equal((await cl.next("pm")).content, "dm across isolates");
  cl.send({ type: "pm", content: "dm back", uid: bob.user.id });
  assert.equal((await cb.next("message", (f) => f.text === "dm back")).from, login.uid);
});

Deno.test("legacy sockets per address are limited", async () => {
  await using server = await start({ CHAT_MAX_CONNECTIONS_PER_ADDRESS: 2 });
  await using a = await open(server);
  await using _b = await open(server, "/ws/legacy");
  const refused = await fetch(`${server.url}/ws/legacy`, {
    headers: {
      upgrade: "websocket",
      connection: "Upgrade",
      "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
      "sec-websocket-version": "13",
    },
  });
  assert.equal(refused.status, 403);
  assert.equal((await refused.json()).error.code, "limit_reached");
  await a.close();
  await until(
    async () => {
      const c = new TestClient(`${server.ws}/`);
      const ok = await c.opened.then(() => true, () => false);
      await c.close();
      return ok;
    },
    5000,
    "a freed slot",
  );
});
