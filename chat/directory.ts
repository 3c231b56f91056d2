/**
 * Who exists and who belongs where: users, their names, groups and their members, direct
 * conversations, blocks and read positions, in Deno KV. Every index is written in the same
 * atomic commit as the entry it indexes.
 *
 * @module
 */
import {
  blockKey,
  groupKey,
  headKey,
  memberKey,
  readKey,
  userDirectKey,
  userGroupKey,
  userKey,
  userNameKey,
} from "./keys.ts";
import { getMany, retryLocked } from "./message_log.ts";
import type { ConversationId, GroupInfo, UserId, UserInfo } from "./protocol.ts";
import { ChatError, LOBBY } from "./protocol.ts";

/** A user as stored. */
export interface UserRecord {
  id: UserId;
  name: string;
  /** The comparison key of the name (see `canonicalName`). */
  canonical: string;
  createdAt: number;
  /** Present for registered users; guests sign in by name only. */
  passwordHash?: string;
}

/** A group as stored. */
export type GroupRecord = GroupInfo;

/** A random id of `length` characters from [a-z0-9]. */
export function randomId(length = 12): string {
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  let id = "";
  for (const b of bytes) id += alphabet[b % 36];
  return id;
}

/** Users, groups, memberships, direct conversations, blocks and read positions. */
export class Directory {
  readonly #kv: Deno.Kv;
  /** Direct conversations known to exist, so a busy DM does not write its index again. */
  readonly #directs = new Set<string>();

  constructor(kv: Deno.Kv) {
    this.#kv = kv;
  }

  /** Values of many keys, 10 per read. */
  async #getMany<T>(keys: Deno.KvKey[]): Promise<(T | null)[]> {
    return (await getMany<T>(this.#kv, keys)).map((e) => e.value);
  }

  async #list<T>(prefix: Deno.KvKey, limit: number): Promise<Deno.KvEntry<T>[]> {
    return await retryLocked(async () => {
      const out: Deno.KvEntry<T>[] = [];
      for await (const e of this.#kv.list<T>({ prefix }, { limit })) out.push(e);
      return out;
    });
  }

  // ---- users ------------------------------------------------------------------------------

  /**
   * Creates a user with a name no one else has.
   *
   * @throws {ChatError} `conflict` when the name is taken
   */
  async createUser(
    name: string,
    canonical: string,
    passwordHash?: string,
  ): Promise<UserRecord> {
    const user: UserRecord = { id: randomId(), name, canonical, createdAt: Date.now() };
    if (passwordHash) user.passwordHash = passwordHash;
    // A newcomer has read the lobby so far: its backlog is history, not unread messages.
    const lobby = await retryLocked(() => this.#kv.get<number>(headKey(LOBBY)));
    const result = await retryLocked(() =>
      this.#kv.atomic()
        .check({ key: userNameKey(canonical), versionstamp: null })
        .set(userKey(user.id), user)
        .set(userNameKey(canonical), user.id)
        .set(readKey(user.id, LOBBY), lobby.value ?? 0)
        .commit()
    );
    if (!result.ok) throw new ChatError("conflict", `Cannot use the name "${name}": it is taken`);
    return user;
  }

  /** Replaces a user's password hash (registering a guest, or changing the password). */
  async setPassword(id: UserId, passwordHash: string): Promise<void> {
    const entry = await retryLocked(() => this.#kv.get<UserRecord>(userKey(id)));
    if (!entry.value) throw new ChatError("not_found", "Cannot set the password: no such user");
    await retryLocked(() =>
      this.#kv.set(userKey(id), { ...entry.value!, passwordHash } satisfies UserRecord)
    );
  }

  /** A user by id, or null. */
  async user(id: UserId): Promise<UserRecord | null> {
    return (await retryLocked(() => this.#kv.get<UserRecord>(userKey(id)))).value;
  }

  /** Users by id; unknown ids are left out. */
  async users(ids: UserId[]): Promise<UserRecord[]> {
    return (await this.#getMany<UserRecord>(ids.map(userKey))).filter((u): u is UserRecord =>
      u !== null
    );
  }

  /** A user by canonical name, or null. */
  async userByName(canonical: string): Promise<UserRecord | null> {
    const id = (await retryLocked(() => this.#kv.get<UserId>(userNameKey(canonical)))).value;
    return id ? await this.user(id) : null;
  }

  /** Users whose canonical name starts with `prefix`, at most `limit`. */
  async findUsers(prefix: string, limit = 20): Promise<UserInfo[]> {
    const ids: UserId[] = [];
    await retryLocked(async () => {
      ids.length = 0;
      const iter = this.#kv.list<UserId>({
        start: userNameKey(prefix),
        end: userNameKey(prefix + "\uffff"),
      }, { limit });
      for await (const e of iter) ids.push(e.value);
    });
    return (await this.users(ids)).map(({ id, name }) => ({ id, name }));
  }

  /** A free name: `base` if free, else `base` with a number. */
  async freeName(base: string, canonical: (name: string) => string): Promise<string> {
    for (let i = 0; i < 50; i++) {
      const name = i === 0 ? base : `${base}-${1000 + Math.floor(Math.random() * 9000)}`;
      const taken = await retryLocked(() => this.#kv.get(userNameKey(canonical(name))));
      if (!taken.value) return name;
    }
    return `${base}-${randomId(6)}`;
  }

  // ---- groups -----------------------------------------------------------------------------

  /** Creates a group with its owner as the first member. */
  async createGroup(owner: UserId, name: string, isPublic: boolean): Promise<GroupRecord> {
    const group: GroupRecord = {
      id: randomId(10),
      name,
      owner,
      public: isPublic,
      createdAt: Date.now(),
    };
    const joined = { joinedAt: group.createdAt };
    await retryLocked(() =>
      this.#kv.atomic()
        .check({ key: groupKey(group.id), versionstamp: null })
        .set(groupKey(group.id), group)
        .set(memberKey(group.id, owner), joined)
        .set(userGroupKey(owner, group.id), joined)
        .commit()
    );
    return group;
  }

  /** A group by id, or null. */
  async group(id: string): Promise<GroupRecord | null> {
    return (await retryLocked(() => this.#kv.get<GroupRecord>(groupKey(id)))).value;
  }

  /** Whether `user` is a member of group `id`. */
  async isMember(id: string, user: UserId): Promise<boolean> {
    return (await retryLocked(() => this.#kv.get(memberKey(id, user)))).value !== null;
  }

  /** Adds a member; false when already one. */
  async addMember(id: string, user: UserId): Promise<boolean> {
    const joined = { joinedAt: Date.now() };
    const result = await retryLocked(() =>
      this.#kv.atomic()
        .check({ key: memberKey(id, user), versionstamp: null })
        .set(memberKey(id, user), joined)
        .set(userGroupKey(user, id), joined)
        .commit()
    );
    return result.ok;
  }

  /** Removes a member; false when not one. Ownership passes on when the owner leaves. */
  async removeMember(id: string, user: UserId): Promise<boolean> {
    const entry = await retryLocked(() => this.#kv.get(memberKey(id, user)));
    if (!entry.value) return false;
    const result = await retryLocked(() =>
      this.#kv.atomic().check(entry).delete(memberKey(id, user)).delete(userGroupKey(user, id))
        .commit()
    );
    if (!result.ok) return false;
    const group = await this.group(id);
    if (group && group.owner === user) {
      const [next] = await this.#list<{ joinedAt: number }>(["member", id], 1);
      if (next) {
        await retryLocked(() => this.#kv.set(groupKey(id), { ...group, owner: next.key[2] }));
      }
    }
    return true;
  }

  /** Member ids of a group, at most `limit`. */
  async memberIds(id: string, limit = 5000): Promise<UserId[]> {
    return (await this.#list(["member", id], limit)).map((e) => e.key[2] as UserId);
  }

  /** Groups of a user. */
  async groupsOf(user: UserId, limit = 5000): Promise<GroupRecord[]> {
    return await this.groups(await this.groupIdsOf(user, limit));
  }

  /** Ids of a user's groups, at most `limit`. */
  async groupIdsOf(user: UserId, limit = 5000): Promise<string[]> {
    return (await this.#list(["user_group", user], limit)).map((e) => e.key[2] as string);
  }

  /** Groups by id; unknown (deleted) ones are left out. */
  async groups(ids: string[]): Promise<GroupRecord[]> {
    return (await this.#getMany<GroupRecord>(ids.map(groupKey))).filter((g): g is GroupRecord =>
      g !== null
    );
  }

  /** How many groups a user is in (counted up to `limit`). */
  async groupCount(user: UserId, limit: number): Promise<number> {
    return (await this.#list(["user_group", user], limit)).length;
  }

  /** Public groups, newest first, at most `limit`. */
  async publicGroups(limit = 200): Promise<GroupRecord[]> {
    const out: GroupRecord[] = [];
    await retryLocked(async () => {
      out.length = 0;
      for await (const e of this.#kv.list<GroupRecord>({ prefix: ["group"] })) {
        if (e.value.public) out.push(e.value);
      }
    });
    return out.sort((a, b) => b.createdAt - a.createdAt).slice(0, limit);
  }

  /** Member counts of groups. */
  async memberCounts(ids: string[]): Promise<Map<string, number>> {
    const counts = await Promise.all(ids.map((id) => this.#list(["member", id], 10_000)));
    return new Map(ids.map((id, i) => [id, counts[i].length]));
  }

  // ---- direct conversations -----------------------------------------------------------------

  /** Records a direct conversation in both users' lists (once). */
  async openDirect(a: UserId, b: UserId): Promise<void> {
    const key = a < b ? `${a}:${b}` : `${b}:${a}`;
    if (this.#directs.has(key)) return;
    const since = { since: Date.now() };
    await retryLocked(() =>
      this.#kv.atomic().set(userDirectKey(a, b), since).set(userDirectKey(b, a), since).commit()
    );
    if (this.#directs.size > 100_000) this.#directs.clear();
    this.#directs.add(key);
  }

  /** The peers of a user's direct conversations. */
  async directPeers(user: UserId, limit = 5000): Promise<UserId[]> {
    return (await this.#list(["user_direct", user], limit)).map((e) => e.key[2] as UserId);
  }

  // ---- blocks and read positions ------------------------------------------------------------

  /** Blocks or unblocks `other` for `user`. */
  async setBlocked(user: UserId, other: UserId, blocked: boolean): Promise<void> {
    await retryLocked(async () => {
      if (blocked) await this.#kv.set(blockKey(user, other), true);
      else await this.#kv.delete(blockKey(user, other));
    });
  }

  /** Users `user` blocks. */
  async blocked(user: UserId): Promise<UserId[]> {
    return (await this.#list(["block", user], 10_000)).map((e) => e.key[2] as UserId);
  }

  /** Moves a read position forward (never back); returns the position now stored. */
  async setRead(user: UserId, conv: ConversationId, seq: number): Promise<number> {
    for (;;) {
      const entry = await retryLocked(() => this.#kv.get<number>(readKey(user, conv)));
      if ((entry.value ?? 0) >= seq) return entry.value ?? 0;
      const result = await retryLocked(() =>
        this.#kv.atomic().check(entry).set(readKey(user, conv), seq).commit()
      );
      if (result.ok) return seq;
    }
  }

  /** Read positions of a user in several conversations. */
  async readPositions(user: UserId, convs: ConversationId[]): Promise<Map<ConversationId, number>> {
    const values = await this.#getMany<number>(convs.map((c) => readKey(user, c)));
    return new Map(convs.map((c, i) => [c, values[i] ?? 0]));
  }
}
