/**
 * Checking secrets: a comparison whose time does not tell an attacker how much of a guess was
 * right, and the parser of `Authorization: Bearer <token>` headers. Used for the admin and
 * metrics tokens and for password hashes.
 *
 * @module
 */
import { timingSafeEqual } from "node:crypto";

const encoder = new TextEncoder();

/**
 * Whether `given` equals `expected`, in time that depends on the length of `expected` only, so
 * neither the matching prefix of a guess nor the secret's length leaks. Strings are compared as
 * UTF-8 bytes.
 *
 * @example
 * ```ts
 * constantTimeEqual(bearerToken(request.headers.get("authorization")) ?? "", adminToken);
 * ```
 */
export function constantTimeEqual(
  given: string | Uint8Array,
  expected: string | Uint8Array,
): boolean {
  const a = typeof given === "string" ? encoder.encode(given) : given;
  const b = typeof expected === "string" ? encoder.encode(expected) : expected;
  if (a.length !== b.length) {
    // timingSafeEqual refuses buffers of different lengths; spend the time of a real comparison.
    timingSafeEqual(b, b);
    return false;
  }
  return timingSafeEqual(a, b);
}

/**
 * The token of an `Authorization: Bearer <token>` header, or undefined when the header is
 * missing, uses another scheme, or has no token. The scheme is matched without case, as
 * RFC 9110 says.
 *
 * @example
 * ```ts
 * bearerToken("Bearer abc.def"); // "abc.def"
 * bearerToken("Basic dXNlcjpwYXNz"); // undefined
 * ```
 */
export function bearerToken(header: string | null | undefined): string | undefined {
  if (!header || !/^Bearer[ \t]/i.test(header)) return undefined;
  const token = header.slice("Bearer ".length).trim();
  return token ? token : undefined;
}
