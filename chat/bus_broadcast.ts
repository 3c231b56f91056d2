/**
 * The bus between isolates of one process (`deno serve --parallel` workers) and, where the
 * platform links them, instances: `BroadcastChannel`. Fast, but it drops envelopes when a
 * receiver lags 256 behind; the hub repairs from KV.
 *
 * @module
 */
import type { Bus, Envelope } from "./bus.ts";

/** A {@linkcode Bus} over `BroadcastChannel`. */
export class BroadcastBus implements Bus {
  readonly name = "broadcast";
  readonly #channel: BroadcastChannel;
  #outbox: Envelope[] = [];
  #scheduled = false;
  #closed = false;

  constructor(channelName = "chat") {
    this.#channel = new BroadcastChannel(channelName);
  }

  publish(envelope: Envelope): void {
    // One post per tick: the channel's ring holds 256 posts, not 256 envelopes.
    if (this.#closed) return;
    this.#outbox.push(envelope);
    if (this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => this.#flush());
  }

  #flush(): void {
    this.#scheduled = false;
    const batch = this.#outbox;
    this.#outbox = [];
    if (batch.length === 0) return;
    try {
      this.#channel.postMessage(batch);
    } catch {
      // Closed channel or an uncloneable value: the KV repair path covers it.
    }
  }

  subscribe(receive: (envelope: Envelope) => void): void {
    this.#channel.onmessage = (event: MessageEvent<Envelope[]>) => {
      for (const envelope of event.data) receive(envelope);
    };
  }

  healthy(): boolean {
    return true;
  }

  /** Posts what is still queued (the last appends of a shutdown), then closes the channel. */
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#flush();
    this.#closed = true;
    this.#channel.close();
    return Promise.resolve();
  }
}
