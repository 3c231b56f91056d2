import assert from "node:assert/strict";
import {
  ChatError,
  CLIENT_FRAME_SCHEMAS,
  directConversation,
  groupConversation,
  parseClientFrame,
  parseConversation,
  utf8Length,
} from "../chat/protocol.ts";
import { canonicalName, checkGroupName, checkText, checkUserName } from "../chat/names.ts";
import { KeyedLimiter, TokenBucket } from "../chat/rate_limit.ts";
import { dedupeKey, headKey, messageKey } from "../chat/keys.ts";

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof ChatError, `expected a ChatError, got ${error}`);
    return error.code;
  }
  throw new Error("expected an error");
}

Deno.test("parseClientFrame accepts every documented frame", () => {
  const frames = [
    { type: "send", id: "m1", conv: "lobby", text: "hi" },
    { type: "send", id: "m1", to: "u2", text: "hi" },
    { type: "history", conv: "g:abc", before: 10, limit: 20 },
    { type: "typing", conv: "d:a:b" },
    { type: "resume", since: { lobby: 3, "g:x": 0 } },
    { type: "read", conv: "lobby", seq: 4 },
    { type: "group.create", name: "Team", public: false },
    { type: "group.join", group: "abc" },
    { type: "group.leave", group: "abc" },
    { type: "group.add", group: "abc", user: "u1" },
    { type: "group.remove", group: "abc", user: "u1" },
    { type: "group.members", group: "abc" },
    { type: "group.list" },
    { type: "dm.open", user: "u2" },
    { type: "user.block", user: "u2" },
    { type: "user.unblock", user: "u2" },
    { type: "presence.list" },
    { type: "presence.watch", users: ["p0o9", "k3v9"] },
    { type: "user.find", name: "an" },
    { type: "ping", t: 1 },
  ];
  assert.equal(frames.length, Object.keys(CLIENT_FRAME_SCHEMAS).length + 1);
  for (const frame of frames) {
    assert.equal(parseClientFrame(JSON.stringify(frame)).type, frame.type);
  }
});

Deno.test("parseClientFrame refuses bad input with stable codes and clear messages", () => {
  assert.equal(codeOf(() => parseClientFrame("{nope")), "bad_json");
  assert.equal(codeOf(() => parseClientFrame("[1,2]")), "bad_frame");
  assert.equal(codeOf(() => parseClientFrame("null")), "bad_frame");
  assert.equal(codeOf(() => parseClientFrame('{"type":1}')), "bad_frame");
  assert.equal(codeOf(() => parseClientFrame('{"type":"nope"}')), "unknown_type");
  assert.equal(codeOf(() => parseClientFrame('{"type":"toString"}')), "unknown_type");
  assert.equal(codeOf(() => parseClientFrame('{"type":"send","id":"m"}')), "bad_frame");
  assert.equal(
    codeOf(() => parseClientFrame('{"type":"send","id":"m","conv":"lobby","text":"x","x":1}')),
    "bad_frame",
  );
  assert.equal(
    codeOf(() => parseClientFrame('{"type":"history","conv":"lobby","before":1e300}')),
    "bad_frame",
  );
  assert.equal(
    codeOf(() => parseClientFrame('{"type":"resume","since":{"a":{"b":{"c":{"d":{}}}}}}')),
    "bad_frame",
  );
  try {
    parseClientFrame('{"type":"send","id":"bad id!","conv":"lobby","text":"x"}');
  } catch (error) {
    assert.match((error as Error).message, /Invalid send frame: id: Expected 1 to 64 letters/);
  }
});

Deno.test("conversation ids: direct ids are the same whichever side asks", () => {
  assert.equal(directConversation("b", "a"), "d:a:b");
  assert.equal(directConversation("a", "b"), "d:a:b");
  assert.deepEqual(parseConversation("d:a:b"), { kind: "direct", users: ["a", "b"] });
  assert.deepEqual(parseConversation(groupConversation("x")), { kind: "group", group: "x" });
  assert.deepEqual(parseConversation("lobby"), { kind: "lobby" });
});

Deno.test("utf8Length counts bytes like TextEncoder", () => {
  for (const s of ["", "abc", "é", "中文", "😀", "a😀b", "\ud800x"]) {
    assert.equal(utf8Length(s), new TextEncoder().encode(s).length, s);
  }
});

Deno.test("names: case and width variants are the same name; rules are stated", () => {
  assert.equal(checkUserName("  Ann ", 24).canonical, checkUserName("ＡＮＮ", 24).canonical);
  assert.equal(canonicalName("ANN"), "ann");
  assert.throws(() => checkUserName("a", 24), /Expected a name of 2 to 24 characters, got 1/);
  assert.throws(() => checkUserName("a\u0000b", 24), /letters and digits/);
  assert.throws(() => checkUserName("<script>", 24), /letters and digits/);
  assert.throws(() => checkGroupName("   ", 48), /1 to 48 characters/);
  assert.throws(() => checkText("x".repeat(10), 5, utf8Length), /at most 5 UTF-8 bytes, got 10/);
  assert.throws(() => checkText(" \n ", 50, utf8Length), /not blank/);
  assert.throws(() => checkText("a\u0007b", 50, utf8Length), /control characters/);
  checkText("line\nnext\ttab 😀", 50, utf8Length);
});

Deno.test("token bucket: a burst, then the refill rate", () => {
  const bucket = new TokenBucket(3, 1, 0);
  assert.ok(bucket.take(0).ok);
  assert.ok(bucket.take(0).ok);
  assert.ok(bucket.take(0).ok);
  const refused = bucket.take(0);
  assert.equal(refused.ok, false);
  assert.equal(refused.retryAfterMs, 1000);
  assert.ok(bucket.take(1000).ok);
  const limiter = new KeyedLimiter(1, 1);
  assert.ok(limiter.take("a", 0).ok);
  assert.equal(limiter.take("a", 0).ok, false);
  assert.ok(limiter.take("b", 0).ok);
});

Deno.test("storage keys: messages sort by sequence within a conversation", () => {
  assert.deepEqual(messageKey("lobby", 2), ["msg", "lobby", 2]);
  assert.deepEqual(headKey("g:x"), ["head", "g:x"]);
  assert.deepEqual(dedupeKey("u", "m"), ["dedupe", "u", "m"]);
});
