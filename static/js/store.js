/**
 * Client state for one signed-in user, and a tiny publish/subscribe so views redraw on change.
 *
 * Messages are kept per conversation, sorted by seq and deduplicated by (conv, seq). `seen`
 * is the last seq received through the live stream (resume, live messages, newest history page):
 * it is what `resume` sends after a reconnect or reload.
 */
import * as storage from "./storage.js";

/** Messages kept for a conversation that is not open (older ones are fetched again on demand). */
const KEEP_CLOSED = 200;

const listeners = new Map();

/** Subscribes to a topic: convs, messages, presence, typing, conn, groups, members, users, open. */
export function on(topic, fn) {
  let set = listeners.get(topic);
  if (!set) listeners.set(topic, set = new Set());
  set.add(fn);
  return () => set.delete(fn);
}

export function emit(topic, arg) {
  for (const fn of listeners.get(topic) ?? []) {
    try {
      fn(arg);
    } catch (error) {
      console.error(`listener of ${topic} failed`, error);
    }
  }
}

export const state = {
  /** @type {{id: string, name: string} | null} */
  me: null,
  /** @type {Map<string, Conv>} */
  convs: new Map(),
  /** Unacknowledged sends by client id, in send order. */
  outbox: new Map(),
  /** conv -> last seq received in order. */
  seen: {},
  /** Users online now, by id. */
  online: new Map(),
  onlineCount: 0,
  limits: { maxMessageBytes: 4000, pageSize: 50 },
  /** The open conversation id. */
  open: null,
  /** Public groups from the last `groups` frame, or null before the first. */
  groups: null,
  /** The last `members` frame: `{ group, members }`. */
  members: null,
  /** The last `users` frame, and who asked for it ("search" or "members"). */
  users: null,
  usersFor: null,
  conn: { state: "offline", retryAt: 0 },
  notify: false,
  /** Whether the welcome frame of the current connection has been handled. */
  welcomed: false,
  /** Whether the chat pane is on screen (false on a phone while the list is shown). */
  chatVisible: true,
};

/**
 * @typedef {object} Conv
 * @property {string} id
 * @property {"lobby"|"group"|"direct"} kind
 * @property {string} title
 * @property {{id: string, name: string}=} peer
 * @property {object=} group
 * @property {number} lastSeq
 * @property {number} readSeq
 * @property {object|null} preview
 * @property {object[]} msgs committed messages sorted by seq
 * @property {Map<number, object>} bySeq
 * @property {boolean|undefined} more whether older messages exist (undefined: not known yet)
 * @property {boolean} loadingOlder
 * @property {Map<string, {name: string, until: number}>} typing
 */

let savedPreviews = {};
let savedRead = {};

export function reset(me) {
  state.me = me;
  state.convs = new Map();
  state.outbox = new Map();
  state.seen = {};
  state.online = new Map();
  state.onlineCount = 0;
  state.open = null;
  state.groups = null;
  state.members = null;
  state.users = null;
  state.welcomed = false;
  savedPreviews = {};
  savedRead = {};
  if (!me) return;
  const profile = storage.loadProfile(me.id);
  state.seen = profile.seen;
  savedRead = profile.read;
  savedPreviews = profile.previews;
  state.notify = profile.notify;
  for (const p of storage.loadOutbox(me.id)) {
    if (p && typeof p.id === "string" && typeof p.conv === "string") {
      state.outbox.set(p.id, { ...p, status: "pending", error: null, sentAt: 0, tries: 0 });
    }
  }
}

let saveTimer = 0;
/** Saves the profile soon (coalesced). */
export function persist() {
  if (saveTimer || !state.me) return;
  saveTimer = setTimeout(flush, 400);
}

/** Saves the profile now (on page hide). */
export function flush() {
  clearTimeout(saveTimer);
  saveTimer = 0;
  if (!state.me) return;
  const read = { ...savedRead };
  const previews = { ...savedPreviews };
  for (const c of state.convs.values()) {
    read[c.id] = c.readSeq;
    if (c.preview) previews[c.id] = c.preview;
  }
  storage.saveProfile(state.me.id, { seen: state.seen, read, previews, notify: state.notify });
}

export function persistOutbox() {
  if (!state.me) return;
  const list = [...state.outbox.values()].map(({ id, conv, text, ts }) => ({ id, conv, text, ts }));
  storage.saveOutbox(state.me.id, list);
}

/** Whether a conversation is the user's own notices line (`d:<me>:<me>`, read-only). */
export function isNotices(convId) {
  const [kind, a, b] = convId.split(":");
  return kind === "d" && a === b;
}

/** The other user of a direct conversation id. */
export function peerIdOf(convId) {
  const [, a, b] = convId.split(":");
  return a === state.me?.id ? b : a;
}

function kindOf(convId) {
  return convId === "lobby" ? "lobby" : convId.startsWith("g:") ? "group" : "direct";
}

function makeConv(id) {
  return {
    id,
    kind: kindOf(id),
    title: id === "lobby" ? "Lobby" : "",
    peer: undefined,
    group: undefined,
    lastSeq: 0,
    readSeq: 0,
    preview: savedPreviews[id] ?? null,
    msgs: [],
    bySeq: new Map(),
    more: undefined,
    loadingOlder: false,
    typing: new Map(),
  };
}

/**
 * Adds or updates a conversation from a ConversationInfo.
 * @param {object} info
 * @param {{ atWelcome?: boolean }} options new conversations seen after the welcome frame start
 *   unread when direct (someone wrote to us), read when a group (joining is not unread history)
 */
export function upsertConv(info, { atWelcome = false } = {}) {
  let c = state.convs.get(info.id);
  const fresh = !c;
  if (!c) state.convs.set(info.id, c = makeConv(info.id));
  c.kind = info.kind ?? c.kind;
  c.title = info.title || c.title || (info.peer?.name ?? "");
  if (info.peer) c.peer = info.peer;
  if (info.group) c.group = info.group;
  if (typeof info.lastSeq === "number") c.lastSeq = Math.max(c.lastSeq, info.lastSeq);
  if (info.last && typeof info.last.seq === "number") setPreview(c, info.last);
  if (fresh) {
    // Read position: the server's if it sends one, else what this browser stored, else a default.
    const known = typeof info.read === "number" ? info.read : undefined;
    const saved = savedRead[c.id];
    if (known !== undefined || saved !== undefined) {
      c.readSeq = Math.max(known ?? 0, saved ?? 0);
    } else {
      c.readSeq = !atWelcome && c.kind === "direct" ? 0 : c.lastSeq;
    }
  } else if (typeof info.read === "number") {
    c.readSeq = Math.max(c.readSeq, info.read);
  }
  if (c.kind === "direct" && !c.peer) c.peer = { id: peerIdOf(c.id), name: c.title };
  return c;
}

/** A conversation we have messages for but no info (a first direct message). */
export function ensureConv(convId, hint) {
  let c = state.convs.get(convId);
  if (c) return c;
  const info = { id: convId, kind: kindOf(convId), title: "", lastSeq: 0 };
  if (isNotices(convId)) {
    info.peer = { id: "system", name: "System" };
    info.title = "Notices";
  } else if (info.kind === "direct") {
    const peer = peerIdOf(convId);
    const name = hint?.from === peer ? hint.name : state.online.get(peer)?.name ?? "Direct chat";
    info.peer = { id: peer, name };
    info.title = name;
  }
  c = upsertConv(info);
  return c;
}

export function removeConv(convId) {
  state.convs.delete(convId);
  delete state.seen[convId];
  delete savedRead[convId];
  delete savedPreviews[convId];
  for (const [id, p] of state.outbox) if (p.conv === convId) state.outbox.delete(id);
  persist();
  persistOutbox();
}

function setPreview(c, m) {
  if (c.preview && c.preview.seq > m.seq) return;
  c.preview = {
    seq: m.seq,
    from: m.from,
    name: m.name,
    text: String(m.text ?? "").slice(0, 140),
    ts: m.ts,
    kind: m.kind,
    meta: m.meta,
  };
}

/** Records that the stream of `conv` reached `seq`. */
export function noteSeen(convId, seq) {
  if (!(seq <= (state.seen[convId] ?? -1))) {
    state.seen[convId] = seq;
    persist();
  }
}

/**
 * Inserts a committed message. Returns false for a duplicate (same conv and seq).
 * Also settles the matching outbox entry of our own send.
 */
export function addMessage(m) {
  const c = ensureConv(m.conv, m);
  if (c.bySeq.has(m.seq)) return false;
  const msgs = c.msgs;
  if (!msgs.length || msgs[msgs.length - 1].seq < m.seq) msgs.push(m);
  else {
    let lo = 0, hi = msgs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (msgs[mid].seq < m.seq) lo = mid + 1;
      else hi = mid;
    }
    msgs.splice(lo, 0, m);
  }
  c.bySeq.set(m.seq, m);
  if (m.seq > c.lastSeq) c.lastSeq = m.seq;
  setPreview(c, m);
  if (state.me && m.from === state.me.id) {
    const p = state.outbox.get(m.id);
    if (p && p.conv === m.conv) {
      state.outbox.delete(m.id);
      persistOutbox();
    }
    // Our own message (maybe from another tab) is not unread.
    if (c.readSeq === m.seq - 1) c.readSeq = m.seq;
  }
  c.typing.delete(m.from);
  persist();
  return true;
}

/** Drops every message of a conversation (the server asked for a reload). */
export function clearMessages(convId) {
  const c = state.convs.get(convId);
  if (!c) return;
  c.msgs = [];
  c.bySeq = new Map();
  c.more = undefined;
  c.loadingOlder = false;
}

/** Keeps only the newest `keep` messages of a conversation (older ones can be fetched again). */
export function trim(convId, keep = KEEP_CLOSED) {
  const c = state.convs.get(convId);
  if (!c || c.msgs.length <= keep) return;
  for (const m of c.msgs.splice(0, c.msgs.length - keep)) c.bySeq.delete(m.seq);
  c.more = true;
}

export function unreadOf(c) {
  return Math.max(0, c.lastSeq - c.readSeq);
}

export function totalUnread() {
  let n = 0;
  for (const c of state.convs.values()) n += unreadOf(c);
  return n;
}

/** Advances the read position; returns whether it moved. */
export function setRead(convId, seq) {
  const c = state.convs.get(convId);
  if (!c || seq <= c.readSeq) return false;
  c.readSeq = seq;
  persist();
  return true;
}

/** Conversations for the sidebar: the lobby first, then by latest activity. */
export function sortedConvs() {
  return [...state.convs.values()].sort((a, b) => {
    if (a.kind === "lobby") return -1;
    if (b.kind === "lobby") return 1;
    const ta = a.preview?.ts ?? a.group?.createdAt ?? 0;
    const tb = b.preview?.ts ?? b.group?.createdAt ?? 0;
    return tb - ta || titleOf(a).localeCompare(titleOf(b));
  });
}

export function titleOf(c) {
  if (c.kind === "lobby") return c.title || "Lobby";
  if (c.kind === "direct") return c.title || c.peer?.name || "Direct chat";
  return c.group?.name || c.title || "Group";
}

/** Pending sends of a conversation, oldest first. */
export function pendingOf(convId) {
  const list = [];
  for (const p of state.outbox.values()) if (p.conv === convId) list.push(p);
  return list;
}
