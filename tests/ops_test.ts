/**
 * Operations: `/healthz`, `/metrics` (Prometheus text, behind a token, counters that move with
 * traffic), the bus-lag measurement, structured JSON logs, and OpenTelemetry spans through Deno's
 * built-in `OTEL_DENO=true` (exported to a collector the test runs on a local port).
 */
import assert from "node:assert/strict";
import type { Bus, Envelope } from "../chat/bus.ts";
import { LocalNetwork } from "../chat/bus.ts";
import { createLogger } from "../chat/logger.ts";
import type { LogLevel } from "../chat/logger.ts";
import { escapeLabel, Metrics } from "../chat/metrics.ts";
import type { ChatNode } from "../chat/node.ts";
import type { ChatMessage } from "../chat/protocol.ts";
import { spanEvent, tracingEnabled, withSpan, withSpanSync } from "../chat/telemetry.ts";
import { checkHealth, HEALTH_KV_TIMEOUT_MS } from "../routes/ops.ts";
import {
  signIn,
  startServe,
  startServer,
  tempKvPath,
  TestClient,
  uniqueName,
  until,
} from "./_harness.ts";

const TOKEN = "ops-test-metrics-token-42";

/** A parsed OTLP JSON object. */
// deno-lint-ignore no-explicit-any
type Json = Record<string, any>;
const ROOT = new URL("..", import.meta.url);

// ---- a strict reader of the Prometheus text format ----------------------------------------

interface Family {
  type: string;
  help: string;
  samples: { name: string; labels: Record<string, string>; value: number }[];
}

/**
 * Parses the text exposition format, failing on anything a Prometheus scraper would refuse:
 * samples before their TYPE, unknown types, bad label syntax, non-numeric values, counters not
 * named `_total`, histogram buckets that are not cumulative or disagree with `_count`.
 */
function parsePrometheus(text: string): Map<string, Family> {
  assert.ok(text.endsWith("\n"), "ends with a newline");
  const families = new Map<string, Family>();
  const helps = new Map<string, string>();
  for (const line of text.slice(0, -1).split("\n")) {
    let m = line.match(/^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$/);
    if (m) {
      helps.set(m[1], m[2]);
      continue;
    }
    m = line.match(/^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)$/);
    if (m) {
      assert.ok(!families.has(m[1]), `one TYPE for ${m[1]}`);
      assert.ok(helps.has(m[1]), `HELP before TYPE for ${m[1]}`);
      families.set(m[1], { type: m[2], help: helps.get(m[1])!, samples: [] });
      continue;
    }
    m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/);
    assert.ok(m, `a valid line: ${JSON.stringify(line)}`);
    const [, name, labelText, valueText] = m;
    const labels: Record<string, string> = {};
    if (labelText) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/gy;
      let consumed = 0;
      for (const lm of labelText.matchAll(re)) {
        labels[lm[1]] = lm[2];
        consumed += lm[0].length;
      }
      assert.equal(consumed, labelText.length, `valid labels: ${labelText}`);
    }
    const value = valueText === "+Inf" ? Infinity : Number(valueText);
    assert.ok(!Number.isNaN(value), `numeric value in ${line}`);
    const family = families.get(name) ??
      families.get(name.replace(/_(bucket|sum|count)$/, ""));
    assert.ok(family, `TYPE declared before ${name}`);
    family.samples.push({ name, labels, value });
  }
  for (const [name, family] of families) {
    if (family.type === "counter") assert.ok(name.endsWith("_total"), `counter ${name}`);
    if (family.type !== "histogram") continue;
    const buckets = family.samples.filter((s) => s.name === `${name}_bucket`);
    assert.equal(buckets.at(-1)?.labels.le, "+Inf", `${name} ends with +Inf`);
    for (let i = 1; i < buckets.length; i++) {
      assert.ok(buckets[i].value >= buckets[i - 1].value, `${name} buckets are cumulative`);
      assert.ok(
        Number(buckets[i].labels.le) > Number(buckets[i - 1].labels.le) || i === buckets.length - 1,
      );
    }
    const count = family.samples.find((s) => s.name === `${name}_count`);
    assert.equal(count?.value, buckets.at(-1)?.value, `${name}_count is the +Inf bucket`);
    assert.ok(family.samples.some((s) => s.name === `${name}_sum`), `${name}_sum`);
  }
  return families;
}

/** A family's single value (or the sum over its label sets; `_count` for a histogram). */
function value(families: Map<string, Family>, name: string): number {
  const family = families.get(name);
  assert.ok(family, `metric ${name} is exposed`);
  if (family.type === "histogram") {
    return family.samples.find((s) => s.name === `${name}_count`)!.value;
  }
  return family.samples.reduce((sum, s) => sum + s.value, 0);
}

async function scrape(url: string): Promise<Map<string, Family>> {
  const res = await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  assert.equal(res.headers.get("cache-control"), "no-store");
  return parsePrometheus(await res.text());
}

// ---- /healthz --------------------------------------------------------------------------------

Deno.test("healthz: 200 with KV and bus reachable, and says what it checked", async () => {
  await using server = await startServer();
  const res = await fetch(`${server.url}/healthz`);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("cache-control"), "no-store");
  const body = await res.json();
  assert.equal(body.ok, true);
  assert.equal(body.node, server.node.id);
  assert.equal(body.kv, true);
  assert.equal(typeof body.kvMs, "number");
  assert.deepEqual(body.bus, { name: "none", healthy: true });
  assert.equal(body.draining, false);
  assert.equal(body.connections, 0);
  assert.equal(typeof body.uptimeSeconds, "number");
  // HEAD works too (load balancers).
  const head = await fetch(`${server.url}/healthz`, { method: "HEAD" });
  await head.body?.cancel();
  assert.equal(head.status, 200);
});

Deno.test("healthz: 503 when the bus is down, KV still reported up", async () => {
  const down: Bus = {
    name: "fake",
    publish() {},
    subscribe() {},
    healthy: () => false,
    close: () => Promise.resolve(),
  };
  await using server = await startServer({ buses: [down] });
  const res = await fetch(`${server.url}/healthz`);
  assert.equal(res.status, 503);
  const body = await res.json();
  assert.equal(body.ok, false);
  assert.equal(body.kv, true);
  assert.deepEqual(body.bus, { name: "fake", healthy: false });
});

Deno.test("healthz: 503 while draining", async () => {
  await using server = await startServer();
  await server.node.shutdown();
  const res = await fetch(`${server.url}/healthz`);
  assert.equal(res.status, 503);
  assert.equal((await res.json()).draining, true);
});

Deno.test("healthz: KV that fails or hangs is reported unreachable, within the timeout", async () => {
  const stub = (get: () => Promise<unknown>) =>
    ({
      id: "n-stub",
      kv: { get },
      bus: { name: "none", healthy: () => true },
      hub: { connections: 0 },
      draining: false,
      started: Date.now(),
    }) as unknown as ChatNode;
  const failed = await checkHealth(stub(() => Promise.reject(new Error("gone"))));
  assert.deepEqual([failed.ok, failed.kv], [false, false]);
  const started = Date.now();
  const hung = await checkHealth(stub(() => new Promise(() => {})));
  assert.deepEqual([hung.ok, hung.kv], [false, false]);
  const took = Date.now() - started;
  assert.ok(took >= HEALTH_KV_TIMEOUT_MS - 50 && took < HEALTH_KV_TIMEOUT_MS + 1000, `${took} ms`);
});

// ---- /metrics --------------------------------------------------------------------------------

Deno.test("metrics: 404 when no token is configured, 401 without the right one", async () => {
  {
    await using server = await startServer();
    const res = await fetch(`${server.url}/metrics`);
    assert.equal(res.status, 404);
    assert.equal((await res.json()).error.code, "not_found");
  }
  await using server = await startServer({ config: { CHAT_METRICS_TOKEN: TOKEN } });
  for (
    const authorization of [undefined, "Bearer wrong-token-000000000", `Basic ${TOKEN}`, TOKEN]
  ) {
    const res = await fetch(`${server.url}/metrics`, {
      headers: authorization ? { authorization } : {},
    });
    assert.equal(res.status, 401, String(authorization));
    assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="metrics"');
    assert.equal((await res.json()).error.code, "unauthorized");
  }
});

Deno.test("metrics: valid Prometheus text whose counters move when messages flow", async () => {
  await using server = await startServer({ config: { CHAT_METRICS_TOKEN: TOKEN } });
  const before = await scrape(server.url);
  for (
    const name of [
      "chat_connections",
      "chat_messages_in_total",
      "chat_messages_out_total",
      "chat_fanout_latency_ms",
      "chat_kv_write_ms",
      "chat_bus_lag_ms",
      "chat_slow_consumers_dropped_total",
      "chat_bus_healthy",
      "chat_errors_total",
      "chat_log_commits_total",
      "chat_log_conflicts_total",
      "chat_log_locked_total",
    ]
  ) assert.ok(before.has(name), name);
  const info = before.get("chat_node_info")!.samples[0];
  assert.deepEqual(info.labels, { node: server.node.id, bus: "none" });
  assert.equal(value(before, "chat_connections"), 0);

  const ann = await signIn(server.url, uniqueName("ann"));
  const bob = await signIn(server.url, uniqueName("bob"));
  await using ca = await TestClient.connect(server, ann.token);
  await using cb = await TestClient.connect(server, bob.token);
  for (let i = 0; i < 3; i++) await ca.post("lobby", `metered ${i}`, `m-${i}`);
  await cb.next("message", (f) => f.id === "m-2");
  ca.send("not json");
  await ca.next("error", (f) => f.code === "bad_json");

  const after = await scrape(server.url);
  const delta = (name: string) => value(after, name) - value(before, name);
  assert.equal(value(after, "chat_connections"), 2);
  assert.equal(delta("chat_connections_opened_total"), 2);
  assert.equal(delta("chat_messages_in_total"), 3);
  assert.ok(delta("chat_messages_out_total") >= 6, "3 messages to 2 sockets");
  assert.ok(delta("chat_fanout_latency_ms") >= 3, "fan-out latency observed per message");
  assert.ok(delta("chat_kv_write_ms") >= 1, "KV commit latency observed");
  assert.ok(delta("chat_frames_in_total") >= 4);
  assert.ok(delta("chat_delivered_total") >= 6);
  assert.ok(delta("chat_log_commits_total") >= 1, "the messages were committed");
  assert.ok(delta("chat_log_commits_total") <= 3, "at most one commit per message");
  assert.equal(delta("chat_log_conflicts_total"), 0, "one writer has no conflicts");
  const errors = after.get("chat_errors_total")!.samples;
  assert.deepEqual(errors.find((s) => s.labels.code === "bad_json")?.value, 1);
});

Deno.test("metrics: bus lag is measured on appends from other nodes, clamped at zero", async () => {
  const network = new LocalNetwork();
  const sender = network.join();
  const metrics = new Metrics();
  const measured = metrics.measure(network.join());
  const got: Envelope[] = [];
  measured.subscribe((e) => got.push(e));
  assert.equal(measured.name, "local");
  assert.equal(measured.healthy(), true);

  const message = (seq: number, ts: number): ChatMessage => ({
    conv: "lobby",
    seq,
    id: `m${seq}`,
    from: "u",
    name: "U",
    text: "t",
    ts,
    kind: "text",
  });
  const now = Date.now();
  sender.publish({
    node: "a",
    n: 1,
    k: "append",
    conv: "lobby",
    seq: 2,
    messages: [message(1, now - 400), message(2, now - 250)],
  });
  sender.publish({ node: "a", n: 2, k: "heads", heads: { lobby: 2 } });
  sender.publish({ node: "a", n: 3, k: "append", conv: "lobby", seq: 3 });
  // A sender whose clock runs ahead: no negative lag.
  sender.publish({
    node: "a",
    n: 4,
    k: "append",
    conv: "lobby",
    seq: 4,
    messages: [message(4, now + 60_000)],
  });
  await until(() => got.length === 4, 2000, "four envelopes");
  assert.deepEqual(got.map((e) => e.n), [1, 2, 3, 4], "every envelope passes through");
  assert.equal(metrics.busLagMs.count, 2, "only appends that carry messages");
  assert.ok(metrics.busLagMs.sum >= 250 && metrics.busLagMs.sum < 2000, `${metrics.busLagMs.sum}`);
  assert.ok(metrics.render({}).includes('chat_bus_lag_ms_bucket{le="+Inf"} 2'));
  await measured.close();
  await sender.close();
});

Deno.test("metrics: label values are escaped", () => {
  assert.equal(escapeLabel('a"b\\c\nd'), 'a\\"b\\\\c\\nd');
  const metrics = new Metrics();
  metrics.error('we"ird');
  const families = parsePrometheus(
    metrics.render({ g: { help: "h", value: 1, labels: { x: 'q"\\' } } }),
  );
  assert.equal(families.get("g")!.samples[0].labels.x, 'q\\"\\\\');
  assert.equal(families.get("chat_errors_total")!.samples[0].labels.code, 'we\\"ird');
});

// ---- logs ------------------------------------------------------------------------------------

Deno.test("logger: one JSON object per line, levels, safe fields", () => {
  const lines: { line: string; level: string }[] = [];
  const logger = createLogger("info", "n-test", (line, level) => lines.push({ line, level }));
  logger.debug("hidden");
  logger.info("signed_in", { user: "u1", guest: true });
  const cycle: Record<string, unknown> = {};
  cycle.self = cycle;
  logger.warn("odd", {
    level: "forged",
    event: "forged",
    error: new RangeError("out of range"),
    big: 12n,
    cycle,
    skipped: undefined,
  });
  logger.error("failed");
  assert.deepEqual(lines.map((l) => l.level), ["info", "warn", "error"]);
  const [info, warn] = lines.map((l) => JSON.parse(l.line));
  assert.equal(info.node, "n-test");
  assert.equal(info.level, "info");
  assert.equal(info.event, "signed_in");
  assert.equal(info.user, "u1");
  assert.ok(!Number.isNaN(Date.parse(info.ts)));
  assert.deepEqual(Object.keys(info).slice(0, 4), ["ts", "level", "node", "event"]);
  assert.equal(warn.level, "warn", "fields cannot overwrite the standard keys");
  assert.equal(warn.event, "odd");
  assert.deepEqual(warn.error, { name: "RangeError", message: "out of range" });
  assert.equal(warn.big, "12");
  assert.equal(warn.cycle, "[unserializable]");
  assert.ok(!("skipped" in warn));

  const levels: LogLevel[] = ["debug", "info", "warn", "error", "silent"];
  const counts = levels.map((level) => {
    let n = 0;
    const l = createLogger(level, "n", () => n++);
    l.debug("a");
    l.info("b");
    l.warn("c");
    l.error("d");
    return n;
  });
  assert.deepEqual(counts, [4, 3, 2, 1, 0]);
});

// ---- OpenTelemetry ---------------------------------------------------------------------------

Deno.test({
  name: "telemetry: with OTEL off, withSpan is a plain call",
  ignore: Deno.env.get("OTEL_DENO") === "true",
  async fn() {
    assert.equal(tracingEnabled(), false);
    assert.equal(await withSpan("x", {}, (span) => Promise.resolve(span === undefined)), true);
    assert.equal(withSpanSync("x", {}, (span) => span), undefined);
    await assert.rejects(withSpan("x", {}, () => Promise.reject(new Error("boom"))), /boom/);
    assert.throws(() =>
      withSpanSync("x", {}, () => {
        throw new Error("sync boom");
      }), /sync boom/);
    spanEvent("nothing happens");
  },
});

/** An OTLP/HTTP JSON collector on a local port, keeping what it receives. */
function collector() {
  const traces: Json[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const body = await req.text();
    if (new URL(req.url).pathname === "/v1/traces") traces.push(JSON.parse(body));
    return Response.json({});
  });
  const spans = () => {
    const all: Json[] = [];
    for (const t of traces) {
      for (const rs of (t.resourceSpans as Json[]) ?? []) {
        for (const ss of rs.scopeSpans ?? []) {
          for (const span of ss.spans ?? []) {
            all.push({ ...span, scope: ss.scope?.name, resource: rs.resource });
          }
        }
      }
    }
    return all;
  };
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    spans,
    close: () => server.shutdown(),
  };
}

function otelEnv(endpoint: string): Record<string, string> {
  return {
    OTEL_DENO: "true",
    OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
    OTEL_SERVICE_NAME: "chat-test",
    OTEL_BSP_SCHEDULE_DELAY: "200",
  };
}

const attr = (span: Json, key: string) =>
  span.attributes?.find((a: { key: string }) => a.key === key)?.value;

Deno.test("telemetry: with OTEL_DENO=true, withSpan exports nested spans, errors and trace ids", async () => {
  const otlp = collector();
  const dir = await Deno.makeTempDir({ prefix: "chat-otel-" });
  try {
    const script = `${dir}/spans.ts`;
    await Deno.writeTextFile(
      script,
      `
import { spanEvent, tracingEnabled, withSpan, withSpanSync } from "${new URL(
        "chat/telemetry.ts",
        ROOT,
      )}";
import { createLogger } from "${new URL("chat/logger.ts", ROOT)}";
import { ChatError } from "${new URL("chat/protocol.ts", ROOT)}";
console.log(JSON.stringify({ enabled: tracingEnabled() }));
const result = await withSpan("chat.test", { "chat.kind": "unit" }, async (span) => {
  span?.setAttribute("chat.seq", 7);
  withSpanSync("chat.inner", { "chat.n": 1 }, () => spanEvent("inner.done"));
  createLogger("info", "n-otel").info("inside");
  return 42;
});
console.log(JSON.stringify({ result }));
await withSpan("chat.fail", {}, () => Promise.reject(new ChatError("not_found", "nope"))).catch(() => {});
`,
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--config", new URL("deno.json", ROOT).pathname, script],
      env: otelEnv(otlp.url),
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, stdout + new TextDecoder().decode(out.stderr));
    const lines = stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(lines[0], { enabled: true });
    const inside = lines.find((l) => l.event === "inside");
    assert.match(inside?.trace_id ?? "", /^[0-9a-f]{32}$/, "logs inside a span carry its trace id");
    assert.deepEqual(lines.at(-1), { result: 42 });

    await until(() => otlp.spans().some((s) => s.name === "chat.fail"), 10_000, "spans exported");
    const spans = otlp.spans();
    const outer = spans.find((s) => s.name === "chat.test")!;
    const inner = spans.find((s) => s.name === "chat.inner")!;
    const failed = spans.find((s) => s.name === "chat.fail")!;
    assert.equal(outer.scope, "chat");
    assert.deepEqual(attr(outer, "chat.kind"), { stringValue: "unit" });
    assert.ok(attr(outer, "chat.seq"), "attributes set inside the span");
    assert.equal(inner.parentSpanId, outer.spanId, "the inner span is a child");
    assert.equal(inner.traceId, outer.traceId);
    assert.equal(inside.trace_id, outer.traceId);
    assert.ok(inner.events?.some((e: { name: string }) => e.name === "inner.done"));
    assert.equal(failed.status?.code, 2, "ERROR status");
    assert.deepEqual(attr(failed, "chat.error"), { stringValue: "not_found" });
  } finally {
    await otlp.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("telemetry: `OTEL_DENO=true deno serve` starts, serves a chat, and exports traces", async () => {
  const otlp = collector();
  try {
    await using server = await startServe({
      env: { ...otelEnv(otlp.url), CHAT_KV_PATH: await tempKvPath(), CHAT_LOG_LEVEL: "info" },
    });
    const ann = await signIn(server.url, uniqueName("ann"));
    const bob = await signIn(server.url, uniqueName("bob"));
    {
      await using ca = await TestClient.connect(server, ann.token);
      await using cb = await TestClient.connect(server, bob.token);
      await ca.post({ to: bob.user.id }, "traced", "t-1");
      await cb.next("message", (f) => f.id === "t-1");
    }
    await until(
      () =>
        otlp.spans().some((s) =>
          s.resource?.attributes?.some((a: { value: { stringValue?: string } }) =>
            a.value.stringValue === "chat-test"
          )
        ),
      15_000,
      "the server's spans at the collector",
    );
    assert.equal(await server.stop("SIGTERM"), 0, "clean exit on SIGTERM");
    // The JSON log still goes to stdout, one object per line.
    const started = server.output().split("\n").find((l) => l.includes('"node_started"'));
    assert.ok(started && JSON.parse(started).level === "info", server.output().slice(0, 2000));
  } finally {
    await otlp.close();
  }
});
