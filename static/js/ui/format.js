/** Formatting: times, days, avatars, byte lengths and safe links. */
import { h } from "./dom.js";

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const weekdayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long" });
const shortWeekdayFmt = new Intl.DateTimeFormat(undefined, { weekday: "short" });
const dateFmt = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "short",
  day: "numeric",
});
const shortDateFmt = new Intl.DateTimeFormat(undefined, { month: "numeric", day: "numeric" });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

export function time(ts) {
  return timeFmt.format(ts);
}

export function fullTime(ts) {
  return fullFmt.format(ts);
}

function startOfDay(ts) {
  const d = new Date(ts);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

/** A key equal for timestamps on the same local day. */
export function dayKey(ts) {
  const d = new Date(ts);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

function daysAgo(ts) {
  return Math.round((startOfDay(Date.now()) - startOfDay(ts)) / 86_400_000);
}

/** "Today", "Yesterday", a weekday this week, else a date. */
export function dayLabel(ts) {
  const n = daysAgo(ts);
  if (n === 0) return "Today";
  if (n === 1) return "Yesterday";
  if (n > 1 && n < 7) return weekdayFmt.format(ts);
  return dateFmt.format(ts);
}

/** Compact time for the conversation list. */
export function listTime(ts) {
  if (!ts) return "";
  const n = daysAgo(ts);
  if (n === 0) return timeFmt.format(ts);
  if (n === 1) return "Yesterday";
  if (n > 1 && n < 7) return shortWeekdayFmt.format(ts);
  return shortDateFmt.format(ts);
}

/** One of 8 avatar colour classes, stable per id. */
export function avatarClass(id) {
  let hash = 0;
  for (let i = 0; i < id.length; i++) hash = (hash * 31 + id.charCodeAt(i)) | 0;
  return `av-c${Math.abs(hash) % 8}`;
}

export function initial(name) {
  const first = [...String(name ?? "").trim()][0];
  return first ? first.toUpperCase() : "?";
}

/** An avatar circle with an initial; optionally a presence dot. */
export function avatar(id, name, { presenceUser, kind } = {}) {
  const el = h("span", {
    class: `avatar ${avatarClass(id)}${kind ? ` avatar-${kind}` : ""}`,
    attrs: { "aria-hidden": "true" },
  });
  el.append(document.createTextNode(kind === "lobby" ? "#" : initial(name)));
  if (presenceUser) el.append(presenceDot(presenceUser));
  return el;
}

export function presenceDot(userId) {
  return h("span", { class: "presence-dot", testid: "presence-dot", data: { user: userId } });
}

const encoder = new TextEncoder();
export function byteLength(text) {
  return encoder.encode(text).length;
}

const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;
const TRAILING = /[.,;:!?)\]}'"]+$/;

/** Text with http(s) links made clickable, built from text nodes and <a> elements only. */
export function richText(text) {
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    let raw = match[0];
    const trail = raw.match(TRAILING);
    if (trail) raw = raw.slice(0, raw.length - trail[0].length);
    let url = null;
    try {
      url = new URL(raw);
    } catch {
      url = null;
    }
    if (!url || (url.protocol !== "http:" && url.protocol !== "https:")) continue;
    if (match.index > last) frag.append(document.createTextNode(text.slice(last, match.index)));
    frag.append(h("a", {
      text: raw,
      attrs: { href: url.href, target: "_blank", rel: "noopener noreferrer nofollow" },
    }));
    last = match.index + raw.length;
  }
  if (last < text.length) frag.append(document.createTextNode(text.slice(last)));
  return frag;
}

/** What a notice says: the server's text, else one made from its membership event. */
export function noticeText(m) {
  if (m.text) return m.text;
  const who = m.meta?.user?.name;
  switch (m.meta?.event) {
    case "created":
      return `${who} created the group`;
    case "joined":
      return `${who} joined`;
    case "left":
      return `${who} left`;
    case "removed":
      return `${who} was removed`;
    case "added":
      return `${who} was added`;
    default:
      return m.text;
  }
}
