/**
 * Checking secrets: the constant-time comparison behind the admin token, the metrics token and
 * password hashes, and the bearer header parser in front of the tokens.
 */
import assert from "node:assert/strict";
import { bearerToken, constantTimeEqual } from "../chat/secrets.ts";

const TOKEN = "test-admin-token-0123456789";

Deno.test("constantTimeEqual is true for equal strings only", () => {
  assert.equal(constantTimeEqual(TOKEN, TOKEN), true);
  assert.equal(constantTimeEqual("", ""), true);
  assert.equal(constantTimeEqual("令牌-🔑", "令牌-🔑"), true);
  assert.equal(constantTimeEqual(TOKEN.slice(0, -1), TOKEN), false, "a prefix");
  assert.equal(constantTimeEqual(TOKEN + "x", TOKEN), false, "an extension");
  assert.equal(constantTimeEqual(TOKEN, TOKEN + "x"), false, "the other way round");
  assert.equal(constantTimeEqual(TOKEN.replace("0", "1"), TOKEN), false, "one byte off");
  assert.equal(constantTimeEqual(TOKEN.toUpperCase(), TOKEN), false, "case matters");
  assert.equal(constantTimeEqual("", TOKEN), false);
  assert.equal(constantTimeEqual(TOKEN, ""), false);
});

Deno.test("constantTimeEqual compares strings as UTF-8 bytes", () => {
  // Same UTF-16 length, different bytes; and different UTF-16 lengths, different bytes.
  assert.equal(constantTimeEqual("é", "e"), false);
  assert.equal(constantTimeEqual("\u00e9", "e\u0301"), false, "no Unicode normalization");
  assert.equal(constantTimeEqual("é", new TextEncoder().encode("é")), true);
});

Deno.test("constantTimeEqual compares byte arrays, as password hashes need", () => {
  const key = crypto.getRandomValues(new Uint8Array(32));
  assert.equal(constantTimeEqual(key, key.slice()), true);
  const flipped = key.slice();
  flipped[31] ^= 1;
  assert.equal(constantTimeEqual(flipped, key), false);
  assert.equal(constantTimeEqual(key.subarray(0, 16), key), false);
  assert.equal(constantTimeEqual(new Uint8Array(), new Uint8Array()), true);
});

Deno.test("bearerToken reads the token of a Bearer header", () => {
  assert.equal(bearerToken(`Bearer ${TOKEN}`), TOKEN);
  assert.equal(bearerToken("Bearer abc.def-_~+/="), "abc.def-_~+/=");
  // The scheme is case-insensitive; spacing around the token is not part of it.
  assert.equal(bearerToken(`bearer ${TOKEN}`), TOKEN);
  assert.equal(bearerToken(`BEARER ${TOKEN}`), TOKEN);
  assert.equal(bearerToken(`Bearer   ${TOKEN}  `), TOKEN);
  assert.equal(bearerToken(`Bearer\t${TOKEN}`), TOKEN);
});

Deno.test("bearerToken is undefined without a Bearer token", () => {
  for (
    const header of [
      undefined,
      null,
      "",
      "Bearer",
      "Bearer ",
      "Bearer    ",
      `Basic ${TOKEN}`,
      TOKEN,
      `Bearer${TOKEN}`,
      `Bearerx ${TOKEN}`,
      ` Bearer ${TOKEN}`,
    ]
  ) {
    assert.equal(bearerToken(header), undefined, JSON.stringify(header));
  }
});
