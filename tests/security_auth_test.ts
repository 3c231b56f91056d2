/**
 * Attacks on accounts and sessions: impersonation with forged, expired and revoked tokens, other
 * users' names and their case and width variants, cross-site handshakes and requests, tickets in
 * URLs, brute force, and what the logs and the store hold.
 *
 * @module
 */
import assert from "node:assert/strict";
import { canonicalName, checkUserName } from "../chat/names.ts";
import { hashPassword, verifyPassword } from "../chat/auth.ts";
import { SECRET_KEY, sessionKey, ticketKey } from "../chat/keys.ts";
import { signIn, startServer, tempKvPath, TestClient, uniqueName, until } from "./_harness.ts";
import type { TestServer } from "./_harness.ts";

const PASSWORD = "correct horse battery";

interface HttpResult {
  status: number;
  // deno-lint-ignore no-explicit-any
  body: any;
  headers: Headers;
}

async function call(
  server: { url: string },
  method: string,
  path: string,
  init: { token?: string; body?: unknown; headers?: Record<string, string> } = {},
): Promise<HttpResult> {
  const headers: Record<string, string> = { ...init.headers };
  if (init.token) headers.authorization = `Bearer ${init.token}`;
  if (init.body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(`${server.url}${path}`, {
    method,
    headers,
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
  });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON.
  }
  return { status: res.status, body, headers: res.headers };
}

async function register(server: TestServer, name: string, password = PASSWORD) {
  const res = await call(server, "POST", "/api/register", { body: { name, password } });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return res.body as { user: { id: string; name: string }; token: string };
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * A WebSocket handshake over raw TCP: the HTTP status and body of the answer, so a refusal can be
 * told from an upgrade (the runtime's WebSocket only says "error").
 */
async function handshake(
  server: { url: string },
  headers: Record<string, string> = {},
  path = "/ws",
): Promise<{ status: number; body: string }> {
  const url = new URL(server.url);
  const conn = await Deno.connect({ hostname: url.hostname, port: Number(url.port) });
  try {
    const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
    const head = [
      `GET ${path} HTTP/1.1`,
      `Host: ${url.host}`,
      "Upgrade: websocket",
      "Connection: Upgrade",
      `Sec-WebSocket-Key: ${key}`,
      "Sec-WebSocket-Version: 13",
      ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
      "",
      "",
    ].join("\r\n");
    await conn.write(encoder.encode(head));
    let text = "";
    const buf = new Uint8Array(8192);
    for (;;) {
      const end = text.indexOf("\r\n\r\n");
      if (end >= 0) {
        const status = Number(text.slice(9, 12));
        if (status === 101) return { status, body: "" };
        const length = Number(/content-length:\s*(\d+)/i.exec(text.slice(0, end))?.[1] ?? 0);
        if (text.length >= end + 4 + length) {
          return { status, body: text.slice(end + 4, end + 4 + length) };
        }
      }
      const n = await conn.read(buf);
      if (n === null) return { status: Number(text.slice(9, 12)) || 0, body: "" };
      text += decoder.decode(buf.subarray(0, n));
    }
  } finally {
    conn.close();
  }
}

/** Connects with `headers` and returns how it went: open (closed again at once) or refused. */
async function tryConnect(
  server: TestServer,
  init: { token?: string; headers?: Record<string, string>; query?: string },
): Promise<"open" | "refused"> {
  const client = new TestClient(`${server.ws}/ws${init.query ?? ""}`, init);
  try {
    await client.opened;
  } catch {
    await client.closed;
    return "refused";
  }
  await client.close();
  return "open";
}

async function expectRefused(
  server: TestServer,
  headers: Record<string, string>,
  status: number,
  code: string,
  path = "/ws",
) {
  const res = await handshake(server, headers, path);
  assert.equal(res.status, status, `handshake ${path} ${JSON.stringify(headers)}: ${res.body}`);
  assert.equal(JSON.parse(res.body).error.code, code);
}

// ---- passwords and names --------------------------------------------------------------------

Deno.test("passwords: scrypt with a random salt, verified, never stored in clear", async () => {
  const a = await hashPassword(PASSWORD);
  const b = await hashPassword(PASSWORD);
  assert.match(a, /^scrypt\$16384\$[\w-]{22}\$[\w-]{43}$/);
  assert.notEqual(a, b, "salted: the same password hashes differently");
  assert.equal(await verifyPassword(PASSWORD, a), true);
  assert.equal(await verifyPassword(PASSWORD + "x", a), false);
  assert.equal(await verifyPassword(PASSWORD, "scrypt$99999999999$AAAA$AAAA"), false);
  assert.equal(await verifyPassword(PASSWORD, "md5$x$y$z"), false);

  await using server = await startServer();
  const secret = `pw-${crypto.randomUUID()}`;
  const name = uniqueName("pat");
  await register(server, name, secret);
  for await (const entry of server.kv.list({ prefix: [] })) {
    assert.ok(!JSON.stringify(entry).includes(secret), `password stored in ${entry.key}`);
  }
});

Deno.test("passwords: sign-in succeeds with the password; a wrong password or unknown name says nothing more", async () => {
  await using server = await startServer();
  const name = uniqueName("reg");
  await register(server, name);
  const ok = await call(server, "POST", "/api/session", { body: { name, password: PASSWORD } });
  assert.equal(ok.status, 200);
  assert.equal(ok.body.user.registered, true);
  const wrong = await call(server, "POST", "/api/session", {
    body: { name, password: PASSWORD + "!" },
  });
  const unknown = await call(server, "POST", "/api/session", {
    body: { name: uniqueName("nobody"), password: PASSWORD },
  });
  assert.equal(wrong.status, 403);
  assert.deepEqual(wrong.body, unknown.body, "same answer for a wrong password and no account");
  assert.equal(wrong.body.error.code, "forbidden");
  const short = await call(server, "POST", "/api/register", {
    body: { name: uniqueName("s"), password: "short" },
  });
  assert.equal(short.status, 400);
  assert.match(short.body.error.message, /8 to 256 characters/);
});

Deno.test("names: trimmed, NFKC, case-folded; rules are stated in the error", () => {
  assert.equal(canonicalName(" Ann "), "ann");
  assert.equal(canonicalName("ＡＮＮ"), "ann");
  assert.equal(canonicalName("Straße"), canonicalName("STRASSE"));
  assert.equal(canonicalName("ΟΔΟΣ"), canonicalName("οδοσ"));
  assert.deepEqual(checkUserName("  ｂｏｂ\u3000", 24), { display: "bob", canonical: "bob" });
  const length = assert.throws(() => checkUserName("a", 24), /2 to 24 characters, got 1/);
  void length;
  assert.throws(() => checkUserName("x".repeat(25), 24), /2 to 24 characters, got 25/);
  for (const bad of ["a\u0000b", "an\u200bn", "ann!", "-ann", "a  b", "<script>"]) {
    assert.throws(
      () => checkUserName(bad, 24),
      (e: Error & { code?: string }) =>
        e.code === "bad_frame" && /letters and digits/.test(e.message),
      bad,
    );
  }
  assert.throws(() => checkUserName(42, 24), /string, got number/);
});

Deno.test("names: a registered name cannot be taken, by a guest or anyone, in any case or width", async () => {
  await using server = await startServer();
  const base = `Zoë${Date.now() % 100000}`;
  const owner = await register(server, base);
  const fullWidth = [...base].map((ch) =>
    /[A-Za-z0-9]/.test(ch) ? String.fromCharCode(ch.charCodeAt(0) + 0xfee0) : ch
  ).join("");
  const variants = [
    base,
    base.toUpperCase(),
    base.toLowerCase(),
    ` ${base} `,
    fullWidth,
    base.normalize("NFD"),
  ];
  for (const name of variants) {
    const guest = await call(server, "POST", "/api/session", { body: { name } });
    assert.equal(guest.status, 409, `guest took ${JSON.stringify(name)}`);
    assert.equal(guest.body.error.code, "conflict");
    const again = await call(server, "POST", "/api/register", {
      body: { name, password: "another password" },
    });
    assert.equal(again.status, 409, `registered again as ${JSON.stringify(name)}`);
    // With the owner's password, a variant is the owner.
    const same = await call(server, "POST", "/api/session", {
      body: { name, password: PASSWORD },
    });
    assert.equal(same.status, 200, JSON.stringify(same.body));
    assert.equal(same.body.user.id, owner.user.id);
  }
  // A guest's name is taken too: no one else becomes that guest.
  const guest = await signIn(server.url, uniqueName("guest"));
  const clash = await call(server, "POST", "/api/session", {
    body: { name: guest.user.name.toUpperCase() },
  });
  assert.equal(clash.status, 409);
  const steal = await call(server, "POST", "/api/session", {
    body: { name: guest.user.name, password: PASSWORD },
  });
  assert.equal(steal.status, 403, "a guest account has no password to guess");
});

Deno.test("guests: refused when the configuration disallows them", async () => {
  await using server = await startServer({ config: { CHAT_ALLOW_GUESTS: false } });
  const res = await call(server, "POST", "/api/session", { body: { name: uniqueName("g") } });
  assert.equal(res.status, 403);
  assert.match(res.body.error.message, /guests are disabled/);
  await register(server, uniqueName("r"));
});

// ---- tokens -----------------------------------------------------------------------------------

Deno.test("tokens: forged ones get 401 on REST and on the socket, and no socket", async () => {
  await using server = await startServer();
  const real = await signIn(server.url, uniqueName("ann"));
  const [session, signature] = real.token.split(".");
  await using other = await startServer();
  const foreign = await signIn(other.url, uniqueName("eve"));
  const flip = (s: string) => s.slice(0, -2) + (s.at(-2) === "A" ? "B" : "A") + s.at(-1);
  const forged = [
    `${session}.${flip(signature)}`,
    `${flip(session)}.${signature}`,
    `${session}.`,
    session,
    `${session}.${signature}.x`,
    foreign.token, // signed with another server's secret
    `${"a".repeat(24)}.${signature}`,
    "not a token",
    `${session}.${"A".repeat(43)}`,
    `${session}.%%%`,
  ];
  for (const token of forged) {
    const me = await call(server, "GET", "/api/me", { token });
    assert.equal(me.status, 401, token);
    assert.equal(me.body.error.code, "unauthorized");
    const cookie = await call(server, "GET", "/api/me", {
      headers: { cookie: `chat_session=${token}` },
    });
    assert.equal(cookie.status, 401, token);
    await expectRefused(server, { authorization: `Bearer ${token}` }, 401, "unauthorized");
    assert.equal(await tryConnect(server, { token }), "refused");
  }
  await expectRefused(server, {}, 401, "unauthorized");
  assert.equal(server.node.service.connectionsOf(real.user.id), 0);
  // The real one works.
  assert.equal((await call(server, "GET", "/api/me", { token: real.token })).status, 200);
  assert.equal((await handshake(server, { authorization: `Bearer ${real.token}` })).status, 101);
});

Deno.test("tokens: the session id names its user; older ids without it still work; a mismatch never", async () => {
  const secret = "s".repeat(40);
  await using server = await startServer({ config: { CHAT_SECRET: secret } });
  const ann = await signIn(server.url, uniqueName("ann"));
  const bob = await signIn(server.url, uniqueName("bob"));
  assert.match(ann.token, new RegExp(`^${ann.user.id}-[a-z0-9]{24}\\.`));
  // Tokens signed here as the server signs them, for session records written by hand.
  const key = await crypto.subtle.importKey(
    "raw",
    encoder.encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const signed = async (session: string) => {
    const signature = new Uint8Array(
      await crypto.subtle.sign("HMAC", key, encoder.encode(session)),
    );
    const b64 = btoa(String.fromCharCode(...signature)).replaceAll("+", "-").replaceAll("/", "_");
    return `${session}.${b64.replace(/=+$/, "")}`;
  };
  // The server (node:crypto) signs exactly as WebCrypto does: tokens issued before it moved from
  // WebCrypto stay valid.
  assert.equal(await signed(ann.token.split(".")[0]), ann.token);
  const tokenOf = async (session: string, user: string) => {
    const now = Date.now();
    await server.kv.set(sessionKey(session), { user, createdAt: now, expires: now + 60_000 });
    return await signed(session);
  };
  // A session made before ids named their user: read in two steps, still ann's.
  const old = await tokenOf("a".repeat(24), ann.user.id);
  const me = await call(server, "GET", "/api/me", { token: old });
  assert.equal(me.status, 200, JSON.stringify(me.body));
  assert.equal(me.body.user.id, ann.user.id);
  assert.equal((await handshake(server, { authorization: `Bearer ${old}` })).status, 101);
  // An id naming bob over a record of ann's: neither of them.
  const mismatch = await tokenOf(`${bob.user.id}-${"b".repeat(24)}`, ann.user.id);
  assert.equal((await call(server, "GET", "/api/me", { token: mismatch })).status, 401);
  await expectRefused(server, { authorization: `Bearer ${mismatch}` }, 401, "unauthorized");
  // `ahead` hears the user a signed id names, before the session is read; the caller uses its
  // reads only if verify then returns that user.
  const heard: string[] = [];
  const ahead = (user: string) => heard.push(user);
  assert.equal((await server.node.auth.verify(ann.token, ahead))?.user.id, ann.user.id);
  assert.equal(await server.node.auth.verify(mismatch, ahead), null);
  assert.equal((await server.node.auth.verify(old, ahead))?.user.id, ann.user.id);
  assert.equal(await server.node.auth.verify(`${ann.token.split(".")[0]}.AAAA`, ahead), null);
  assert.deepEqual(heard, [ann.user.id, bob.user.id], "signed new-style ids only");
  // A ticket redeems to the user of its session.
  const res = await call(server, "POST", "/api/session/ticket", { token: bob.token });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  const client = new TestClient(`${server.ws}/ws?ticket=${res.body.ticket}`);
  const welcome = await client.next("welcome");
  assert.equal(welcome.user.id, bob.user.id);
  await client.close();
});

Deno.test("tokens: an expired session gets 401 on REST and on the socket", async () => {
  // 0.0003 h is about a second.
  await using server = await startServer({ config: { CHAT_SESSION_HOURS: 0.0003 } });
  const a = await signIn(server.url, uniqueName("ann"));
  assert.equal((await call(server, "GET", "/api/me", { token: a.token })).status, 200);
  await new Promise((r) => setTimeout(r, 1500));
  const me = await call(server, "GET", "/api/me", { token: a.token });
  assert.equal(me.status, 401);
  await expectRefused(server, { authorization: `Bearer ${a.token}` }, 401, "unauthorized");
  const history = await call(server, "GET", "/api/conversations/lobby/messages", {
    token: a.token,
  });
  assert.equal(history.status, 401);
});

Deno.test("tokens: sign-out revokes the session, clears the cookie and closes the open socket", async () => {
  await using server = await startServer();
  const a = await signIn(server.url, uniqueName("ann"));
  await using ca = await TestClient.connect(server, a.token);
  const out = await call(server, "DELETE", "/api/session", { token: a.token });
  assert.equal(out.status, 200);
  assert.match(out.headers.get("set-cookie") ?? "", /chat_session=;.*Max-Age=0/i);
  const closed = await ca.closed;
  assert.equal(closed.code, 1008);
  assert.equal((await call(server, "GET", "/api/me", { token: a.token })).status, 401);
  const history = await call(server, "GET", "/api/conversations/lobby/messages", {
    token: a.token,
  });
  assert.equal(history.status, 401);
  await expectRefused(server, { authorization: `Bearer ${a.token}` }, 401, "unauthorized");
  const ticket = await call(server, "POST", "/api/session/ticket", { token: a.token });
  assert.equal(ticket.status, 401);
  assert.equal((await call(server, "DELETE", "/api/session", { token: a.token })).status, 401);
});

Deno.test("tokens: a password change revokes every old session and closes their sockets", async () => {
  await using server = await startServer();
  const name = uniqueName("reg");
  const first = await register(server, name);
  const second = await signIn(server.url, name, PASSWORD);
  await using socket = await TestClient.connect(server, second.token);
  const wrong = await call(server, "POST", "/api/password", {
    token: first.token,
    body: { current: "not the password", password: "a new password" },
  });
  assert.equal(wrong.status, 403);
  const changed = await call(server, "POST", "/api/password", {
    token: first.token,
    body: { current: PASSWORD, password: "a new password" },
  });
  assert.equal(changed.status, 200, JSON.stringify(changed.body));
  assert.equal((await socket.closed).code, 1008);
  for (const old of [first.token, second.token]) {
    assert.equal((await call(server, "GET", "/api/me", { token: old })).status, 401);
    await expectRefused(server, { authorization: `Bearer ${old}` }, 401, "unauthorized");
  }
  assert.equal((await call(server, "GET", "/api/me", { token: changed.body.token })).status, 200);
  const oldPassword = await call(server, "POST", "/api/session", {
    body: { name, password: PASSWORD },
  });
  assert.equal(oldPassword.status, 403);
  const newPassword = await call(server, "POST", "/api/session", {
    body: { name, password: "a new password" },
  });
  assert.equal(newPassword.status, 200);
});

Deno.test("cookies: HttpOnly, SameSite, expiring, not cached; they work for REST and the socket", async () => {
  await using server = await startServer();
  const res = await fetch(`${server.url}/api/session`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: uniqueName("cookie") }),
  });
  const body = await res.json();
  const cookie = res.headers.get("set-cookie") ?? "";
  assert.match(cookie, /^chat_session=[\w.-]+;/);
  assert.match(cookie, /HttpOnly/i);
  assert.match(cookie, /SameSite=Strict/i);
  assert.match(cookie, /Path=\//);
  assert.match(cookie, /Expires=/i);
  assert.equal(res.headers.get("cache-control"), "no-store");
  assert.ok(body.expiresAt > Date.now());
  const pair = cookie.split(";")[0];
  const me = await call(server, "GET", "/api/me", { headers: { cookie: pair } });
  assert.equal(me.status, 200);
  await using client = new TestClient(`${server.ws}/ws`, { headers: { cookie: pair } });
  await client.opened;
  assert.equal((await client.next("welcome")).user.id, body.user.id);
});

Deno.test("secret: generated once, kept in KV, and shared by nodes on the same store", async () => {
  const kvPath = await tempKvPath();
  let token: string;
  {
    await using first = await startServer({ kvPath });
    token = (await signIn(first.url, uniqueName("ann"))).token;
    const secret = await first.kv.get<string>(SECRET_KEY);
    assert.ok(secret.value && secret.value.length >= 32);
  }
  await using second = await startServer({ kvPath });
  assert.equal((await call(second, "GET", "/api/me", { token })).status, 200);
  // A configured secret wins: tokens signed with the generated one no longer verify.
  await using configured = await startServer({
    kvPath: await tempKvPath(),
    config: { CHAT_SECRET: "x".repeat(40) },
  });
  const t2 = (await signIn(configured.url, uniqueName("bo"))).token;
  assert.equal((await call(configured, "GET", "/api/me", { token: t2 })).status, 200);
  assert.equal((await call(configured, "GET", "/api/me", { token })).status, 401);
});

// ---- tickets and URLs -------------------------------------------------------------------------

Deno.test("tickets: single use, expiring; a token in the URL is never accepted", async () => {
  await using server = await startServer();
  const a = await signIn(server.url, uniqueName("ann"));
  const issued = await call(server, "POST", "/api/session/ticket", { token: a.token });
  assert.equal(issued.status, 200);
  assert.ok(issued.body.expiresInMs <= 60_000);
  assert.equal(issued.headers.get("cache-control"), "no-store");
  const ticket = issued.body.ticket as string;
  const client = new TestClient(`${server.ws}/ws?ticket=${ticket}`);
  await client.opened;
  assert.equal((await client.next("welcome")).user.id, a.user.id);
  await client.close();
  await expectRefused(server, {}, 401, "unauthorized", `/ws?ticket=${ticket}`);
  await expectRefused(server, {}, 401, "unauthorized", `/ws?ticket=${"a".repeat(32)}`);
  await expectRefused(server, {}, 401, "unauthorized", "/ws?ticket=");
  // An expired ticket (written as the server writes them, but in the past).
  const stale = "b".repeat(32);
  const session = a.token.split(".")[0];
  await server.kv.set(ticketKey(stale), { user: a.user.id, session, expires: Date.now() - 1 });
  await expectRefused(server, {}, 401, "unauthorized", `/ws?ticket=${stale}`);
  // Tokens in the query string are not credentials.
  for (const q of ["token", "access_token", "session", "auth"]) {
    await expectRefused(server, {}, 401, "unauthorized", `/ws?${q}=${a.token}`);
  }
  // A ticket dies with its session.
  const t2 = (await call(server, "POST", "/api/session/ticket", { token: a.token })).body.ticket;
  await call(server, "DELETE", "/api/session", { token: a.token });
  await expectRefused(server, {}, 401, "unauthorized", `/ws?ticket=${t2}`);
});

// ---- cross-site --------------------------------------------------------------------------------

Deno.test("origin: a handshake from a foreign Origin is refused; the own origin is fine", async () => {
  await using server = await startServer();
  const a = await signIn(server.url, uniqueName("ann"));
  const auth = { authorization: `Bearer ${a.token}` };
  const own = new URL(server.url).origin;
  for (
    const origin of ["https://evil.example", "null", `${own}.evil.example`, "http://127.0.0.1"]
  ) {
    await expectRefused(server, { ...auth, origin }, 403, "forbidden");
    assert.equal(await tryConnect(server, { token: a.token, headers: { origin } }), "refused");
  }
  assert.equal((await handshake(server, { ...auth, origin: own })).status, 101);
  // State-changing REST calls from a foreign page are refused too (login CSRF, sign-out).
  const csrf = await call(server, "POST", "/api/session", {
    headers: { origin: "https://evil.example" },
    body: { name: uniqueName("csrf") },
  });
  assert.equal(csrf.status, 403);
  const out = await call(server, "DELETE", "/api/session", {
    token: a.token,
    headers: { origin: "https://evil.example" },
  });
  assert.equal(out.status, 403);
  assert.equal((await call(server, "GET", "/api/me", { token: a.token })).status, 200);
  const ok = await call(server, "POST", "/api/session", {
    headers: { origin: own },
    body: { name: uniqueName("same") },
  });
  assert.equal(ok.status, 200);
});

Deno.test("origin: with an allow-list, only the listed origins may connect", async () => {
  await using server = await startServer({
    config: { CHAT_ALLOWED_ORIGINS: ["https://chat.example"] },
  });
  const a = await signIn(server.url, uniqueName("ann"));
  const auth = { authorization: `Bearer ${a.token}` };
  assert.equal((await handshake(server, { ...auth, origin: "https://chat.example" })).status, 101);
  await expectRefused(server, { ...auth, origin: new URL(server.url).origin }, 403, "forbidden");
  await expectRefused(server, { ...auth, origin: "https://chat.example.evil" }, 403, "forbidden");
});

// ---- brute force, connections -------------------------------------------------------------

Deno.test("sign-in attempts are limited per name and per address, with a retry time", async () => {
  await using server = await startServer({ config: { CHAT_SIGNIN_PER_MINUTE: 3 } });
  const name = uniqueName("vic");
  await register(server, name);
  const statuses: number[] = [];
  let limited: HttpResult | undefined;
  for (let i = 0; i < 5; i++) {
    const res = await call(server, "POST", "/api/session", {
      body: { name, password: `guess${i}xx` },
    });
    statuses.push(res.status);
    if (res.status === 429) limited ??= res;
  }
  assert.deepEqual(statuses.slice(0, 2), [403, 403]); // register took one
  assert.ok(limited, `expected 429, got ${statuses}`);
  assert.equal(limited.body.error.code, "rate_limited");
  assert.match(limited.body.error.message, /retry in \d+ s/);
  assert.ok(Number(limited.headers.get("retry-after")) >= 1);
  // Even the right password waits: the limit is on the name, not on failures.
  const right = await call(server, "POST", "/api/session", { body: { name, password: PASSWORD } });
  assert.equal(right.status, 429);
  // Per address: many names from one address (burst of 3 × the per-name limit).
  let byAddress = 0;
  for (let i = 0; i < 12; i++) {
    const res = await call(server, "POST", "/api/session", { body: { name: uniqueName("n") } });
    if (res.status === 429) byAddress++;
  }
  assert.ok(byAddress >= 1, "the address limit applies across names");
});

Deno.test("connections are limited per user and per address, even when they race", async () => {
  await using server = await startServer({
    config: { CHAT_MAX_CONNECTIONS_PER_USER: 2, CHAT_MAX_CONNECTIONS_PER_ADDRESS: 3 },
  });
  const a = await signIn(server.url, uniqueName("ann"));
  const clients = Array.from({ length: 6 }, () => new TestClient(`${server.ws}/ws`, a));
  const results = await Promise.all(
    clients.map((c) => c.opened.then(() => "open", () => "refused")),
  );
  assert.equal(results.filter((r) => r === "open").length, 2, results.join());
  await expectRefused(server, { authorization: `Bearer ${a.token}` }, 403, "limit_reached");
  const b = await signIn(server.url, uniqueName("bob"));
  await using cb = await TestClient.connect(server, b.token);
  const c = await signIn(server.url, uniqueName("cy"));
  const res = await handshake(server, { authorization: `Bearer ${c.token}` });
  assert.equal(res.status, 403);
  assert.match(JSON.parse(res.body).error.message, /per address/);
  await Promise.all(clients.map((c) => c.close()));
  await cb.close();
  await until(() => server.node.service.connectionsOf(a.user.id) === 0);
  await using again = await TestClient.connect(server, c.token);
  assert.equal(again.welcome.user.id, c.user.id);
});

// ---- logs and headers -----------------------------------------------------------------------

Deno.test("logs hold no passwords, tokens, tickets or message contents", async () => {
  const lines: string[] = [];
  const { log, error, warn, info } = console;
  const capture = (...args: unknown[]) => lines.push(args.map(String).join(" "));
  console.log =
    console.error =
    console.warn =
    console.info =
      capture;
  try {
    await using server = await startServer({ config: { CHAT_LOG_LEVEL: "debug" } });
    const secret = `pw-${crypto.randomUUID()}`;
    const name = uniqueName("log");
    const reg = await register(server, name, secret);
    const again = await call(server, "POST", "/api/session", { body: { name, password: secret } });
    await call(server, "POST", "/api/session", { body: { name, password: secret + "x" } });
    const ticket = (await call(server, "POST", "/api/session/ticket", { token: again.body.token }))
      .body.ticket as string;
    const text = `private words ${crypto.randomUUID()}`;
    {
      await using client = new TestClient(`${server.ws}/ws?ticket=${ticket}`);
      await client.opened;
      await client.next("welcome");
      client.send({ type: "resume", since: {} });
      await client.post("lobby", text);
      client.send(`{"type":"send","id":"x","conv":"lobby","text":"${text}",}`);
      await client.next("error");
    }
    await handshake(server, { authorization: `Bearer ${reg.token}x` });
    await handshake(server, {}, `/ws?ticket=${ticket}`);
    await call(server, "POST", "/api/password", {
      token: reg.token,
      body: { current: secret, password: `${secret}-2` },
    });
    await call(server, "DELETE", "/api/session", { token: again.body.token });
    await server.close();
    const all = lines.join("\n");
    assert.match(all, /"event":"registered"/, "logging is on");
    assert.match(all, /"event":"socket_refused"/);
    for (const needle of [secret, reg.token, again.body.token, ticket, text, "private words"]) {
      assert.ok(!all.includes(needle), `the log holds ${needle.slice(0, 12)}…`);
    }
    for (const part of [reg.token.split(".")[1], again.body.token.split(".")[0]]) {
      assert.ok(!all.includes(part), "the log holds part of a token");
    }
  } finally {
    Object.assign(console, { log, error, warn, info });
  }
});

Deno.test("pages and API answers carry the security headers (a CSP without inline script)", async () => {
  await using server = await startServer();
  for (const path of ["/", "/api/me", "/no-such-page.js"]) {
    const res = await fetch(`${server.url}${path}`);
    await res.body?.cancel();
    const csp = res.headers.get("content-security-policy") ?? "";
    assert.match(csp, /script-src 'self'(;|$)/, path);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
    assert.match(csp, /frame-ancestors 'none'/);
    assert.match(csp, /object-src 'none'/);
    assert.equal(res.headers.get("x-content-type-options"), "nosniff");
    assert.equal(res.headers.get("x-frame-options"), "DENY");
    assert.equal(res.headers.get("referrer-policy"), "no-referrer");
  }
  const https = await fetch(`${server.url}/`, { headers: { "x-forwarded-proto": "https" } });
  await https.body?.cancel();
  assert.match(https.headers.get("strict-transport-security") ?? "", /max-age=\d+/);
  const big = await call(server, "POST", "/api/session", {
    body: { name: "x".repeat(100_000) },
  });
  assert.equal(big.status, 413, "a huge body is refused before it is parsed");
});
