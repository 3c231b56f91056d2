/**
 * Accounts and sessions: sign-in (guest or password), registration, signed session tokens
 * kept in KV so they can be revoked, single-use socket tickets, and scrypt password hashes.
 *
 * A token is `<session id>.<HMAC-SHA256 of the id>`: a forged one fails the signature check
 * before any KV read; a real one must also still have its session record (sign-out and password
 * changes delete it) and not be expired. The session id is `<user id>-<random>`, so a socket's
 * handshake reads the session and its user in one `getMany` (ids made before that, without the
 * user, still work with two reads).
 *
 * @module
 */
import { createHmac, scrypt } from "node:crypto";
import type { Directory, UserRecord } from "./directory.ts";
import { randomId } from "./directory.ts";
import { SECRET_KEY, sessionKey, ticketKey, userKey, userSessionKey } from "./keys.ts";
import { getMany, retryLocked } from "./message_log.ts";
import { checkUserName } from "./names.ts";
import { ChatError } from "./protocol.ts";
import type { UserId } from "./protocol.ts";
import { KeyedLimiter } from "./rate_limit.ts";
import { constantTimeEqual } from "./secrets.ts";

/** A session as stored. */
export interface SessionRecord {
  user: UserId;
  createdAt: number;
  expires: number;
}

/** What a successful sign-in gives. */
export interface SignedIn {
  user: UserRecord;
  token: string;
  session: string;
  expiresAt: number;
}

/** Options of {@linkcode Auth}. */
export interface AuthOptions {
  /** The configured secret, or undefined to generate one and keep it in KV. */
  secret?: string;
  sessionMs: number;
  allowGuests: boolean;
  maxNameLength: number;
  signInPerMinute: number;
}

const SCRYPT = { N: 16384, r: 8, p: 1, keylen: 32 };
/** How long a socket ticket is valid, in milliseconds. */
export const TICKET_MS = 30_000;
const MIN_PASSWORD = 8;
const MAX_PASSWORD = 256;

function scryptAsync(password: string, salt: Uint8Array, n: number): Promise<Uint8Array> {
  return new Promise((resolve, reject) =>
    scrypt(
      password,
      salt,
      SCRYPT.keylen,
      { N: n, r: SCRYPT.r, p: SCRYPT.p, maxmem: 64 * 1024 * 1024 },
      (error, key) => error ? reject(error) : resolve(new Uint8Array(key)),
    )
  );
}

const b64 = (bytes: Uint8Array) =>
  btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
const unb64 = (text: string): Uint8Array<ArrayBuffer> =>
  Uint8Array.from(atob(text.replaceAll("-", "+").replaceAll("_", "/")), (c) => c.charCodeAt(0));

/** Hashes a password with scrypt and a random salt: `scrypt$N$salt$hash`. */
export async function hashPassword(password: string): Promise<string> {
  const salt = crypto.getRandomValues(new Uint8Array(16));
  const key = await scryptAsync(password, salt, SCRYPT.N);
  return `scrypt$${SCRYPT.N}$${b64(salt)}$${b64(key)}`;
}

/** Whether `password` matches a hash made by {@linkcode hashPassword}. */
export async function verifyPassword(password: string, hash: string): Promise<boolean> {
  const [scheme, n, salt, expected] = hash.split("$");
  const cost = Number(n);
  if (scheme !== "scrypt" || !salt || !expected) return false;
  // A power of two in a sane range: a corrupt hash must not make scrypt allocate gigabytes.
  if (!Number.isInteger(cost) || cost < 1024 || cost > 1 << 20 || (cost & (cost - 1)) !== 0) {
    return false;
  }
  const key = await scryptAsync(password, unb64(salt), cost);
  return constantTimeEqual(key, unb64(expected));
}

function checkPassword(password: unknown): string {
  if (typeof password !== "string") {
    throw new ChatError(
      "bad_frame",
      `Expected the password to be a string, got ${typeof password}`,
    );
  }
  if (password.length < MIN_PASSWORD || password.length > MAX_PASSWORD) {
    throw new ChatError(
      "bad_frame",
      `Expected a password of ${MIN_PASSWORD} to ${MAX_PASSWORD} characters, got ${password.length}`,
    );
  }
  return password;
}

/** Sign-in, registration, sessions and tickets. */
export class Auth {
  readonly #kv: Deno.Kv;
  readonly #directory: Directory;
  readonly #options: AuthOptions;
  readonly #byName: KeyedLimiter;
  readonly #byAddress: KeyedLimiter;
  #key: Promise<Uint8Array> | null = null;

  constructor(kv: Deno.Kv, directory: Directory, options: AuthOptions) {
    this.#kv = kv;
    this.#directory = directory;
    this.#options = options;
    this.#byName = new KeyedLimiter(options.signInPerMinute, options.signInPerMinute / 60);
    this.#byAddress = new KeyedLimiter(options.signInPerMinute * 3, options.signInPerMinute / 20);
  }

  /** Whether guests may sign in by name alone. */
  get allowGuests(): boolean {
    return this.#options.allowGuests;
  }

  /** The HMAC key, from configuration or generated once and kept in KV. */
  #hmac(): Promise<Uint8Array> {
    this.#key ??= (async () => {
      let secret = this.#options.secret;
      if (!secret) {
        const fresh = b64(crypto.getRandomValues(new Uint8Array(32)));
        await retryLocked(() =>
          this.#kv.atomic().check({ key: SECRET_KEY, versionstamp: null }).set(SECRET_KEY, fresh)
            .commit()
        );
        secret = (await retryLocked(() => this.#kv.get<string>(SECRET_KEY))).value!;
      }
      return new TextEncoder().encode(secret);
    })();
    return this.#key;
  }

  /** Counts a sign-in attempt against the name and the address. */
  #limit(canonical: string, address: string): void {
    for (const take of [this.#byName.take(canonical), this.#byAddress.take(address)]) {
      if (!take.ok) {
        throw new ChatError(
          "rate_limited",
          `Too many sign-in attempts: retry in ${Math.ceil(take.retryAfterMs / 1000)} s`,
          { retryAfterMs: take.retryAfterMs },
        );
      }
    }
  }

  /**
   * Signs in: with a password, a registered user; without, a guest, whose name must be free
   * (a guest never takes a registered name, nor another guest's).
   *
   * @throws {ChatError} `bad_frame`, `forbidden`, `conflict` or `rate_limited`
   */
  async signIn(name: unknown, password: unknown, address: string): Promise<SignedIn> {
    const checked = checkUserName(name, this.#options.maxNameLength);
    this.#limit(checked.canonical, address);
    if (password === undefined || password === null || password === "") {
      if (!this.#options.allowGuests) {
        throw new ChatError("forbidden", "Cannot sign in as a guest: guests are disabled");
      }
      const user = await this.#directory.createUser(checked.display, checked.canonical);
      return await this.#startSession(user);
    }
    const secret = checkPassword(password);
    const user = await this.#directory.userByName(checked.canonical);
    // The same answer and about the same time whether the name exists or not.
    const ok = user?.passwordHash
      ? await verifyPassword(secret, user.passwordHash)
      : (await hashPassword(secret), false);
    if (!user || !ok) throw new ChatError("forbidden", "Cannot sign in: wrong name or password");
    return await this.#startSession(user);
  }

  /**
   * Registers a name with a password.
   *
   * @throws {ChatError} `bad_frame`, `conflict` or `rate_limited`
   */
  async register(name: unknown, password: unknown, address: string): Promise<SignedIn> {
    const checked = checkUserName(name, this.#options.maxNameLength);
    this.#limit(checked.canonical, address);
    const hash = await hashPassword(checkPassword(password));
    const user = await this.#directory.createUser(checked.display, checked.canonical, hash);
    return await this.#startSession(user);
  }

  /**
   * Changes a password (or sets one, registering a guest) and revokes every session of the
   * user; returns a new session. Attempts count against the sign-in limits.
   *
   * @throws {ChatError} `forbidden` (wrong current password), `bad_frame` or `rate_limited`
   */
  async changePassword(
    user: UserRecord,
    current: unknown,
    next: unknown,
    address: string,
  ): Promise<SignedIn> {
    this.#limit(user.canonical, address);
    if (user.passwordHash) {
      if (typeof current !== "string" || !(await verifyPassword(current, user.passwordHash))) {
        throw new ChatError("forbidden", "Cannot change the password: the current one is wrong");
      }
    }
    const hash = await hashPassword(checkPassword(next));
    await this.#directory.setPassword(user.id, hash);
    await this.revokeAll(user.id);
    return await this.#startSession({ ...user, passwordHash: hash });
  }

  async #startSession(user: UserRecord): Promise<SignedIn> {
    // The user's id (letters and digits) first: `verify` reads the session and the user at once.
    const session = `${user.id}-${randomId(24)}`;
    const now = Date.now();
    const record: SessionRecord = {
      user: user.id,
      createdAt: now,
      expires: now + this.#options.sessionMs,
    };
    await retryLocked(() =>
      this.#kv.atomic()
        .set(sessionKey(session), record, { expireIn: this.#options.sessionMs })
        .set(userSessionKey(user.id, session), true, { expireIn: this.#options.sessionMs })
        .commit()
    );
    const signature = await this.#sign(session);
    return {
      user,
      session,
      token: `${session}.${b64(signature)}`,
      expiresAt: record.expires,
    };
  }

  /**
   * HMAC-SHA256 of a session id. `node:crypto` computes it synchronously, at about half the CPU
   * of WebCrypto's `verify` here (8–11 µs against 21–23 µs, one per socket handshake).
   */
  async #sign(session: string): Promise<Uint8Array> {
    return new Uint8Array(createHmac("sha256", await this.#hmac()).update(session).digest());
  }

  /** The session id of a token whose signature is right, or null. */
  async #sessionOf(token: string): Promise<string | null> {
    const [session, signature, extra] = token.split(".");
    if (!session || !signature || extra !== undefined || session.length > 64) return null;
    let bytes: Uint8Array<ArrayBuffer>;
    try {
      bytes = unb64(signature);
    } catch {
      return null;
    }
    return constantTimeEqual(bytes, await this.#sign(session)) ? session : null;
  }

  /**
   * The user of a valid, unexpired, unrevoked token, or null. `ahead` hears the user id a
   * validly signed token names, before the session is read: reads that depend only on it can
   * start at once, to be used only if this resolves to that user.
   */
  async verify(
    token: string,
    ahead?: (user: UserId) => void,
  ): Promise<{ user: UserRecord; session: string } | null> {
    const session = await this.#sessionOf(token);
    if (!session) return null;
    const dash = session.indexOf("-");
    if (dash > 0) {
      const named = session.slice(0, dash);
      ahead?.(named);
      return await this.#sessionOfUser(session, named);
    }
    // An id made before ids named their user: the record says whose it is.
    const record = (await retryLocked(() => this.#kv.get<SessionRecord>(sessionKey(session))))
      .value;
    if (!record || record.expires <= Date.now()) return null;
    const user = await this.#directory.user(record.user);
    return user ? { user, session } : null;
  }

  /**
   * `session` with its user `id`, read at once: null unless the record exists, is unexpired and
   * belongs to that user.
   */
  async #sessionOfUser(
    session: string,
    id: UserId,
  ): Promise<{ user: UserRecord; session: string } | null> {
    const [s, u] = await getMany<SessionRecord | UserRecord>(this.#kv, [
      sessionKey(session),
      userKey(id),
    ]);
    const record = s.value as SessionRecord | null;
    const user = u.value as UserRecord | null;
    if (!record || record.expires <= Date.now() || record.user !== id) return null;
    return user ? { user, session } : null;
  }

  /** Ends one session. */
  async revoke(session: string): Promise<void> {
    const record = (await retryLocked(() => this.#kv.get<SessionRecord>(sessionKey(session))))
      .value;
    const atomic = this.#kv.atomic().delete(sessionKey(session));
    if (record) atomic.delete(userSessionKey(record.user, session));
    await retryLocked(() => atomic.commit());
  }

  /** Ends every session of a user. */
  async revokeAll(user: UserId): Promise<void> {
    const sessions: string[] = [];
    for await (const e of this.#kv.list({ prefix: ["user_session", user] })) {
      sessions.push(e.key[2] as string);
    }
    for (const session of sessions) await this.revoke(session);
  }

  /** A single-use ticket for `/ws?ticket=`, valid for 30 seconds. */
  async ticket(user: UserId, session: string): Promise<string> {
    const id = randomId(32);
    await retryLocked(() =>
      this.#kv.set(ticketKey(id), { user, session, expires: Date.now() + TICKET_MS }, {
        expireIn: TICKET_MS,
      })
    );
    return id;
  }

  /** The user of a ticket, consuming it; null when unknown, used or expired. */
  async redeem(ticket: string): Promise<{ user: UserRecord; session: string } | null> {
    if (!/^[a-z0-9]{32}$/.test(ticket)) return null;
    const entry = await retryLocked(() =>
      this.#kv.get<{ user: UserId; session: string; expires: number }>(ticketKey(ticket))
    );
    if (!entry.value || entry.value.expires <= Date.now()) return null;
    const used = await retryLocked(() =>
      this.#kv.atomic().check(entry).delete(ticketKey(ticket)).commit()
    );
    if (!used.ok) return null;
    return await this.#sessionOfUser(entry.value.session, entry.value.user);
  }
}
