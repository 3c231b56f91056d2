/**
 * The legacy dialects' client frames, parsed and validated at the edge: what each seed client
 * sends is understood, and what no seed client sends is refused with the error frame it always
 * got.
 */
import assert from "node:assert/strict";
import { LEGACY_FRAME_SCHEMAS, parseLegacy } from "../chat/legacy_protocol.ts";
import { ChatError } from "../chat/protocol.ts";
import type { ErrorCode } from "../chat/protocol.ts";

/** Asserts that `text` is refused with a ChatError of `code` and exactly `message`. */
function assertRefused(text: string, code: ErrorCode, message: string): void {
  assert.throws(
    () => parseLegacy(text),
    (error) => {
      assert.ok(error instanceof ChatError, `expected a ChatError, got ${error}`);
      assert.equal(error.code, code, text);
      assert.equal(error.message, message, text);
      return true;
    },
  );
}

const frame = (value: unknown) => JSON.stringify(value);

Deno.test("seed 002/004 dialect: login, user and logout frames", () => {
  assert.deepEqual(parseLegacy(frame({ type: "login", content: "Lin" })), {
    type: "login",
    name: "Lin",
  });
  assert.deepEqual(parseLegacy(frame({ type: "user", content: "大家好" })), {
    type: "user",
    text: "大家好",
  });
  assert.deepEqual(parseLegacy(frame({ type: "logout" })), { type: "logout" });
  // Fields in any order, and fields no frame has, are fine: the seed pages send what they send.
  assert.deepEqual(parseLegacy(frame({ content: "hi", type: "user", time: 1700000000 })), {
    type: "user",
    text: "hi",
  });
  assert.deepEqual(parseLegacy(frame({ type: "logout", content: "bye" })), { type: "logout" });
});

Deno.test("login takes any name, or none: the adapter decides what to make of it", () => {
  for (const name of ["login", "", "  ", 42, null, { nested: true }, ["a"]]) {
    assert.deepEqual(parseLegacy(frame({ type: "login", content: name })), {
      type: "login",
      name,
    });
  }
  assert.deepEqual(parseLegacy(frame({ type: "login" })), { type: "login", name: undefined });
});

Deno.test("seed 000 dialect: pm by uid and group by gid, as strings or integers", () => {
  assert.deepEqual(parseLegacy(frame({ type: "pm", content: "hello", uid: "k3v9abc" })), {
    type: "pm",
    text: "hello",
    to: "k3v9abc",
  });
  assert.deepEqual(parseLegacy(frame({ type: "pm", content: "hi", uid: "  Bob Smith " })), {
    type: "pm",
    text: "hi",
    to: "Bob Smith",
  });
  assert.deepEqual(parseLegacy(frame({ type: "pm", content: "a", uid: 7 })), {
    type: "pm",
    text: "a",
    to: "7",
  });
  assert.deepEqual(parseLegacy('{"type":"pm","content":"a","uid":-0}'), {
    type: "pm",
    text: "a",
    to: "0",
  });
  assert.deepEqual(parseLegacy(frame({ type: "pm", content: "a", uid: Number.MAX_SAFE_INTEGER })), {
    type: "pm",
    text: "a",
    to: String(Number.MAX_SAFE_INTEGER),
  });
  assert.deepEqual(parseLegacy(frame({ type: "group", content: "to all", gid: "q1w2e3r4t5" })), {
    type: "group",
    text: "to all",
    gid: "q1w2e3r4t5",
  });
  assert.deepEqual(parseLegacy(frame({ type: "group", content: "x", gid: 123 })), {
    type: "group",
    text: "x",
    gid: "123",
  });
});

Deno.test("content is passed on as sent: blank, markup and size are the service's to judge", () => {
  for (const content of ["", "   ", "<script>alert(1)</script>", "bad\u0000text"]) {
    assert.deepEqual(parseLegacy(frame({ type: "user", content })), {
      type: "user",
      text: content,
    });
  }
});

Deno.test("seed 001/003 dialect: text that is not a JSON object is a lobby message", () => {
  assert.deepEqual(parseLegacy("msg=纯文本 hello"), {
    type: "user",
    text: "纯文本 hello",
    plain: true,
  });
  assert.deepEqual(parseLegacy("msg="), { type: "user", text: "", plain: true });
  assert.deepEqual(parseLegacy("no prefix either"), {
    type: "user",
    text: "no prefix either",
    plain: true,
  });
  // Valid JSON, but not an object: still plain text, kept verbatim.
  for (const text of ["42", "null", "true", '"quoted"', "[1,2]", '[{"type":"user"}]', "{"]) {
    assert.deepEqual(parseLegacy(text), { type: "user", text, plain: true }, text);
  }
});

Deno.test("a frame whose type is not a legacy frame's is refused", () => {
  assertRefused(
    frame({ type: "dance", content: "x" }),
    "unknown_type",
    'Expected "type" to be login, user, pm or group, got "dance"',
  );
  // Our own protocol's frames are not the legacy dialect's.
  assertRefused(
    frame({ type: "send", id: "c-1", conv: "lobby", text: "x" }),
    "unknown_type",
    'Expected "type" to be login, user, pm or group, got "send"',
  );
  // Inherited names are not frame types.
  assertRefused(
    frame({ type: "toString" }),
    "unknown_type",
    'Expected "type" to be login, user, pm or group, got "toString"',
  );
  assertRefused(
    frame({ type: "x".repeat(100) }),
    "unknown_type",
    `Expected "type" to be login, user, pm or group, got "${"x".repeat(40)}"`,
  );
  assertRefused(
    frame({ content: "no type" }),
    "bad_frame",
    'Expected "type" to be login, user, pm or group, got undefined',
  );
  assertRefused(
    frame({ type: 1 }),
    "bad_frame",
    'Expected "type" to be login, user, pm or group, got 1',
  );
  assertRefused(
    frame({ type: null }),
    "bad_frame",
    'Expected "type" to be login, user, pm or group, got null',
  );
  assertRefused(
    frame({ type: ["user"] }),
    "bad_frame",
    'Expected "type" to be login, user, pm or group, got ["user"]',
  );
});

Deno.test("user, pm and group frames without string content are refused", () => {
  for (const type of ["user", "pm", "group"]) {
    const target = type === "pm" ? { uid: "u1" } : type === "group" ? { gid: "g1" } : {};
    assertRefused(
      frame({ type, ...target }),
      "bad_frame",
      'Expected "content" to be a string, got undefined',
    );
    assertRefused(
      frame({ type, content: null, ...target }),
      "bad_frame",
      'Expected "content" to be a string, got null',
    );
    assertRefused(
      frame({ type, content: 42, ...target }),
      "bad_frame",
      'Expected "content" to be a string, got number',
    );
    assertRefused(
      frame({ type, content: ["a"], ...target }),
      "bad_frame",
      'Expected "content" to be a string, got object',
    );
  }
});

Deno.test("pm and group frames without a usable uid or gid are refused", () => {
  const bad: [string, unknown][] = [
    ["missing", undefined],
    ["empty", ""],
    ["blank", " \t "],
    ["fraction", 1.5],
    ["unsafe integer", 2 ** 60],
    ["boolean", true],
    ["null", null],
    ["object", { id: "u1" }],
    ["array", ["u1"]],
  ];
  for (const [field, type] of [["uid", "pm"], ["gid", "group"]] as const) {
    for (const [what, value] of bad) {
      assert.throws(
        () => parseLegacy(frame({ type, content: "hi", [field]: value })),
        (error) => {
          assert.ok(error instanceof ChatError, `${type} ${what}`);
          assert.equal(error.code, "bad_frame", `${type} ${what}`);
          assert.equal(
            error.message,
            `Expected "${field}" to be a string or an integer`,
            `${type} ${what}`,
          );
          return true;
        },
      );
    }
  }
  // 1e400 is valid JSON, and Infinity.
  assertRefused(
    '{"type":"pm","content":"hi","uid":1e400}',
    "bad_frame",
    'Expected "uid" to be a string or an integer',
  );
});

Deno.test("content is checked before the target: the first error names content", () => {
  assertRefused(
    frame({ type: "pm", content: 1, uid: 1.5 }),
    "bad_frame",
    'Expected "content" to be a string, got number',
  );
  assertRefused(
    frame({ type: "group", gid: null }),
    "bad_frame",
    'Expected "content" to be a string, got undefined',
  );
});

Deno.test("LEGACY_FRAME_SCHEMAS has one schema per frame type, checking its literal type", () => {
  assert.deepEqual(Object.keys(LEGACY_FRAME_SCHEMAS).sort(), [
    "group",
    "login",
    "logout",
    "pm",
    "user",
  ]);
  for (const [type, schema] of Object.entries(LEGACY_FRAME_SCHEMAS)) {
    assert.equal(schema.safeParse({ type: "other", content: "x" }).success, false, type);
  }
  assert.deepEqual(LEGACY_FRAME_SCHEMAS.pm.parse({ type: "pm", content: "x", uid: 3 }), {
    type: "pm",
    text: "x",
    to: "3",
  });
});
