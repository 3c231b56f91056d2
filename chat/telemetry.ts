/**
 * Tracing through Deno's built-in OpenTelemetry. Run with `OTEL_DENO=true` (and the usual
 * `OTEL_EXPORTER_OTLP_*` variables) and Deno registers its tracer with `npm:@opentelemetry/api`;
 * the spans made here then join the runtime's own (`Deno.serve` requests, `fetch`). On Deno
 * Deploy tracing is always on and the spans show in the dashboard's traces.
 *
 * With telemetry off, {@linkcode withSpan} is one cached boolean test and a direct call: no span
 * objects, no context switch.
 *
 * @module
 */
import { ProxyTracerProvider, SpanStatusCode, trace } from "@opentelemetry/api";
import type { Attributes, Span } from "@opentelemetry/api";

/** The tracer of the chat service; instrumentation scope `chat`. */
const tracer = trace.getTracer("chat");

let enabled: boolean | undefined;

/**
 * Whether spans are recorded: some tracer provider (Deno's, with `OTEL_DENO=true`) is
 * registered with the OpenTelemetry API. Decided on the first call, then cached.
 */
export function tracingEnabled(): boolean {
  // With nothing registered the API hands out its no-op proxy provider.
  enabled ??= !(trace.getTracerProvider() instanceof ProxyTracerProvider);
  return enabled;
}

/**
 * Runs `fn` inside a new active span named `name` with `attributes`, and ends the span when
 * `fn` settles. A throw or rejection is recorded on the span (status ERROR, the exception, and
 * `chat.error` set to a `ChatError`'s code) and passed on unchanged. With tracing off `fn` runs
 * directly and gets `undefined` instead of a span.
 *
 * @example
 * ```ts
 * const ack = await withSpan("chat.post", { "chat.transport": "ws" }, async (span) => {
 *   const { message } = await log.append(input);
 *   span?.setAttribute("chat.seq", message.seq);
 *   return message;
 * });
 * ```
 */
export function withSpan<T>(
  name: string,
  attributes: Attributes,
  fn: (span: Span | undefined) => Promise<T>,
): Promise<T> {
  if (!tracingEnabled()) return fn(undefined);
  return tracer.startActiveSpan(name, { attributes }, async (span) => {
    try {
      return await fn(span);
    } catch (error) {
      fail(span, error);
      throw error;
    } finally {
      span.end();
    }
  });
}

/** {@linkcode withSpan} for synchronous work (the local fan-out of a commit). */
export function withSpanSync<T>(
  name: string,
  attributes: Attributes,
  fn: (span: Span | undefined) => T,
): T {
  if (!tracingEnabled()) return fn(undefined);
  return tracer.startActiveSpan(name, { attributes }, (span) => {
    try {
      return fn(span);
    } catch (error) {
      fail(span, error);
      throw error;
    } finally {
      span.end();
    }
  });
}

/** Adds an event to the active span, if any (a cheap no-op with tracing off). */
export function spanEvent(name: string, attributes?: Attributes): void {
  if (!tracingEnabled()) return;
  trace.getActiveSpan()?.addEvent(name, attributes);
}

function fail(span: Span, error: unknown): void {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === "string") span.setAttribute("chat.error", code);
  if (error instanceof Error) span.recordException(error);
  span.setStatus({
    code: SpanStatusCode.ERROR,
    message: error instanceof Error ? error.message : String(error),
  });
}
