/**
 * Counters, gauges and histograms, rendered in the Prometheus text format for `GET /metrics`.
 *
 * @module
 */

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

  /** The Prometheus text exposition, with gauges read at call time. */
  render(gauges: Record<string, { help: string; value: number }>): string {
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
    for (const [name, { help, value }] of Object.entries(gauges)) {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} gauge`, `${name} ${value}`);
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
    for (const [code, n] of this.errors) lines.push(`chat_errors_total{code="${code}"} ${n}`);
    histogram(
      "chat_fanout_latency_ms",
      "Milliseconds from a message's commit time to its fan-out",
      this.fanoutMs,
    );
    histogram("chat_kv_write_ms", "Milliseconds per KV append commit", this.kvWriteMs);
    histogram(
      "chat_bus_lag_ms",
      "Milliseconds from commit on another node to fan-out here",
      this.busLagMs,
    );
    return lines.join("\n") + "\n";
  }
}
