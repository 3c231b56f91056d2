/**
 * The configuration: defaults, validation with clear errors, and the table in
 * `docs/configuration.md` kept in step with the schema.
 */
import assert from "node:assert/strict";
import { CONFIG_SCHEMA, isKvConnectUrl, loadConfig } from "../chat/config.ts";

/** The message `loadConfig` throws for `env`, or null when it accepts it. */
function rejection(env: Record<string, string>): string | null {
  try {
    loadConfig(env);
    return null;
  } catch (error) {
    assert.ok(error instanceof TypeError, "a TypeError");
    return error.message;
  }
}

Deno.test("config: defaults with an empty environment", () => {
  const config = loadConfig({});
  assert.equal(config.CHAT_KV_PATH, "data/chat.kv");
  assert.deepEqual(config.CHAT_BUS, ["broadcast", "kv"]);
  assert.equal(config.REDIS_URL, "redis://127.0.0.1:6379");
  assert.equal(config.CHAT_REDIS_CHANNEL, "chat");
  assert.equal(config.CHAT_METRICS_TOKEN, undefined);
  assert.equal(config.CHAT_ALLOW_GUESTS, true);
  assert.deepEqual(config.CHAT_ALLOWED_ORIGINS, []);
  assert.equal(config.CHAT_MAX_MESSAGE_BYTES, 4000);
  assert.equal(config.CHAT_LOG_LEVEL, "info");
});

Deno.test("config: values are parsed, empty strings count as unset, others are ignored", () => {
  const config = loadConfig({
    CHAT_BUS: " redis , broadcast ",
    REDIS_URL: "rediss://user:pw@cache.internal:6380/2",
    CHAT_REDIS_CHANNEL: "chat:staging",
    CHAT_ALLOW_GUESTS: "no",
    CHAT_ALLOWED_ORIGINS: "https://a.example, https://b.example",
    CHAT_RATE_PER_SECOND: "2.5",
    CHAT_MAX_MESSAGE_BYTES: "",
    CHAT_METRICS_TOKEN: "0123456789abcdef",
    CHAT_LOG_LEVEL: "warn",
    UNRELATED: "whatever",
  });
  assert.deepEqual(config.CHAT_BUS, ["redis", "broadcast"]);
  assert.equal(config.REDIS_URL, "rediss://user:pw@cache.internal:6380/2");
  assert.equal(config.CHAT_REDIS_CHANNEL, "chat:staging");
  assert.equal(config.CHAT_ALLOW_GUESTS, false);
  assert.deepEqual(config.CHAT_ALLOWED_ORIGINS, ["https://a.example", "https://b.example"]);
  assert.equal(config.CHAT_RATE_PER_SECOND, 2.5);
  assert.equal(config.CHAT_MAX_MESSAGE_BYTES, 4000, "empty means default");
  assert.equal(config.CHAT_METRICS_TOKEN, "0123456789abcdef");
  assert.equal(config.CHAT_LOG_LEVEL, "warn");
  assert.ok(!("UNRELATED" in config));
});

Deno.test("config: every kind of bad value is refused with the variable, the value and why", () => {
  const cases: [Record<string, string>, string][] = [
    [{ CHAT_BUS: "redis,carrier-pigeon" }, 'CHAT_BUS="redis,carrier-pigeon": Expected one of'],
    [{ REDIS_URL: "not a url" }, 'REDIS_URL="not a url"'],
    [{ REDIS_URL: "http://cache:6379" }, "Expected a redis:// or rediss:// URL"],
    [{ CHAT_REDIS_CHANNEL: "has spaces" }, 'CHAT_REDIS_CHANNEL="has spaces"'],
    [{ CHAT_KV_PATH: "ftp://kv.example/db" }, "Expected a file path, :memory:, or a KV Connect"],
    [{ CHAT_SECRET: "short" }, 'CHAT_SECRET="short": Expected at least 32 characters'],
    [{ CHAT_ADMIN_TOKEN: "short" }, "CHAT_ADMIN_TOKEN="],
    [{ CHAT_METRICS_TOKEN: "short" }, 'CHAT_METRICS_TOKEN="short": Expected at least 16'],
    [{ CHAT_ALLOW_GUESTS: "maybe" }, 'CHAT_ALLOW_GUESTS="maybe"'],
    [{ CHAT_MAX_MESSAGE_BYTES: "lots" }, 'CHAT_MAX_MESSAGE_BYTES="lots"'],
    [{ CHAT_MAX_MESSAGE_BYTES: "0" }, 'CHAT_MAX_MESSAGE_BYTES="0"'],
    [{ CHAT_MAX_FRAME_BYTES: "1.5" }, 'CHAT_MAX_FRAME_BYTES="1.5"'],
    [{ CHAT_RATE_PER_SECOND: "-1" }, 'CHAT_RATE_PER_SECOND="-1"'],
    [{ CHAT_RETENTION_DAYS: "0" }, 'CHAT_RETENTION_DAYS="0"'],
    [{ CHAT_IDLE_TIMEOUT_SECONDS: "1" }, 'CHAT_IDLE_TIMEOUT_SECONDS="1"'],
    [{ CHAT_LOG_LEVEL: "loud" }, 'CHAT_LOG_LEVEL="loud"'],
  ];
  for (const [env, expected] of cases) {
    const message = rejection(env);
    assert.ok(message, `${JSON.stringify(env)} is refused`);
    assert.ok(message.startsWith("Invalid configuration: "), message);
    assert.ok(message.includes(expected), `${message}\n  should include: ${expected}`);
  }
});

Deno.test("config: several bad values are all named in one error", () => {
  const message = rejection({ CHAT_LOG_LEVEL: "loud", CHAT_PAGE_SIZE: "1000", REDIS_URL: "x" });
  assert.ok(message);
  for (const name of ["CHAT_LOG_LEVEL", "CHAT_PAGE_SIZE", "REDIS_URL"]) {
    assert.ok(message.includes(`${name}=`), `${name} in: ${message}`);
  }
});

Deno.test("config: KV locations, and a KV Connect URL needs DENO_KV_ACCESS_TOKEN", () => {
  assert.equal(loadConfig({ CHAT_KV_PATH: ":memory:" }).CHAT_KV_PATH, ":memory:");
  assert.equal(
    loadConfig({ CHAT_KV_PATH: "/var/lib/chat/chat.kv" }).CHAT_KV_PATH,
    "/var/lib/chat/chat.kv",
  );
  const url = "http://kv.internal:4512";
  const missing = rejection({ CHAT_KV_PATH: url });
  assert.ok(missing?.includes("DENO_KV_ACCESS_TOKEN"), String(missing));
  const config = loadConfig({ CHAT_KV_PATH: url, DENO_KV_ACCESS_TOKEN: "secret-token" });
  assert.equal(config.CHAT_KV_PATH, url);
  assert.ok(!JSON.stringify(config).includes("secret-token"), "the token is not in the config");
  assert.ok(isKvConnectUrl("https://api.deno.com/databases/x/connect"));
  assert.ok(!isKvConnectUrl("data/chat.kv"));
  assert.ok(!isKvConnectUrl("http://"));
});

/** The rows of the first table in `docs/configuration.md`: variable → default cell. */
async function documentedDefaults(): Promise<Map<string, string>> {
  const text = await Deno.readTextFile(new URL("../docs/configuration.md", import.meta.url));
  const section = text.split("## The service's variables")[1].split("\n## ")[0];
  const rows = new Map<string, string>();
  for (const line of section.split("\n")) {
    const cells = line.split("|").map((c) => c.trim());
    const name = cells[1]?.match(/^`([A-Z_]+)`$/)?.[1];
    if (name) rows.set(name, cells[2]);
  }
  return rows;
}

Deno.test("config: docs/configuration.md lists every variable with its real default", async () => {
  const rows = await documentedDefaults();
  const keys = Object.keys(CONFIG_SCHEMA.shape);
  assert.deepEqual([...rows.keys()].sort(), [...keys].sort(), "one row per schema variable");
  const defaults = loadConfig({}) as Record<string, unknown>;
  for (const key of keys) {
    const cell = rows.get(key)!;
    const value = cell.match(/^`([^`]*)`$/)?.[1];
    if (value === undefined) {
      assert.ok(["(unset)", "(empty)"].includes(cell), `${key}: default cell "${cell}"`);
      const actual = defaults[key];
      assert.ok(
        actual === undefined || (Array.isArray(actual) && actual.length === 0),
        `${key} is documented as ${cell} but defaults to ${JSON.stringify(actual)}`,
      );
    } else {
      // The documented default, given explicitly, configures the same as giving nothing.
      assert.deepEqual(
        (loadConfig({ [key]: value }) as Record<string, unknown>)[key],
        defaults[key],
        key,
      );
    }
  }
});

Deno.test("config: a bad value stops `deno serve main.ts` before it listens, naming it", async () => {
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["serve", "-A", "--port", "0", new URL("../main.ts", import.meta.url).pathname],
    cwd: new URL("..", import.meta.url).pathname,
    env: { CHAT_KV_PATH: ":memory:", CHAT_MAX_MESSAGE_BYTES: "lots", REDIS_URL: "http://x" },
    stdout: "null",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(stderr);
  assert.notEqual(code, 0, "exits with an error");
  assert.ok(text.includes("Invalid configuration"), text);
  assert.ok(text.includes('CHAT_MAX_MESSAGE_BYTES="lots"'), text);
  assert.ok(text.includes("Expected a redis:// or rediss:// URL"), text);
});
