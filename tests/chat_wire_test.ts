/**
 * The core chat service over a real socket: a real server on port 0 and real WebSocket clients.
 */
import assert from "node:assert/strict";
import { preferVectoredWrites } from "../routes/ws.ts";
import { signIn, startServer, TestClient, uniqueName } from "./_harness.ts";

Deno.test("sign-in offers a unique default name and issues a token a reconnect reuses", async () => {
  await using server = await startServer();
  const suggestion = await (await fetch(`${server.url}/api/names/suggest`)).json();
  assert.match(suggestion.name, /^Guest-\d+/);
  const ann = await signIn(server.url, suggestion.name);
  assert.equal(ann.user.name, suggestion.name);
  const again = await (await fetch(`${server.url}/api/names/suggest`)).json();
  assert.notEqual(again.name.toLowerCase(), "");
  // The name is now taken.
  const taken = await fetch(`${server.url}/api/session`, {
    method: "POST",
    body: JSON.stringify({ name: suggestion.name.toUpperCase() }),
  });
  assert.equal(taken.status, 409);
  assert.equal((await taken.json()).error.code, "conflict");
  // Two sockets with the same token are the same user.
  await using one = await TestClient.connect(server, ann.token);
  await using two = await TestClient.connect(server, ann.token);
  assert.equal(one.welcome.user.id, ann.user.id);
  assert.equal(two.welcome.user.id, ann.user.id);
  assert.equal(one.welcome.node, server.node.id);
  assert.deepEqual(one.welcome.limits.rate, { burst: 20, perSecond: 5 });
  assert.equal(one.welcome.conversations[0].id, "lobby");
  const me = await fetch(`${server.url}/api/me`, {
    headers: { authorization: `Bearer ${ann.token}` },
  });
  assert.equal((await me.json()).user.id, ann.user.id);
});

Deno.test("welcome: lists who is online, the newcomer first, and how many", async () => {
  await using server = await startServer();
  const a = await signIn(server.url, uniqueName("ann"));
  const b = await signIn(server.url, uniqueName("bob"));
  const ann = { id: a.user.id, name: a.user.name };
  const bob = { id: b.user.id, name: b.user.name };
  await using ca = await TestClient.connect(server, a.token);
  assert.deepEqual(ca.welcome.online, [ann]);
  assert.equal(ca.welcome.onlineCount, 1);
  await using cb = await TestClient.connect(server, b.token);
  assert.deepEqual(cb.welcome.online, [bob, ann]);
  assert.equal(cb.welcome.onlineCount, 2);
  // A second connection of a user already online is not listed twice.
  await using ca2 = await TestClient.connect(server, a.token);
  assert.deepEqual(ca2.welcome.online, [ann, bob]);
  assert.equal(ca2.welcome.onlineCount, 2);
  await cb.close();
  await ca.next("presence", (f) => f.changes.some((c: { online: boolean }) => !c.online));
  await using ca3 = await TestClient.connect(server, a.token);
  assert.deepEqual(ca3.welcome.online, [ann]);
});

Deno.test("lobby: every user receives every lobby message, sender included, with an ack", async () => {
  await using server = await startServer();
  const a = await signIn(server.url, uniqueName("ann"));
  const b = await signIn(server.url, uniqueName("bob"));
  await using ca = await TestClient.connect(server, a.token);
  await using cb = await TestClient.connect(server, b.token);
  const ack = await ca.post("lobby", "hello everyone", "m-1");
  assert.equal(ack.conv, "lobby");
  assert.equal(ack.seq, 1);
  const got = await cb.next("message", (f) => f.id === "m-1");
  assert.deepEqual(
    { conv: got.conv, seq: got.seq, from: got.from, name: got.name, text: got.text },
    { conv: "lobby", seq: 1, from: a.user.id, name: a.user.name, text: "hello everyone" },
  );
  await ca.next("message", (f) => f.id === "m-1");
});

Deno.test("direct messages both ways, only to the two users, with idempotent resend", async () => {
  await using server = await startServer();
  const a = await signIn(server.url, uniqueName("ann"));
  const b = await signIn(server.url, uniqueName("bob"));
  const c = await signIn(server.url, uniqueName("cat"));
  await using ca = await TestClient.connect(server, a.token);
  await using cb = await TestClient.connect(server, b.token);
  await using cc = await TestClient.connect(server, c.token);
  const first = await ca.post({ to: b.user.id }, "hi bob", "dm-1");
  const conv = first.conv;
  assert.match(conv, /^d:/);
  assert.equal((await cb.next("message", (f) => f.id === "dm-1")).text, "hi bob");
  const reply = await cb.post(conv, "hi ann", "dm-2");
  assert.equal(reply.seq, 2);
  assert.equal((await ca.next("message", (f) => f.id === "dm-2")).text, "hi ann");
  // The same id again: acked with the same seq, stored once, not delivered again.
  const again = await ca.post({ to: b.user.id }, "hi bob", "dm-1");
  assert.equal(again.seq, 1);
  assert.equal(again.duplicate, true);
  const page = await ca.request({ type: "history", conv }, "history");
  assert.deepEqual(page.messages.map((m: { id: string }) => m.id), ["dm-1", "dm-2"]);
  // The third user gets nothing of it and cannot read or write it.
  await cc.request({ type: "ping" }, "pong");
  assert.equal(cc.frames.filter((f) => f.type === "message" && f.conv === conv).length, 0);
  const refused = await cc.request({ type: "history", conv }, "error");
  assert.equal(refused.code, "not_found");
  const send = cc.next("error");
  cc.send({ type: "send", id: "x1", conv, text: "intrude" });
  assert.equal((await send).code, "not_found");
  // A reconnect lists the direct conversation with its head.
  await using cb2 = await TestClient.connect(server, b.token);
  const listed = cb2.welcome.conversations.find((x: { id: string }) => x.id === conv);
  assert.equal(listed.lastSeq, 2);
  assert.equal(listed.peer.id, a.user.id);
  assert.equal(listed.last.text, "hi ann");
});

Deno.test("groups: create, list, join, members, send, leave", async () => {
  await using server = await startServer();
  const a = await signIn(server.url, uniqueName("ann"));
  const b = await signIn(server.url, uniqueName("bob"));
  await using ca = await TestClient.connect(server, a.token);
  await using cb = await TestClient.connect(server, b.token);
  const created = await ca.request({ type: "group.create", name: "Hiking" }, "conversation");
  const group = created.conversation.group.id;
  const conv = created.conversation.id;
  assert.equal(conv, `g:${group}`);
  assert.equal(created.conversation.title, "Hiking");
  const listed = await cb.request({ type: "group.list" }, "groups");
  const entry = listed.groups.find((g: { id: string }) => g.id === group);
  assert.deepEqual({ member: entry.member, members: entry.members }, { member: false, members: 1 });
  // Not a member yet: refused.
  assert.equal((await cb.request({ type: "history", conv }, "error")).code, "not_found");
  cb.send({ type: "group.join", group });
  const joined = await cb.next("conversation");
  assert.equal(joined.conversation.id, conv);
  const notice = await ca.next("message", (f) => f.conv === conv && f.meta?.event === "joined");
  assert.equal(notice.kind, "notice");
  assert.equal(notice.meta.user.id, b.user.id);
  const members = await ca.request({ type: "group.members", group }, "members");
  assert.deepEqual(
    members.members.map((m: { id: string }) => m.id).sort(),
    [a.user.id, b.user.id].sort(),
  );
  await ca.post(conv, "trail at 9", "g-1");
  assert.equal((await cb.next("message", (f) => f.id === "g-1")).text, "trail at 9");
  await cb.post(conv, "see you", "g-2");
  await ca.next("message", (f) => f.id === "g-2");
  cb.send({ type: "group.leave", group });
  assert.equal((await cb.next("conversation.removed")).conv, conv);
  await ca.next("message", (f) => f.conv === conv && f.meta?.event === "left");
  await ca.post(conv, "bye", "g-3");
  await cb.request({ type: "ping" }, "pong");
  assert.equal(cb.frames.some((f) => f.id === "g-3"), false);
  const error = cb.next("error");
  cb.send({ type: "send", id: "g-4", conv, text: "still here?" });
  assert.equal((await error).code, "not_found");
});

Deno.test("private groups: only the owner adds members; outsiders cannot join", async () => {
  await using server = await startServer();
  const a = await signIn(server.url, uniqueName("ann"));
  const b = await signIn(server.url, uniqueName("bob"));
  const c = await signIn(server.url, uniqueName("cat"));
  await using ca = await TestClient.connect(server, a.token);
  await using cb = await TestClient.connect(server, b.token);
  await using cc = await TestClient.connect(server, c.token);
  const created = await ca.request(
    { type: "group.create", name: "Secret", public: false },
    "conversation",
  );
  const group = created.conversation.group.id;
  const list = await cc.request({ type: "group.list" }, "groups");
  assert.equal(list.groups.some((g: { id: string }) => g.id === group), false);
  assert.equal((await cc.request({ type: "group.join", group }, "error")).code, "not_found");
  ca.send({ type: "group.add", group, user: b.user.id });
  await cb.next("conversation", (f) => f.conversation.id === `g:${group}`);
  await ca.post(`g:${group}`, "welcome bob", "p-1");
  await cb.next("message", (f) => f.id === "p-1");
  // A member who is not the owner cannot add.
  assert.equal(
    (await cb.request({ type: "group.add", group, user: c.user.id }, "error")).code,
    "forbidden",
  );
  ca.send({ type: "group.remove", group, user: b.user.id });
  await cb.next("conversation.removed");
  await ca.post(`g:${group}`, "after removal", "p-2");
  await cb.request({ type: "ping" }, "pong");
  assert.equal(cb.frames.some((f) => f.id === "p-2"), false);
});

Deno.test("presence: online and offline events, the online list, typing", async () => {
  await using server = await startServer();
  const a = await signIn(server.url, uniqueName("ann"));
  const b = await signIn(server.url, uniqueName("bob"));
  await using ca = await TestClient.connect(server, a.token);
  const cb = await TestClient.connect(server, b.token);
  const online = await ca.next(
    "presence",
    (f) =>
      f.changes.some((c: { user: { id: string }; online: boolean }) =>
        c.user.id === b.user.id && c.online
      ),
  );
  assert.ok(online);
  const list = await ca.request({ type: "presence.list" }, "online");
  assert.deepEqual(
    list.users.map((u: { id: string }) => u.id).sort(),
    [a.user.id, b.user.id].sort(),
  );
  // A second connection of bob, then closing one: still online.
  const cb2 = await TestClient.connect(server, b.token);
  await cb.close();
  cb2.send({ type: "typing", conv: "lobby" });
  const typing = await ca.next("typing");
  assert.deepEqual(typing, {
    type: "typing",
    conv: "lobby",
    user: { id: b.user.id, name: b.user.name },
  });
  await cb2.close();
  const offline = await ca.next(
    "presence",
    (f) =>
      f.changes.some((c: { user: { id: string }; online: boolean }) =>
        c.user.id === b.user.id && !c.online
      ),
  );
  assert.ok(offline);
  // Bob was online throughout his two connections: one online event, one offline event.
  const events = [online, offline].flatMap((f) => f.changes).filter((
    c: { user: { id: string } },
  ) => c.user.id === b.user.id);
  assert.deepEqual(events.map((c: { online: boolean }) => c.online), [true, false]);
});

Deno.test("presence in a crowd: only direct-chat peers and watched users, and the count", async () => {
  await using server = await startServer({ config: { CHAT_PRESENCE_CROWD: 1 } });
  const [a, b, c, d] = await Promise.all(
    ["ann", "bob", "cat", "dan"].map((n) => signIn(server.url, uniqueName(n))),
  );
  await using ca = await TestClient.connect(server, a.token);
  await using cb = await TestClient.connect(server, b.token);
  // Ann and Bob have a direct chat: each hears the other come and go.
  await ca.request({ type: "send", id: "dm-1", to: b.user.id, text: "hi" }, "ack");
  await cb.next("message", (f) => f.id === "dm-1");
  ca.send({ type: "presence.watch", users: [d.user.id] });
  await ca.request({ type: "ping" }, "pong"); // the watch is applied in frame order
  const who = new Map([[b.user.id, "bob"], [c.user.id, "cat"], [d.user.id, "dan"]]);
  // deno-lint-ignore no-explicit-any
  const named = (f: any): string[] =>
    (f.changes as { user: { id: string }; online: boolean }[]).map((x) =>
      `${who.get(x.user.id) ?? "?"}:${x.online ? "on" : "off"}`
    );
  const heard: string[] = [];
  await using cc = await TestClient.connect(server, c.token);
  await using cd = await TestClient.connect(server, d.token);
  const withDan = await ca.next("presence", (f) => named(f).includes("dan:on"));
  heard.push(...named(withDan));
  assert.equal(withDan.crowd, true);
  await cb.close();
  const bobOff = await ca.next("presence", (f) => named(f).includes("bob:off"));
  heard.push(...named(bobOff));
  assert.ok(!heard.includes("cat:on"), `cat is neither a peer nor watched: ${heard}`);
  assert.ok(ca.frames.every((f) => f.type !== "presence" || !named(f).includes("cat:on")));
  // Counts: everyone hears how many are online (at most every 5 s in a crowd).
  const count = await cc.next("presence", (f) => f.count === 3, 8000);
  assert.deepEqual(named(count).filter((x) => x.startsWith("bob")), []);
  await cd.close();
});

Deno.test("vectored writes: on unless the environment says otherwise", () => {
  const env = (init: Record<string, string>) => {
    const map = new Map(Object.entries(init));
    return { map, get: (k: string) => map.get(k), set: (k: string, v: string) => map.set(k, v) };
  };
  const unset = env({});
  assert.equal(preferVectoredWrites(unset), true);
  assert.equal(unset.map.get("DENO_USE_WRITEV"), "1");
  const off = env({ DENO_USE_WRITEV: "" });
  assert.equal(preferVectoredWrites(off), false);
  assert.equal(off.map.get("DENO_USE_WRITEV"), "", "an explicit choice is kept");
  const denied = {
    get: () => undefined,
    set: () => {
      throw new Error("no --allow-env");
    },
  };
  assert.equal(preferVectoredWrites(denied), false);
});

Deno.test("frames far over 1 KB (vectored writes) arrive whole, multibyte text intact", async () => {
  await using server = await startServer({
    config: { CHAT_RATE_BURST: 100, CHAT_MAX_MESSAGE_BYTES: 20_000 },
  });
  const a = await signIn(server.url, uniqueName("ann"));
  await using ca = await TestClient.connect(server, a.token);
  const conv = (await ca.request({ type: "group.create", name: "Big" }, "conversation"))
    .conversation.id;
  assert.equal(Deno.env.get("DENO_USE_WRITEV"), "1", "the harness runs the tests with them on");
  // 3-byte characters and a 4-byte one (a surrogate pair), from under 1 KB to 15 KB a message.
  const texts = [10, 300, 2_000, 6_000, 6_000].map((n, i) =>
    `${i}:` + "汉字😀".repeat(n).slice(0, n)
  );
  for (const [i, text] of texts.entries()) ca.send({ type: "send", id: `big-${i}`, conv, text });
  for (const [i, text] of texts.entries()) {
    const got = await ca.next("message", (f) => f.id === `big-${i}`);
    assert.equal(got.text, text);
  }
  const page = await ca.request({ type: "history", conv, limit: 50 }, "history");
  assert.deepEqual(page.messages.slice(-5).map((m: { text: string }) => m.text), texts);
  const bytes = new TextEncoder().encode(JSON.stringify(page)).length;
  assert.ok(bytes > 30_000, `the page's frame is ${bytes} bytes`);
});

Deno.test("history pages over the socket and REST, members only", async () => {
  await using server = await startServer({ config: { CHAT_RATE_BURST: 100 } });
  const a = await signIn(server.url, uniqueName("ann"));
  const b = await signIn(server.url, uniqueName("bob"));
  await using ca = await TestClient.connect(server, a.token);
  const created = await ca.request({ type: "group.create", name: "Log" }, "conversation");
  const conv = created.conversation.id;
  for (let i = 1; i <= 30; i++) ca.send({ type: "send", id: `h-${i}`, conv, text: `n${i}` });
  await ca.next("ack", (f) => f.id === "h-30");
  // seq 1 is the "created" notice; messages are 2..31.
  const newest = await ca.request({ type: "history", conv, limit: 10 }, "history");
  assert.deepEqual(newest.messages.map((m: { seq: number }) => m.seq), [
    22,
    23,
    24,
    25,
    26,
    27,
    28,
    29,
    30,
    31,
  ]);
  assert.equal(newest.more, true);
  const older = await ca.request({ type: "history", conv, before: 22, limit: 25 }, "history");
  assert.equal(older.messages[0].seq, 1);
  assert.equal(older.messages.at(-1).seq, 21);
  assert.equal(older.more, false);
  const rest = await fetch(
    `${server.url}/api/conversations/${encodeURIComponent(conv)}/messages?before=5&limit=2`,
    { headers: { authorization: `Bearer ${a.token}` } },
  );
  const body = await rest.json();
  assert.deepEqual(body.messages.map((m: { seq: number }) => m.seq), [3, 4]);
  assert.equal(body.more, true);
  const outsider = await fetch(
    `${server.url}/api/conversations/${encodeURIComponent(conv)}/messages`,
    { headers: { authorization: `Bearer ${b.token}` } },
  );
  assert.equal(outsider.status, 404);
  assert.equal((await outsider.json()).error.code, "not_found");
  const anonymous = await fetch(`${server.url}/api/conversations/lobby/messages`);
  assert.equal(anonymous.status, 401);
  await anonymous.body?.cancel();
  const bad = await fetch(`${server.url}/api/conversations/lobby/messages?limit=abc`, {
    headers: { authorization: `Bearer ${a.token}` },
  });
  assert.equal(bad.status, 400);
  assert.match((await bad.json()).error.message, /Expected limit to be an integer/);
});

Deno.test("bad input gets error frames with stable codes and the socket stays open", async () => {
  await using server = await startServer({ config: { CHAT_MAX_MESSAGE_BYTES: 100 } });
  const a = await signIn(server.url, uniqueName("ann"));
  await using ca = await TestClient.connect(server, a.token);
  const cases: [unknown, string, RegExp][] = [
    ["{not json", "bad_json", /Expected a JSON object/],
    ["[]", "bad_frame", /got an array/],
    [{ type: "dance" }, "unknown_type", /Expected type to be one of send, history/],
    [{ type: "send", id: "x", conv: "lobby" }, "bad_frame", /text/],
    [{ type: "send", id: "x", conv: "lobby", text: 5 }, "bad_frame", /text/],
    [{ type: "send", id: "x", conv: "lobby", text: "é".repeat(51) }, "too_large", /100 UTF-8/],
    [{ type: "send", id: "x", conv: "g:nosuch", text: "hi" }, "not_found", /not found/],
    [{ type: "send", id: "x", text: "hi" }, "bad_frame", /expected conv or to/],
    [{ type: "group.join", group: "nosuch" }, "not_found", /not found/],
    [{ type: "history", conv: "nonsense" }, "bad_frame", /conversation id/],
  ];
  for (const [frame, code, message] of cases) {
    const error = ca.next("error");
    ca.send(frame);
    const got = await error;
    assert.equal(got.code, code, JSON.stringify(frame));
    assert.match(got.message, message);
  }
  assert.equal((await ca.request({ type: "ping", t: 7 }, "pong")).t, 7);
  const ack = await ca.post("lobby", "still fine");
  assert.equal(ack.seq, 1);
});

Deno.test("read positions sync across a user's connections and count in the welcome", async () => {
  await using server = await startServer();
  const a = await signIn(server.url, uniqueName("ann"));
  const b = await signIn(server.url, uniqueName("bob"));
  await using ca = await TestClient.connect(server, a.token);
  await using cb = await TestClient.connect(server, b.token);
  await ca.post("lobby", "one");
  await ca.post("lobby", "two");
  await using cb2 = await TestClient.connect(server, b.token);
  const lobby = cb2.welcome.conversations[0];
  assert.deepEqual({ lastSeq: lobby.lastSeq, read: lobby.read }, { lastSeq: 2, read: 0 });
  cb.send({ type: "read", conv: "lobby", seq: 2 });
  assert.deepEqual(await cb2.next("read"), { type: "read", conv: "lobby", seq: 2 });
});

Deno.test("welcome: every conversation with its head, read position and newest message", async () => {
  const admin = "welcome-admin-token-0123456789";
  await using server = await startServer({ config: { CHAT_ADMIN_TOKEN: admin } });
  const a = await signIn(server.url, uniqueName("ann"));
  const b = await signIn(server.url, uniqueName("bob"));
  await using ca = await TestClient.connect(server, a.token);
  await using cb = await TestClient.connect(server, b.token);
  const create = async (name: string) => {
    const created = ca.next("conversation", (f) => f.conversation.title === name);
    ca.send({ type: "group.create", name });
    return (await created).conversation;
  };
  const alpha = await create("Alpha");
  const beta = await create("Beta");
  cb.send({ type: "group.join", group: alpha.group.id });
  await cb.next("conversation");
  await ca.post(alpha.id, "a1", "w-1");
  const dm = await cb.post({ to: a.user.id }, "hi ann", "w-2");
  ca.send({ type: "read", conv: alpha.id, seq: 2 });
  await ca.next("read");
  const pushed = await fetch(`${server.url}/api/push`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${admin}` },
    body: JSON.stringify({ to: { user: a.user.id }, text: "notice 1" }),
  });
  assert.equal(pushed.status, 200, await pushed.text());

  await using ca2 = await TestClient.connect(server, a.token);
  // deno-lint-ignore no-explicit-any
  const byId = new Map<string, any>(ca2.welcome.conversations.map((c: any) => [c.id, c]));
  const notices = `d:${a.user.id}:${a.user.id}`;
  assert.equal(ca2.welcome.conversations[0].id, "lobby");
  assert.deepEqual(
    ca2.welcome.conversations.map((c: { kind: string }) => c.kind),
    ["lobby", "group", "group", "direct", "direct"],
  );
  assert.deepEqual([...byId.keys()].sort(), ["lobby", alpha.id, beta.id, dm.conv, notices].sort());
  const al = byId.get(alpha.id);
  // created, bob joined, a1: three messages; ann read up to the second.
  assert.deepEqual([al.title, al.lastSeq, al.read, al.last.text], ["Alpha", 3, 2, "a1"]);
  assert.equal(al.group.id, alpha.group.id);
  const be = byId.get(beta.id);
  assert.deepEqual([be.title, be.lastSeq, be.last.meta.event], ["Beta", 1, "created"]);
  const d = byId.get(dm.conv);
  assert.deepEqual([d.title, d.peer.id, d.lastSeq, d.read, d.last.text], [
    b.user.name,
    b.user.id,
    1,
    0,
    "hi ann",
  ]);
  const n = byId.get(notices);
  assert.deepEqual([n.title, n.peer.id, n.lastSeq, n.last.text], [
    "Notices",
    "system",
    1,
    "notice 1",
  ]);
  assert.deepEqual(ca2.welcome.resume.lastSeq[alpha.id], 3);
  // Nothing was pushed to bob: his notices line is not listed (but still received).
  await using cb2 = await TestClient.connect(server, b.token);
  assert.deepEqual(
    cb2.welcome.conversations.map((c: { id: string }) => c.id),
    ["lobby", alpha.id, dm.conv],
  );
});
