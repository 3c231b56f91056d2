/**
 * The bus: how isolates and machines hear of each other's news. It carries small envelopes
 * ("conversation X has messages up to N", presence, typing), never the record itself: KV is the
 * log of record and every receiver repairs gaps from it, so a bus may drop or repeat envelopes
 * without losing or doubling a message.
 *
 * @module
 */
import type { ChatMessage, ConversationId, ServerFrame, UserId, UserInfo } from "./protocol.ts";

/** Every envelope a node publishes. `node` is the sender; `n` numbers its envelopes. */
export type Envelope =
  & { node: string; n: number }
  & (
    /**
     * New messages in `conv` up to `seq`; `messages` may carry them to save a KV read, `vs` the
     * versionstamp of the commit that wrote that head (the next writer's check needs it).
     */
    | { k: "append"; conv: ConversationId; seq: number; messages?: ChatMessage[]; vs?: string }
    /** The newest sequence of recently active conversations, so a dropped `append` is repaired. */
    | { k: "heads"; heads: Record<ConversationId, number> }
    /** A user's first connection on `node` opened, or its last closed. */
    | { k: "presence"; user: UserInfo; online: boolean; v: number }
    /** A node is alive; `v` is the version of its presence, `users` set on a full snapshot. */
    | { k: "node"; v: number; users?: UserInfo[]; part?: number; parts?: number }
    /** A node asks `target` for a full presence snapshot. */
    | { k: "snapshot"; target: string }
    /** A node is shutting down: its users are offline unless connected elsewhere. */
    | { k: "down" }
    /** Someone is typing in a conversation. */
    | { k: "typing"; conv: ConversationId; user: UserInfo }
    /** A frame for every connection of one user (conversation added, read position, block). */
    | { k: "user"; user: UserId; frame: ServerFrame }
    /** The user's connections start receiving `conv` after `cursor`. */
    | { k: "subscribe"; user: UserId; conv: ConversationId; cursor: number }
    /** The user's connections stop receiving `conv`. */
    | { k: "unsubscribe"; user: UserId; conv: ConversationId }
    /** Close every connection of the user (signed out, password changed). */
    | { k: "kick"; user: UserId; reason: string }
  );

/** An envelope before the bus stamps it with the node and number. */
export type EnvelopeBody = Envelope extends infer E
  ? E extends { node: string; n: number } ? Omit<E, "node" | "n"> : never
  : never;

/** A transport between nodes. Implementations deliver to every node but the sender. */
export interface Bus {
  /** A short name for logs and metrics (`broadcast`, `kv`, `redis`). */
  readonly name: string;
  /** Sends an envelope to the other nodes; never throws, never waits for them. */
  publish(envelope: Envelope): void;
  /** Registers the receiver of other nodes' envelopes. */
  subscribe(receive: (envelope: Envelope) => void): void;
  /** Whether the transport is currently connected. */
  healthy(): boolean;
  /** Stops sending and receiving. */
  close(): Promise<void>;
}

const IDEMPOTENT = new Set<Envelope["k"]>(["append", "heads", "node"]);

/**
 * Several buses as one: publishes on each, and passes on each envelope once however many buses
 * brought it (envelopes are identified by sender and number).
 */
export class MultiBus implements Bus {
  readonly name: string;
  readonly #buses: Bus[];
  readonly #seen = new Map<string, number>();
  #receive: (envelope: Envelope) => void = () => {};

  constructor(buses: Bus[]) {
    this.#buses = buses;
    this.name = buses.map((b) => b.name).join(",") || "none";
    for (const bus of buses) bus.subscribe((e) => this.#deliver(e));
  }

  publish(envelope: Envelope): void {
    for (const bus of this.#buses) bus.publish(envelope);
  }

  subscribe(receive: (envelope: Envelope) => void): void {
    this.#receive = receive;
  }

  healthy(): boolean {
    return this.#buses.every((b) => b.healthy());
  }

  async close(): Promise<void> {
    await Promise.all(this.#buses.map((b) => b.close()));
  }

  #deliver(envelope: Envelope): void {
    // Appends, heads and heartbeats are idempotent; the rest must not arrive twice.
    if (this.#buses.length > 1 && !IDEMPOTENT.has(envelope.k)) {
      const id = `${envelope.node}/${envelope.n}`;
      if (this.#seen.has(id)) return;
      this.#seen.set(id, Date.now());
      if (this.#seen.size > 50_000) {
        // Forget the oldest half; by then a second copy has long arrived or never will.
        let drop = this.#seen.size / 2;
        for (const key of this.#seen.keys()) {
          this.#seen.delete(key);
          if (--drop <= 0) break;
        }
      }
    }
    this.#receive(envelope);
  }
}

/**
 * A bus inside one process, for tests: every `LocalBus` made from the same `LocalNetwork` hears
 * the others, synchronously or after a macrotask.
 */
export class LocalNetwork {
  readonly members = new Set<LocalBus>();
  /** Envelopes to drop, to simulate a lossy transport: return true to drop. */
  drop: (envelope: Envelope) => boolean = () => false;

  /** A new node on this network. */
  join(): LocalBus {
    const bus = new LocalBus(this);
    this.members.add(bus);
    return bus;
  }
}

/** A node's end of a {@linkcode LocalNetwork}. */
export class LocalBus implements Bus {
  readonly name = "local";
  readonly #network: LocalNetwork;
  receive: (envelope: Envelope) => void = () => {};

  constructor(network: LocalNetwork) {
    this.#network = network;
  }

  publish(envelope: Envelope): void {
    if (this.#network.drop(envelope)) return;
    const copy = structuredClone(envelope);
    for (const other of this.#network.members) {
      if (other !== this) setTimeout(() => other.receive(structuredClone(copy)), 0);
    }
  }

  subscribe(receive: (envelope: Envelope) => void): void {
    this.receive = receive;
  }

  healthy(): boolean {
    return true;
  }

  close(): Promise<void> {
    this.#network.members.delete(this);
    return Promise.resolve();
  }
}
