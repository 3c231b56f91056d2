/**
 * Token buckets: a burst, then a steady refill. Used per connection, per user, per sign-in
 * name and address, and per group creator. Buckets live in the memory of one node; see
 * docs/security.md for what that means with several nodes.
 *
 * @module
 */

/** The outcome of taking from a bucket. */
export interface Take {
  ok: boolean;
  /** Milliseconds until a token is available, when not ok. */
  retryAfterMs: number;
}

/** A token bucket. */
export class TokenBucket {
  readonly #burst: number;
  readonly #perMs: number;
  #tokens: number;
  #at: number;

  /** A full bucket of `burst` tokens, refilled at `perSecond`. */
  constructor(burst: number, perSecond: number, now = Date.now()) {
    this.#burst = burst;
    this.#perMs = perSecond / 1000;
    this.#tokens = burst;
    this.#at = now;
  }

  /** Takes one token if there is one. */
  take(now = Date.now()): Take {
    this.#tokens = Math.min(this.#burst, this.#tokens + (now - this.#at) * this.#perMs);
    this.#at = now;
    if (this.#tokens >= 1) {
      this.#tokens -= 1;
      return { ok: true, retryAfterMs: 0 };
    }
    return { ok: false, retryAfterMs: Math.ceil((1 - this.#tokens) / this.#perMs) };
  }

  /** Whether the bucket is full (and so can be forgotten). */
  full(now = Date.now()): boolean {
    return this.#tokens + (now - this.#at) * this.#perMs >= this.#burst;
  }
}

/** One bucket per key (a user, a name, an address), forgetting full ones now and then. */
export class KeyedLimiter {
  readonly #buckets = new Map<string, TokenBucket>();
  readonly #burst: number;
  readonly #perSecond: number;
  #sweep = 0;

  constructor(burst: number, perSecond: number) {
    this.#burst = burst;
    this.#perSecond = perSecond;
  }

  /** Takes one token from the bucket of `key`. */
  take(key: string, now = Date.now()): Take {
    let bucket = this.#buckets.get(key);
    if (!bucket) {
      this.#buckets.set(key, bucket = new TokenBucket(this.#burst, this.#perSecond, now));
    }
    if (++this.#sweep >= 10_000) {
      this.#sweep = 0;
      for (const [k, b] of this.#buckets) if (b.full(now)) this.#buckets.delete(k);
    }
    return bucket.take(now);
  }
}
