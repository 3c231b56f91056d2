/**
 * User and group names: how they are cleaned, checked and compared. Two names are the same name
 * when they match after trimming, NFKC normalization and case folding, so "Ann", "ann" and the
 * full-width "ＡＮＮ" are one name.
 *
 * @module
 */
import { ChatError } from "./protocol.ts";

/** A checked name: how it is shown and the key it is compared by. */
export interface CheckedName {
  display: string;
  canonical: string;
}

// Letters, marks, digits, and inner spaces, dots, dashes and underscores.
const NAME_PATTERN = /^[\p{L}\p{M}\p{N}](?:[\p{L}\p{M}\p{N} ._-]*[\p{L}\p{M}\p{N}_])?$/u;
const CONTROL = /[\p{Cc}\p{Cf}\p{Co}\p{Cn}\u2028\u2029]/u;

/**
 * The comparison key of a name: NFKC, trimmed, then case-folded. Upper-casing before
 * lower-casing folds what `toLowerCase` alone leaves apart ("ß" and "SS", "ﬀ" and "FF"), and the
 * final sigma is folded to "σ"; a last NFKC keeps the key normalized (NFKC_Casefold, nearly).
 */
export function canonicalName(name: string): string {
  return name.normalize("NFKC").trim().toUpperCase().toLowerCase().replaceAll("ς", "σ")
    .normalize("NFKC");
}

/**
 * Checks a user name: 2 to `maxLength` characters after trimming and NFKC normalization;
 * letters, digits, and spaces, `.`, `-` or `_` inside; no two spaces in a row.
 *
 * @throws {ChatError} `bad_frame` saying which rule failed
 */
export function checkUserName(raw: unknown, maxLength: number): CheckedName {
  if (typeof raw !== "string") {
    throw new ChatError("bad_frame", `Expected the name to be a string, got ${typeof raw}`);
  }
  const display = raw.normalize("NFKC").trim();
  const length = [...display].length;
  if (length < 2 || length > maxLength) {
    throw new ChatError(
      "bad_frame",
      `Expected a name of 2 to ${maxLength} characters, got ${length}`,
    );
  }
  if (CONTROL.test(display) || !NAME_PATTERN.test(display) || display.includes("  ")) {
    throw new ChatError(
      "bad_frame",
      "Expected a name of letters and digits, with single spaces, '.', '-' or '_' inside",
    );
  }
  return { display, canonical: canonicalName(display) };
}

/**
 * Checks a group name: 1 to `maxLength` characters after trimming, no control characters.
 *
 * @throws {ChatError} `bad_frame` saying which rule failed
 */
export function checkGroupName(raw: string, maxLength: number): string {
  const name = raw.normalize("NFKC").trim().replace(/\s+/g, " ");
  const length = [...name].length;
  if (length < 1 || length > maxLength) {
    throw new ChatError(
      "bad_frame",
      `Expected a group name of 1 to ${maxLength} characters, got ${length}`,
    );
  }
  if (CONTROL.test(name)) {
    throw new ChatError("bad_frame", "Expected a group name without control characters");
  }
  return name;
}

/**
 * Checks message text: not blank, at most `maxBytes` UTF-8 bytes, no control characters other
 * than newline and tab.
 *
 * @throws {ChatError} `too_large` or `bad_frame`
 */
export function checkText(text: string, maxBytes: number, utf8Length: (s: string) => number) {
  const bytes = utf8Length(text);
  if (bytes > maxBytes) {
    throw new ChatError(
      "too_large",
      `Expected a message of at most ${maxBytes} UTF-8 bytes, got ${bytes}`,
    );
  }
  if (text.trim() === "") throw new ChatError("bad_frame", "Expected a message that is not blank");
  // deno-lint-ignore no-control-regex
  if (/[\u0000-\u0008\u000b-\u001f\u007f]/.test(text) || /[\ud800-\udfff]/.test(stripPairs(text))) {
    throw new ChatError(
      "bad_frame",
      "Expected text without control characters (newline and tab are fine) or lone surrogates",
    );
  }
}

function stripPairs(text: string): string {
  return text.replace(/[\ud800-\udbff][\udc00-\udfff]/g, "");
}
