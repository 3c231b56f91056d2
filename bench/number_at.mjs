/**
 * `numberAt`, in plain JavaScript so that both the Deno load generator (`bench/rawws.ts`) and the
 * Node receiver (`bench/receive_cost_node.mjs`, which Node 20 runs without a TypeScript loader)
 * scan frames with the same code.
 *
 * @module
 */

/**
 * Parses a non-negative decimal number (digits, optional fraction) at `at`; NaN when no digit
 * stands there.
 *
 * @param {Uint8Array} buf The bytes.
 * @param {number} at Where the number starts.
 * @returns {number}
 */
export function numberAt(buf, at) {
  let v = 0;
  let i = at;
  let c = buf[i];
  while (c >= 48 && c <= 57) {
    v = v * 10 + (c - 48);
    c = buf[++i];
  }
  if (c === 46) {
    let scale = 0.1;
    c = buf[++i];
    while (c >= 48 && c <= 57) {
      v += (c - 48) * scale;
      scale /= 10;
      c = buf[++i];
    }
  }
  return i === at ? NaN : v;
}
