/**
 * Structured JSON logs, one object per line: `ts`, `level`, `node`, `event`, then the fields.
 * Callers pass events and ids, never message contents, passwords or tokens. Warnings and errors
 * go to stderr, the rest to stdout. With tracing on (`OTEL_DENO=true`, or Deno Deploy), a line
 * written inside a span also carries `trace_id` and `span_id`, so a log search leads to the trace.
 *
 * @module
 */
import { trace } from "@opentelemetry/api";
import { tracingEnabled } from "./telemetry.ts";

/** Log levels, least to most severe. */
export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3, silent: 4 };

/** A logger writing JSON lines. */
export interface Logger {
  debug(event: string, fields?: Record<string, unknown>): void;
  info(event: string, fields?: Record<string, unknown>): void;
  warn(event: string, fields?: Record<string, unknown>): void;
  error(event: string, fields?: Record<string, unknown>): void;
}

/** Where lines go; the console by default, a list in tests. */
export type LogSink = (line: string, level: Exclude<LogLevel, "silent">) => void;

const consoleSink: LogSink = (line, level) => {
  if (level === "error" || level === "warn") console.error(line);
  else console.log(line);
};

const RESERVED = new Set(["ts", "level", "node", "event", "trace_id", "span_id"]);

/**
 * A logger for `level` and above, tagged with the node id. Never throws: an `Error` field is
 * written as its name and message, a bigint as a string, and a field that cannot be encoded
 * (a cycle) as `"[unserializable]"`. Fields cannot overwrite the standard keys.
 */
export function createLogger(level: LogLevel, node: string, sink: LogSink = consoleSink): Logger {
  const write =
    (at: Exclude<LogLevel, "silent">) => (event: string, fields?: Record<string, unknown>) => {
      if (RANK[at] < RANK[level]) return;
      const entry: Record<string, unknown> = {
        ts: new Date().toISOString(),
        level: at,
        node,
        event,
      };
      if (tracingEnabled()) {
        const context = trace.getActiveSpan()?.spanContext();
        if (context) {
          entry.trace_id = context.traceId;
          entry.span_id = context.spanId;
        }
      }
      if (fields) {
        for (const [key, value] of Object.entries(fields)) {
          if (!RESERVED.has(key) && value !== undefined) entry[key] = plain(value);
        }
      }
      let line: string;
      try {
        line = JSON.stringify(entry);
      } catch {
        for (const key of Object.keys(entry)) {
          try {
            JSON.stringify(entry[key]);
          } catch {
            entry[key] = "[unserializable]";
          }
        }
        line = JSON.stringify(entry);
      }
      sink(line, at);
    };
  return { debug: write("debug"), info: write("info"), warn: write("warn"), error: write("error") };
}

/** A field value that `JSON.stringify` writes usefully. */
function plain(value: unknown): unknown {
  if (value instanceof Error) return { name: value.name, message: value.message };
  if (typeof value === "bigint") return value.toString();
  return value;
}
