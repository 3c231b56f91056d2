/**
 * Counters, gauges and histograms, rendered in the Prometheus text format for `GET /metrics`.
 *
 * Each isolate keeps its own numbers: with `deno serve --parallel` a scrape reaches one worker
 * (whichever accepts the connection), so every sample of a node carries its id in
 * `chat_node_info` and counters are per isolate.
 *
 * @module
 */
import type { Bus, Envelope } from "./bus.ts";

/** A histogram with fixed buckets (upper bounds, in the unit of its name). */
export class Histogram {
  readonly buckets: number[];
  readonly counts: number[];
  sum = 0;
  count = 0;

  constructor(buckets: number[]) {
    this.buckets = buckets;
    this.counts = new Array(buckets.length).fill(0);
  }

  /** Records one observation. */
  observe(value: number): void {
    this.sum += value;
    this.count++;
    for (let i = 0; i < this.buckets.length; i++) {
      if (value <= this.buckets[i]) {
        this.counts[i]++;
        return;
      }
    }
  }
}

const MS_BUCKETS = [0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000];

/** A gauge read at render time: its help text, value and optional labels. */
export interface Gauge {
  help: string;
  value: number;
  labels?: Record<string, string>;
}

/** A label value escaped for the text format (backslash, double quote, newline). */
export function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function labelText(labels: Record<string, string> | undefined): string {
  if (!labels) return "";
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
}

/** Every metric of one node. */
export class Metrics {
  messagesIn = 0;
  messagesOut = 0;
  framesIn = 0;
  errors = new Map<string, number>();
  rateLimited = 0;
  connectionsOpened = 0;
  refusedUpgrades = 0;
  readonly fanoutMs = new Histogram(MS_BUCKETS);
  readonly kvWriteMs = new Histogram(MS_BUCKETS);
  readonly busLagMs = new Histogram(MS_BUCKETS);

  /** Counts an error frame by code. */
  error(code: string): void {
    this.errors.set(code, (this.errors.get(code) ?? 0) + 1);
  }

  /**
   * Observes an envelope from another node: an `append` that carries its messages gives the
   * bus lag, from the newest message's commit time there to its arrival here (clamped at 0,
   * as clocks of different machines may disagree). KV relay appends carry no messages.
   */
  observeEnvelope(envelope: Envelope, now: number = Date.now()): void {
    if (envelope.k !== "append" || !envelope.messages?.length) return;
    let newest = 0;
    for (const m of envelope.messages) if (m.ts > newest) newest = m.ts;
    this.busLagMs.observe(Math.max(0, now - newest));
  }

  /**
   * The same bus, with every envelope it delivers observed by {@linkcode observeEnvelope}
   * first. `createNode` wraps its bus in this before giving it to the hub.
   */
  measure(bus: Bus): Bus {
    return {
      get name() {
        return bus.name;
      },
      publish: (envelope) => bus.publish(envelope),
      subscribe: (receive) =>
        bus.subscribe((envelope) => {
          this.observeEnvelope(envelope);
          receive(envelope);
        }),
      healthy: () => bus.healthy(),
      close: () => bus.close(),
    };
  }

  /** The Prometheus text exposition, with gauges read at call time. */
  render(gauges: Record<string, Gauge>): string {
    const lines: string[] = [];
    const counter = (name: string, help: string, value: number) =>
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} counter`, `${name} ${value}`);
    const histogram = (name: string, help: string, h: Histogram) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} histogram`);
      let cumulative = 0;
      h.buckets.forEach((le, i) => {
        cumulative += h.counts[i];
        lines.push(`${name}_bucket{le="${le}"} ${cumulative}`);
      });
      lines.push(
        `${name}_bucket{le="+Inf"} ${h.count}`,
        `${name}_sum ${h.sum}`,
        `${name}_count ${h.count}`,
      );
    };
    for (const [name, { help, value, labels }] of Object.entries(gauges)) {
      lines.push(
        `# HELP ${name} ${help}`,
        `# TYPE ${name} gauge`,
        `${name}${labelText(labels)} ${value}`,
      );
    }
    counter("chat_messages_in_total", "Messages accepted and stored", this.messagesIn);
    counter("chat_messages_out_total", "Message frames delivered to sockets", this.messagesOut);
    counter("chat_frames_in_total", "Frames received from clients", this.framesIn);
    counter("chat_rate_limited_total", "Frames refused by a rate limit", this.rateLimited);
    counter("chat_connections_opened_total", "Sockets opened", this.connectionsOpened);
    counter("chat_upgrades_refused_total", "Socket upgrades refused", this.refusedUpgrades);
    lines.push(
      "# HELP chat_errors_total Error frames sent, by code",
      "# TYPE chat_errors_total counter",
    );
    for (const [code, n] of this.errors) lines.push(`chat_errors_total${labelText({ code })} ${n}`);
    histogram(
      "chat_fanout_latency_ms",
      "Milliseconds from a message's commit time to its fan-out",
      this.fanoutMs,
    );
    histogram("chat_kv_write_ms", "Milliseconds per KV append commit", this.kvWriteMs);
    histogram(
      "chat_bus_lag_ms",
      "Milliseconds from a message's commit on another node to its arrival here",
      this.busLagMs,
    );
    return lines.join("\n") + "\n";
  }
}
