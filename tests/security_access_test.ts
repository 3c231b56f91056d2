/**
 * Attacks on access: a user who is not a member reads, sends to, types in, lists or joins a
 * private group or someone else's direct conversation, by socket and by REST, and learns nothing,
 * not even whether it exists. Removed members stop receiving at once on every node; blocked users
 * cannot send direct messages.
 *
 * @module
 */
import assert from "node:assert/strict";
import { LocalNetwork } from "../chat/bus.ts";
import { directConversation } from "../chat/protocol.ts";
import { randomId } from "../chat/directory.ts";
import {
  connectUser,
  settle,
  signIn,
  startServer,
  tempKvPath,
  TestClient,
  uniqueName,
} from "./_harness.ts";
import type { Frame, SignedClient, TestServer } from "./_harness.ts";

const ADMIN = "admin-token-for-tests-0123456789";

type Client = SignedClient;
const user = connectUser;

async function createGroup(owner: TestClient, isPublic: boolean): Promise<string> {
  const name = `g${randomId(6)}`;
  // The creator gets the conversation twice (the answer, and as one of its user's connections).
  const frame = owner.next("conversation", (f) => f.conversation.title === name);
  owner.send({ type: "group.create", name, public: isPublic });
  return (await frame).conversation.group.id as string;
}

/** Sends `frame` and returns the error that answers it. */
async function errorFor(client: TestClient, frame: Record<string, unknown>): Promise<Frame> {
  const id = frame.type === "send" ? frame.id : undefined;
  const answer = client.next("error", (f) => f.ref === frame.type && (!id || f.id === id));
  client.send(frame);
  return await answer;
}

async function rest(server: TestServer, token: string, conv: string) {
  const res = await fetch(
    `${server.url}/api/conversations/${encodeURIComponent(conv)}/messages`,
    { headers: { authorization: `Bearer ${token}` } },
  );
  return { status: res.status, body: await res.json() };
}

/** What an outsider sees of a conversation, with its id replaced by a placeholder. */
async function outsiderView(
  server: TestServer,
  outsider: Client,
  conv: string,
  frames: Record<string, unknown>[],
): Promise<string[]> {
  const seen: string[] = [];
  const hide = (s: string) => s.replaceAll(conv, "<conv>").replaceAll(conv.slice(2), "<id>");
  for (const frame of frames) {
    const error = await errorFor(outsider, frame);
    seen.push(`${frame.type}: ${error.code} ${hide(error.message)}`);
  }
  const r = await rest(server, outsider.token, conv);
  seen.push(`REST: ${r.status} ${hide(JSON.stringify(r.body))}`);
  return seen;
}

function groupFrames(group: string, someone: string): Record<string, unknown>[] {
  const conv = `g:${group}`;
  return [
    { type: "send", id: randomId(10), conv, text: "let me in" },
    { type: "history", conv },
    { type: "history", conv, before: 5, limit: 2 },
    { type: "typing", conv },
    { type: "read", conv, seq: 1 },
    { type: "group.members", group },
    { type: "group.join", group },
    { type: "group.leave", group },
    { type: "group.add", group, user: someone },
    { type: "group.remove", group, user: someone },
  ];
}

function directFrames(conv: string): Record<string, unknown>[] {
  return [
    { type: "send", id: randomId(10), conv, text: "let me in" },
    { type: "history", conv },
    { type: "typing", conv },
    { type: "read", conv, seq: 1 },
  ];
}

Deno.test("private group: an outsider is refused on every path, exactly as for no group at all", async () => {
  await using server = await startServer({ config: { CHAT_ADMIN_TOKEN: ADMIN } });
  await using owner = await user(server, "own");
  await using member = await user(server, "mem");
  await using outsider = await user(server, "out");
  const group = await createGroup(owner, false);
  const conv = `g:${group}`;
  owner.send({ type: "group.add", group, user: member.id });
  await member.next("conversation", (f) => f.conversation.id === conv);
  await owner.post(conv, "secret plans");
  await member.next("message", (f) => f.text === "secret plans");

  const existing = await outsiderView(server, outsider, conv, groupFrames(group, owner.id));
  const missing = randomId(10);
  const none = await outsiderView(
    server,
    outsider,
    `g:${missing}`,
    groupFrames(missing, owner.id),
  );
  assert.deepEqual(existing, none);
  for (const line of existing) assert.match(line, /not_found|404/, line);

  // Lists and resumes do not reveal it either.
  const list = await outsider.request({ type: "group.list" }, "groups");
  assert.ok(!list.groups.some((g: { id: string }) => g.id === group));
  assert.ok(!outsider.welcome.conversations.some((c: { id: string }) => c.id === conv));
  outsider.send({ type: "resume", since: { [conv]: 0 } });
  await settle(outsider);
  // Typing and pushes go to members only.
  owner.send({ type: "typing", conv });
  await member.next("typing", (f) => f.conv === conv);
  const push = await fetch(`${server.url}/api/push`, {
    method: "POST",
    headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
    body: JSON.stringify({ to: { group }, text: "members only notice" }),
  });
  assert.equal(push.status, 200, await push.text());
  await member.next("message", (f) => f.text === "members only notice");
  await owner.post(conv, "more plans");
  await member.next("message", (f) => f.text === "more plans");
  await settle(outsider);
  const leaked = outsider.frames.filter((f) =>
    JSON.stringify(f).includes(group) || ["message", "typing", "resumed"].includes(f.type)
  );
  assert.deepEqual(leaked, []);
  // Nothing the outsider sent was stored.
  const history = await member.request({ type: "history", conv }, "history");
  assert.deepEqual(
    history.messages.filter((m: { kind: string }) => m.kind === "text").map((m: Frame) => m.text),
    ["secret plans", "more plans"],
  );
  // The member list is for members.
  const members = await member.request({ type: "group.members", group }, "members");
  assert.deepEqual(
    members.members.map((m: { id: string }) => m.id).sort(),
    [owner.id, member.id].sort(),
  );
});

Deno.test("direct conversation: only its two users read or write it; an outsider learns nothing", async () => {
  await using server = await startServer();
  await using ann = await user(server, "ann");
  await using bob = await user(server, "bob");
  await using eve = await user(server, "eve");
  const conv = directConversation(ann.id, bob.id);
  await ann.post({ to: bob.id }, "just us");
  await bob.next("message", (f) => f.text === "just us");
  const existing = await outsiderView(server, eve, conv, directFrames(conv));
  const [p, q] = [randomId(), randomId()].sort();
  const none = await outsiderView(server, eve, `d:${p}:${q}`, directFrames(`d:${p}:${q}`));
  assert.deepEqual(existing, none);
  for (const line of existing) assert.match(line, /not_found|404/, line);
  // Someone else's notices line is no one else's either, to read or to write.
  const notices = `d:${ann.id}:${ann.id}`;
  assert.equal((await errorFor(eve, { type: "history", conv: notices })).code, "not_found");
  assert.equal((await rest(server, eve.token, notices)).status, 404);
  assert.equal(
    (await errorFor(ann, { type: "send", id: randomId(), conv: notices, text: "x" })).code,
    "bad_frame",
  );
  // The two users can.
  const page = await rest(server, bob.token, conv);
  assert.equal(page.status, 200);
  assert.deepEqual(page.body.messages.map((m: Frame) => m.text), ["just us"]);
  await bob.post(conv, "reply");
  await ann.next("message", (f) => f.text === "reply");
  await settle(eve);
  assert.deepEqual(eve.frames.filter((f) => f.type === "message" || f.type === "typing"), []);
});

Deno.test("public group: anyone joins, then reads and sends; a private one cannot be joined", async () => {
  await using server = await startServer();
  await using owner = await user(server, "own");
  await using guest = await user(server, "gst");
  const open = await createGroup(owner, true);
  await owner.post(`g:${open}`, "welcome all");
  assert.equal((await errorFor(guest, { type: "history", conv: `g:${open}` })).code, "not_found");
  guest.send({ type: "group.join", group: open });
  await guest.next("conversation", (f) => f.conversation.id === `g:${open}`);
  const page = await guest.request({ type: "history", conv: `g:${open}` }, "history");
  assert.ok(page.messages.some((m: Frame) => m.text === "welcome all"));
  await guest.post(`g:${open}`, "hello");
  await owner.next("message", (f) => f.text === "hello");
  // Only the owner adds or removes.
  const shut = await createGroup(owner, false);
  const other = await signIn(server.url, uniqueName("x"));
  assert.equal((await errorFor(guest, { type: "group.join", group: shut })).code, "not_found");
  const notOwner = await errorFor(guest, { type: "group.add", group: open, user: other.user.id });
  assert.equal(notOwner.code, "forbidden");
  const remove = await errorFor(guest, { type: "group.remove", group: open, user: owner.id });
  assert.equal(remove.code, "forbidden");
});

Deno.test("removal: a removed member stops receiving at once on every node", async () => {
  const kvPath = await tempKvPath();
  const network = new LocalNetwork();
  await using n1 = await startServer({ kvPath, buses: [network.join()] });
  await using n2 = await startServer({ kvPath, buses: [network.join()] });
  await using owner = await user(n1, "own");
  await using gone = await user(n2, "gone");
  await using stays = await user(n2, "stay");
  const group = await createGroup(owner, false);
  const conv = `g:${group}`;
  for (const m of [gone, stays]) {
    owner.send({ type: "group.add", group, user: m.id });
    await m.next("conversation", (f) => f.conversation.id === conv);
  }
  await owner.post(conv, "before");
  await gone.next("message", (f) => f.text === "before");
  await stays.next("message", (f) => f.text === "before");

  owner.send({ type: "group.remove", group, user: gone.id });
  // No wait between the removal and the next messages.
  const after = ["after 1", "after 2", "after 3"];
  await Promise.all(after.map((text) => owner.post(conv, text)));
  await gone.next("conversation.removed", (f) => f.conv === conv);
  for (const text of after) await stays.next("message", (f) => f.text === text);
  await settle(gone);
  const got = gone.frames.filter((f) => f.type === "message" && after.includes(f.text));
  assert.deepEqual(got, [], "a removed member received messages sent after the removal");
  // Nor may it read or write any more, on either node.
  assert.equal((await errorFor(gone, { type: "history", conv })).code, "not_found");
  assert.equal(
    (await errorFor(gone, { type: "send", id: randomId(), conv, text: "still here?" })).code,
    "not_found",
  );
  assert.equal((await rest(n1, gone.token, conv)).status, 404);
  assert.equal((await rest(n2, gone.token, conv)).status, 404);
  assert.equal((await errorFor(gone, { type: "group.members", group })).code, "not_found");
  // A new connection of the removed member does not get the group either.
  await using again = await TestClient.connect(n1, gone.token);
  assert.ok(!again.welcome.conversations.some((c: { id: string }) => c.id === conv));
  await owner.post(conv, "later");
  await stays.next("message", (f) => f.text === "later");
  await settle(again);
  assert.ok(!again.frames.some((f) => f.type === "message" && f.conv === conv));
});

Deno.test("blocking: a blocked user can send no more direct messages; unblocking restores them", async () => {
  await using server = await startServer();
  await using ann = await user(server, "ann");
  await using bob = await user(server, "bob");
  await ann.post({ to: bob.id }, "hi bob");
  await bob.next("message", (f) => f.text === "hi bob");
  bob.send({ type: "user.block", user: ann.id });
  await bob.next("blocked", (f) => f.user === ann.id && f.blocked === true);
  const conv = directConversation(ann.id, bob.id);
  for (const target of [{ to: bob.id }, { conv }]) {
    const refused = await errorFor(ann, { type: "send", id: randomId(), ...target, text: "x" });
    assert.equal(refused.code, "forbidden");
  }
  await settle(bob);
  assert.ok(!bob.frames.some((f) => f.type === "message" && f.text === "x"));
  // The blocker may still write; the block is one way.
  await bob.post(conv, "bye");
  bob.send({ type: "user.unblock", user: ann.id });
  await bob.next("blocked", (f) => f.user === ann.id && f.blocked === false);
  await ann.post(conv, "hi again");
  await bob.next("message", (f) => f.text === "hi again");
  assert.equal((await errorFor(ann, { type: "user.block", user: ann.id })).code, "bad_frame");
});

Deno.test({
  name: "blocking: takes effect at once when the two users are on different nodes",
  async fn() {
    const kvPath = await tempKvPath();
    const network = new LocalNetwork();
    await using n1 = await startServer({ kvPath, buses: [network.join()] });
    await using n2 = await startServer({ kvPath, buses: [network.join()] });
    await using ann = await user(n1, "ann");
    await using bob = await user(n2, "bob");
    await ann.post({ to: bob.id }, "hi bob");
    await bob.next("message", (f) => f.text === "hi bob");
    bob.send({ type: "user.block", user: ann.id });
    await bob.next("blocked", (f) => f.user === ann.id);
    const refused = await errorFor(ann, { type: "send", id: randomId(), to: bob.id, text: "x" });
    assert.equal(refused.code, "forbidden");
  },
});

Deno.test("a signed-out user's socket and REST are closed to them (every node)", async () => {
  const kvPath = await tempKvPath();
  const network = new LocalNetwork();
  await using n1 = await startServer({ kvPath, buses: [network.join()] });
  await using n2 = await startServer({ kvPath, buses: [network.join()] });
  const a = await signIn(n1.url, uniqueName("ann"));
  await using on2 = await TestClient.connect(n2, a.token);
  const res = await fetch(`${n1.url}/api/session`, {
    method: "DELETE",
    headers: { authorization: `Bearer ${a.token}` },
  });
  assert.equal(res.status, 200);
  await res.body?.cancel();
  assert.equal((await on2.closed).code, 1008);
  assert.equal((await rest(n2, a.token, "lobby")).status, 401);
});
