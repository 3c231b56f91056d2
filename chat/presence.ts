/**
 * Who is online, across every node. A user is online while any of their connections on any
 * node is open. Each node counts its own connections, publishes changes with a version number,
 * and a heartbeat carrying that version: a receiver that missed a change (the bus may drop) asks
 * for a full snapshot; a node silent for `timeoutMs` is presumed gone.
 *
 * With several buses an envelope may arrive twice, the second copy late: heartbeats and
 * snapshots older than what was applied are ignored, and so is a node that said it is down.
 *
 * @module
 */
import type { Envelope, EnvelopeBody } from "./bus.ts";
import type { UserId, UserInfo } from "./protocol.ts";

/** Options of {@linkcode Presence}. */
export interface PresenceOptions {
  node: string;
  /** Publishes an envelope to the other nodes. */
  publish: (body: EnvelopeBody) => void;
  /** Called when a user comes online or goes offline, seen from this node. */
  onChange: (user: UserInfo, online: boolean) => void;
  /** Milliseconds of silence after which a node is presumed gone. */
  timeoutMs?: number;
  now?: () => number;
}

interface RemoteNode {
  v: number;
  users: Map<UserId, UserInfo>;
  seen: number;
  /** When this node last asked for a snapshot of it. */
  asked: number;
  /** A snapshot in parts, being assembled. */
  parts?: { v: number; got: Set<number>; users: Map<UserId, UserInfo> };
}

const SNAPSHOT_PART = 400;

/** The presence of every user, as this node knows it. */
export class Presence {
  readonly #options: PresenceOptions;
  readonly #now: () => number;
  readonly #local = new Map<UserId, { user: UserInfo; count: number }>();
  readonly #remote = new Map<string, RemoteNode>();
  /** How many nodes (this one included) have each user. */
  readonly #nodesOf = new Map<UserId, { user: UserInfo; nodes: number }>();
  /** Nodes that said they are down, and when: their late envelopes are ignored. */
  readonly #gone = new Map<string, number>();
  #v = 0;
  /** The JSON of the first users online, kept until one of them leaves or the list grows. */
  #listed: { limit: number; json: string; ids: Set<UserId> } | undefined;
  #snapshotDue = false;
  #snapshotTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(options: PresenceOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
  }

  /** A connection of `user` opened on this node. */
  connect(user: UserInfo): void {
    const entry = this.#local.get(user.id);
    if (entry) {
      entry.count++;
      return;
    }
    this.#local.set(user.id, { user, count: 1 });
    this.#options.publish({ k: "presence", user, online: true, v: ++this.#v });
    this.#add(user);
  }

  /** A connection of `user` closed on this node. */
  disconnect(user: UserInfo): void {
    const entry = this.#local.get(user.id);
    if (!entry) return;
    if (--entry.count > 0) return;
    this.#local.delete(user.id);
    this.#options.publish({ k: "presence", user, online: false, v: ++this.#v });
    this.#remove(user.id);
  }

  /** Whether the user has a connection on any node. */
  isOnline(user: UserId): boolean {
    return this.#nodesOf.has(user);
  }

  /** Users online on this node. */
  localUsers(): UserInfo[] {
    return [...this.#local.values()].map((e) => e.user);
  }

  /** Every user online on any node. */
  online(limit = Infinity): UserInfo[] {
    const users: UserInfo[] = [];
    for (const { user } of this.#nodesOf.values()) {
      if (users.length >= limit) break;
      users.push(user);
    }
    return users;
  }

  /**
   * {@linkcode Presence.online} as JSON, with the number of users in it. The list is the first
   * `limit` users online in the order they came, so a storm of sign-ins past the first `limit`
   * leaves it unchanged: each welcome frame reuses the same string instead of building and
   * serializing the same users again.
   */
  onlineJson(limit: number): { json: string; count: number } {
    let listed = this.#listed;
    if (!listed || listed.limit !== limit) {
      const users = this.online(limit);
      listed = this.#listed = {
        limit,
        json: JSON.stringify(users),
        ids: new Set(users.map((u) => u.id)),
      };
    }
    return { json: listed.json, count: listed.ids.size };
  }

  /** How many users are online. */
  get count(): number {
    return this.#nodesOf.size;
  }

  /** How many other nodes this node hears. */
  get nodes(): number {
    return this.#remote.size;
  }

  /** Publishes a heartbeat and forgets silent nodes; call every second or two. */
  tick(): void {
    this.#options.publish({ k: "node", v: this.#v });
    const limit = this.#now() - (this.#options.timeoutMs ?? 7000);
    for (const [node, remote] of this.#remote) {
      if (remote.seen < limit) this.#forget(node);
    }
    const goneLimit = this.#now() - 10 * (this.#options.timeoutMs ?? 7000);
    for (const [node, at] of this.#gone) if (at < goneLimit) this.#gone.delete(node);
  }

  /** Tells the other nodes this one is leaving, and stops. */
  leave(): void {
    clearTimeout(this.#snapshotTimer);
    this.#snapshotDue = true;
    this.#options.publish({ k: "down" });
  }

  /** Applies an envelope from another node. */
  receive(envelope: Envelope): void {
    if (this.#gone.has(envelope.node)) return;
    switch (envelope.k) {
      case "presence": {
        const remote = this.#remoteOf(envelope.node);
        if (envelope.v <= remote.v) return;
        if (envelope.v !== remote.v + 1) {
          this.#ask(envelope.node, remote);
          return;
        }
        remote.v = envelope.v;
        if (envelope.online) {
          if (!remote.users.has(envelope.user.id)) {
            remote.users.set(envelope.user.id, envelope.user);
            this.#add(envelope.user);
          }
        } else if (remote.users.delete(envelope.user.id)) {
          this.#remove(envelope.user.id);
        }
        return;
      }
      case "node": {
        const remote = this.#remoteOf(envelope.node);
        if (envelope.users) {
          // An older snapshot (a late copy from a slower bus) would undo newer changes.
          if (envelope.v >= remote.v) this.#assemble(envelope.node, remote, envelope);
        } else if (envelope.v > remote.v) {
          this.#ask(envelope.node, remote);
        }
        return;
      }
      case "snapshot":
        if (envelope.target === this.#options.node && !this.#snapshotDue) {
          // Several nodes may ask at once: answer them all with one snapshot.
          this.#snapshotDue = true;
          this.#snapshotTimer = setTimeout(() => {
            this.#snapshotDue = false;
            this.#publishSnapshot();
          }, 20);
        }
        return;
      case "down":
        this.#gone.set(envelope.node, this.#now());
        this.#forget(envelope.node);
        return;
    }
  }

  #ask(node: string, remote: RemoteNode): void {
    const now = this.#now();
    if (now - remote.asked < 1000) return;
    remote.asked = now;
    this.#options.publish({ k: "snapshot", target: node });
  }

  #remoteOf(node: string): RemoteNode {
    let remote = this.#remote.get(node);
    if (!remote) {
      // -1: nothing applied yet, so the first delta or heartbeat asks for a snapshot.
      remote = { v: -1, users: new Map(), seen: this.#now(), asked: 0 };
      this.#remote.set(node, remote);
    }
    remote.seen = this.#now();
    return remote;
  }

  #publishSnapshot(): void {
    const users = this.localUsers();
    const parts = Math.max(1, Math.ceil(users.length / SNAPSHOT_PART));
    for (let part = 0; part < parts; part++) {
      this.#options.publish({
        k: "node",
        v: this.#v,
        users: users.slice(part * SNAPSHOT_PART, (part + 1) * SNAPSHOT_PART),
        part,
        parts,
      });
    }
  }

  #assemble(node: string, remote: RemoteNode, e: Extract<Envelope, { k: "node" }>): void {
    const parts = e.parts ?? 1;
    if (!remote.parts || remote.parts.v !== e.v || (e.part ?? 0) === 0) {
      // A part other than the first starts nothing: wait for the next whole snapshot.
      if ((e.part ?? 0) !== 0) return;
      remote.parts = { v: e.v, got: new Set(), users: new Map() };
    }
    for (const user of e.users!) remote.parts.users.set(user.id, user);
    remote.parts.got.add(e.part ?? 0);
    if (remote.parts.got.size < parts) return;
    const next = remote.parts.users;
    remote.parts = undefined;
    for (const [id] of remote.users) if (!next.has(id)) this.#remove(id);
    for (const [id, user] of next) if (!remote.users.has(id)) this.#add(user);
    remote.users = next;
    remote.v = e.v;
    void node;
  }

  #forget(node: string): void {
    const remote = this.#remote.get(node);
    if (!remote) return;
    this.#remote.delete(node);
    for (const id of remote.users.keys()) this.#remove(id);
  }

  #add(user: UserInfo): void {
    const entry = this.#nodesOf.get(user.id);
    if (entry) {
      entry.nodes++;
      return;
    }
    this.#nodesOf.set(user.id, { user, nodes: 1 });
    if (this.#listed && this.#listed.ids.size < this.#listed.limit) this.#listed = undefined;
    this.#options.onChange(user, true);
  }

  #remove(id: UserId): void {
    const entry = this.#nodesOf.get(id);
    if (!entry) return;
    if (--entry.nodes > 0) return;
    this.#nodesOf.delete(id);
    if (this.#listed?.ids.has(id)) this.#listed = undefined;
    this.#options.onChange(entry.user, false);
  }
}
