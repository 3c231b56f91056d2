/**
 * The chat controller: turns server frames into state changes and user intents into frames.
 * Views call the exported actions and redraw on store events; they never touch the socket.
 */
import * as notify from "./notify.js";
import { Connection } from "./socket.js";
import * as storage from "./storage.js";
import * as store from "./store.js";
import { emit, state } from "./store.js";
import { toast } from "./ui/dom.js";

/** Resend an unacknowledged message (same id, the server stores it once) after this long. */
const RESEND_AFTER_MS = 15_000;
const TYPING_EVERY_MS = 2_000;
const TYPING_SHOWN_MS = 3_000;
const HISTORY_TIMEOUT_MS = 10_000;
const MAX_RATE_RETRIES = 5;
const ONLINE_REFRESH_MS = 30_000;

let conn = null;
let ticker = 0;
let welcomedOnce = false;
/** Conversations whose resume replay has not finished: their messages are not "new". */
let resuming = new Set();
const pendingOpen = { dmUser: null, groupName: null, joinGroup: null };
const readTimers = new Map();
const typingSentAt = new Map();
let onlineListedAt = 0;

/** Starts the session's connection. `onAuthLost` runs if the server no longer knows us. */
export function start({ onAuthLost }) {
  welcomedOnce = false;
  resuming = new Set();
  conn = new Connection({
    onWelcome,
    onReady,
    onFrame,
    onState: (s) => {
      state.conn = s;
      emit("conn");
    },
    onAuthLost,
  });
  conn.start();
  clearInterval(ticker);
  ticker = setInterval(tick, 1000);
  document.addEventListener("visibilitychange", markViewed);
}

export function stop() {
  conn?.stop();
  conn = null;
  clearInterval(ticker);
  for (const t of readTimers.values()) clearTimeout(t);
  readTimers.clear();
  document.removeEventListener("visibilitychange", markViewed);
}

function send(frame) {
  return conn?.send(frame) ?? false;
}

function sendOrWarn(frame) {
  if (send(frame)) return true;
  toast("You are offline. Try again when the connection is back.", "error");
  return false;
}

// ---- connection lifecycle ---------------------------------------------------------------------

function onWelcome(frame) {
  state.me = frame.user;
  state.limits = { ...state.limits, ...frame.limits };
  const ids = new Set(frame.conversations.map((c) => c.id));
  for (const id of [...state.convs.keys()]) {
    if (!ids.has(id)) {
      store.removeConv(id);
      if (state.open === id) state.open = null;
    }
  }
  for (const info of frame.conversations) {
    const seen = state.seen[info.id];
    if (typeof seen === "number" && seen > info.lastSeq) {
      // The server's log is behind what we saw (it was reset): start this conversation over.
      state.seen[info.id] = info.lastSeq;
      store.clearMessages(info.id);
      const c = state.convs.get(info.id);
      if (c) Object.assign(c, { lastSeq: info.lastSeq, preview: null });
    }
    const c = store.upsertConv(info, { atWelcome: !welcomedOnce });
    if (c.readSeq > c.lastSeq) c.readSeq = c.lastSeq;
  }
  state.online = new Map(frame.online.map((u) => [u.id, u]));
  state.onlineCount = Math.max(frame.onlineCount ?? 0, state.online.size);
  const since = {};
  for (const id of ids) {
    if (typeof state.seen[id] === "number") since[id] = state.seen[id];
  }
  resuming = new Set(Object.keys(since));
  store.persist();
  emit("convs");
  emit("presence");
  emit("me");
  return since;
}

function onReady() {
  welcomedOnce = true;
  state.welcomed = true;
  for (const c of state.convs.values()) {
    c.historyReq = null;
    c.loadingOlder = false;
  }
  for (const p of state.outbox.values()) {
    if (p.status === "pending") sendPending(p);
  }
  for (const conv of readTimers.keys()) sendRead(conv);
  if (!state.open || !state.convs.has(state.open)) {
    const saved = storage.loadOpenConv();
    openConv(saved && state.convs.has(saved) ? saved : "lobby");
  } else {
    ensureHistory(state.open);
    emit("open", state.open);
  }
  if (state.members) loadMembers(state.members.group);
  markViewed();
  emit("ready");
}

function tick() {
  const now = Date.now();
  for (const p of state.outbox.values()) {
    if (p.status === "pending" && p.sentAt && now - p.sentAt > RESEND_AFTER_MS) sendPending(p);
  }
  for (const c of state.convs.values()) {
    if (c.historyReq && now - c.historyReq.at > HISTORY_TIMEOUT_MS) {
      c.historyReq = null;
      c.loadingOlder = false;
      emit("messages", c.id);
    }
    let changed = false;
    for (const [user, t] of c.typing) {
      if (t.until <= now) {
        c.typing.delete(user);
        changed = true;
      }
    }
    if (changed) emit("typing", c.id);
  }
  emit("tick");
}

// ---- frames ---------------------------------------------------------------------------------

function onFrame(f) {
  switch (f.type) {
    case "message":
      return onMessage(f);
    case "ack":
      return onAck(f);
    case "history":
      return onHistory(f);
    case "resumed":
      return onResumed(f);
    case "typing":
      return onTyping(f);
    case "presence":
      return onPresence(f);
    case "online":
      state.online = new Map(f.users.map((u) => [u.id, u]));
      if (f.users.length < 500) state.onlineCount = f.users.length;
      for (const m of state.members?.members ?? []) {
        if (m.online) state.online.set(m.id, { id: m.id, name: m.name });
      }
      return emit("presence");
    case "read":
      if (store.setRead(f.conv, f.seq)) emit("convs");
      return;
    case "conversation":
      return onConversation(f.conversation);
    case "conversation.removed":
      return onConversationRemoved(f.conv);
    case "member":
      return onMember(f);
    case "members":
      state.members = { group: f.group, members: f.members };
      watchMembers();
      return emit("members");
    case "groups":
      state.groups = f.groups;
      return emit("groups");
    case "users":
      state.users = f.users;
      return emit("users", state.usersFor);
    case "blocked":
      return toast(f.blocked ? "User blocked" : "User unblocked");
    case "error":
      return onError(f);
    default:
      // pong, reconnect (handled by the connection) and frames this client does not use.
      return;
  }
}

function onMessage(f) {
  const { type: _type, ...m } = f;
  const isNew = store.addMessage(m);
  store.noteSeen(m.conv, m.seq);
  if (!isNew) return;
  const c = state.convs.get(m.conv);
  emit("messages", m.conv);
  emit("convs");
  emit("typing", m.conv);
  if (isViewing(m.conv)) markViewed();
  const live = !resuming.has(m.conv);
  if (live && m.meta && m.conv.startsWith("g:") && m.meta.event !== "created") {
    onMember({ conv: m.conv, user: m.meta.user, event: m.meta.event });
  }
  if (
    live && state.notify && document.hidden && c?.kind === "direct" && m.from !== state.me?.id &&
    (m.kind === "text" || store.isNotices(m.conv))
  ) {
    notify.show(m.name, m.text.slice(0, 200), m.conv, () => {
      openConv(m.conv, { show: true });
    });
  }
}

function onAck(f) {
  const p = state.outbox.get(f.id);
  if (!p) return;
  clearTimeout(p.retryTimer);
  store.addMessage({
    conv: f.conv,
    seq: f.seq,
    id: f.id,
    from: state.me.id,
    name: state.me.name,
    text: p.text,
    ts: f.ts,
    kind: "text",
  });
  state.outbox.delete(f.id);
  store.persistOutbox();
  emit("messages", f.conv);
  emit("convs");
  if (isViewing(f.conv)) markViewed();
}

function onHistory(f) {
  const c = state.convs.get(f.conv);
  if (!c) return;
  const req = c.historyReq;
  c.historyReq = null;
  c.loadingOlder = false;
  const oldestBefore = c.msgs[0]?.seq;
  for (const m of f.messages) store.addMessage(m);
  const newest = f.messages[f.messages.length - 1];
  if (!req || req.before === undefined) {
    // The newest page: the live stream continues right after it.
    if (newest) store.noteSeen(f.conv, newest.seq);
    if (oldestBefore === undefined || !f.messages.length || f.messages[0].seq <= oldestBefore) {
      c.more = f.messages.length ? f.more : false;
    }
  } else {
    c.more = f.messages.length ? f.more : false;
  }
  emit("messages", f.conv);
  emit("convs");
  if (isViewing(f.conv)) markViewed();
}

function onResumed(f) {
  resuming.delete(f.conv);
  const c = state.convs.get(f.conv);
  if (!c) return;
  if (f.to > c.lastSeq) c.lastSeq = f.to;
  if (f.reload) {
    // Too much was missed to replay: start from the newest page instead.
    store.clearMessages(f.conv);
    store.noteSeen(f.conv, f.to);
    if (state.open === f.conv) ensureHistory(f.conv);
  } else {
    store.noteSeen(f.conv, f.to);
  }
  emit("messages", f.conv);
  emit("convs");
}

function onTyping(f) {
  if (f.user.id === state.me?.id) return;
  const c = state.convs.get(f.conv);
  if (!c) return;
  c.typing.set(f.user.id, { name: f.user.name, until: Date.now() + TYPING_SHOWN_MS });
  emit("typing", f.conv);
}

function onPresence(f) {
  for (const { user, online } of f.changes) {
    if (online) {
      if (!state.online.has(user.id)) state.onlineCount++;
      state.online.set(user.id, user);
    } else if (state.online.delete(user.id)) {
      state.onlineCount = Math.max(0, state.onlineCount - 1);
    }
  }
  if (typeof f.count === "number") state.onlineCount = f.count;
  // In a crowd the server names only the users we watch: refresh the online list now and then.
  if (f.crowd && Date.now() - onlineListedAt > ONLINE_REFRESH_MS && !document.hidden) {
    onlineListedAt = Date.now();
    send({ type: "presence.list" });
  }
  emit("presence");
}

function onConversation(info) {
  store.upsertConv(info, { atWelcome: false });
  const c = state.convs.get(info.id);
  const g = info.group;
  let open = false;
  if (c.kind === "direct" && pendingOpen.dmUser && c.peer?.id === pendingOpen.dmUser) {
    pendingOpen.dmUser = null;
    open = true;
  }
  if (g && pendingOpen.joinGroup === g.id) {
    pendingOpen.joinGroup = null;
    open = true;
  }
  if (g && pendingOpen.groupName === g.name && g.owner === state.me?.id) {
    pendingOpen.groupName = null;
    open = true;
  }
  if (g && state.groups) listGroups();
  emit("convs");
  if (open) openConv(c.id, { show: true });
  else if (state.open === c.id) emit("open", c.id);
}

function onConversationRemoved(convId) {
  const c = state.convs.get(convId);
  if (!c) return;
  const title = store.titleOf(c);
  store.removeConv(convId);
  if (c.group && state.members?.group === c.group.id) {
    state.members = null;
    emit("members");
  }
  if (c.group && state.groups) listGroups();
  if (state.open === convId) {
    state.open = null;
    openConv("lobby");
  }
  toast(`You are no longer in ${title}`);
  emit("convs");
}

function onMember(f) {
  const groupId = f.conv.slice(2);
  const panel = state.members;
  if (panel?.group !== groupId || !panel.members) return;
  if (f.event === "joined" || f.event === "added") {
    if (!panel.members.some((m) => m.id === f.user.id)) {
      panel.members.push({ ...f.user, online: state.online.has(f.user.id) });
    }
  } else {
    panel.members = panel.members.filter((m) => m.id !== f.user.id);
  }
  emit("members");
}

function onError(f) {
  const p = f.id ? state.outbox.get(f.id) : undefined;
  if (p) {
    if (f.code === "rate_limited" && p.tries < MAX_RATE_RETRIES) {
      p.tries++;
      clearTimeout(p.retryTimer);
      p.retryTimer = setTimeout(() => sendPending(p), f.retryAfterMs ?? 1000);
    } else {
      p.status = "failed";
      p.error = f.message || f.code;
    }
    emit("messages", p.conv);
    return;
  }
  switch (f.ref) {
    case "history":
      for (const c of state.convs.values()) {
        if (c.historyReq) {
          c.historyReq = null;
          c.loadingOlder = false;
          if (f.code !== "rate_limited") c.more = false;
          emit("messages", c.id);
        }
      }
      if (f.code === "rate_limited") return;
      break;
    case "typing":
    case "read":
    case "ping":
      return;
    case "dm.open":
      pendingOpen.dmUser = null;
      break;
    case "group.create":
      pendingOpen.groupName = null;
      break;
    case "group.join":
      pendingOpen.joinGroup = null;
      emit("groups");
      break;
  }
  toast(f.message || f.code, "error");
}

// ---- actions --------------------------------------------------------------------------------

/** Whether the user is looking at `conv` now. */
export function isViewing(conv) {
  return state.open === conv && !document.hidden && state.chatVisible;
}

/** Opens a conversation. `show` also switches the phone layout to the chat screen. */
export function openConv(convId, { show = false } = {}) {
  if (!state.convs.has(convId)) convId = "lobby";
  if (!state.convs.has(convId)) return;
  const prev = state.open;
  if (prev && prev !== convId) store.trim(prev);
  state.open = convId;
  storage.saveOpenConv(convId);
  emit("open", convId);
  if (show) emit("show-chat");
  ensureHistory(convId);
  markViewed();
}

/** Loads the newest page of a conversation we have no message of. */
export function ensureHistory(convId) {
  const c = state.convs.get(convId);
  if (!c || c.msgs.length || c.historyReq || c.more === false) return;
  requestHistory(c, undefined);
}

function requestHistory(c, before) {
  if (c.historyReq) return;
  const frame = { type: "history", conv: c.id, limit: Math.min(200, state.limits.pageSize || 50) };
  if (before !== undefined) frame.before = before;
  if (!send(frame)) return;
  c.historyReq = { before, at: Date.now() };
  c.loadingOlder = true;
  emit("messages", c.id);
}

/** Scrolled to the top: load the page before the oldest message shown. */
export function loadOlder(convId) {
  const c = state.convs.get(convId);
  if (!c || c.historyReq || c.more === false) return;
  if (!c.msgs.length) return ensureHistory(convId);
  const oldest = c.msgs[0].seq;
  if (oldest <= 1) {
    c.more = false;
    emit("messages", convId);
    return;
  }
  requestHistory(c, oldest);
}

function makeId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

const encoder = new TextEncoder();

function sendPending(p) {
  if (p.status !== "pending" || !state.outbox.has(p.id)) return;
  const frame = { type: "send", id: p.id, conv: p.conv, text: p.text };
  const max = state.limits.maxFrameBytes;
  if (max && encoder.encode(JSON.stringify(frame)).length > max) {
    // The server would close the socket over it: fail here instead.
    p.status = "failed";
    p.error = "Message too large";
    emit("messages", p.conv);
    return;
  }
  if (send(frame)) p.sentAt = Date.now();
}

/** Queues a message for the open conversation and sends it when possible. */
export function sendText(text) {
  const conv = state.open;
  if (!conv || !text.trim()) return false;
  const p = {
    id: makeId(),
    conv,
    text,
    ts: Date.now(),
    status: "pending",
    error: null,
    sentAt: 0,
    tries: 0,
  };
  state.outbox.set(p.id, p);
  store.persistOutbox();
  typingSentAt.delete(conv);
  sendPending(p);
  emit("messages", conv);
  emit("sent", conv);
  return true;
}

export function retry(id) {
  const p = state.outbox.get(id);
  if (!p) return;
  Object.assign(p, { status: "pending", error: null, tries: 0, sentAt: 0 });
  sendPending(p);
  emit("messages", p.conv);
}

export function discard(id) {
  const p = state.outbox.get(id);
  if (!p) return;
  state.outbox.delete(id);
  store.persistOutbox();
  emit("messages", p.conv);
}

/** The user typed in the composer: tell the others, at most every 2 s. */
export function typing() {
  const conv = state.open;
  if (!conv) return;
  const now = Date.now();
  if (now - (typingSentAt.get(conv) ?? 0) < TYPING_EVERY_MS) return;
  if (send({ type: "typing", conv })) typingSentAt.set(conv, now);
}

/** Marks the open conversation read up to its newest message, if the user is looking at it. */
export function markViewed() {
  const conv = state.open;
  if (!conv || !isViewing(conv)) return;
  const c = state.convs.get(conv);
  if (!c || !store.setRead(conv, c.lastSeq)) return;
  emit("convs");
  clearTimeout(readTimers.get(conv));
  readTimers.set(conv, setTimeout(() => sendRead(conv), 300));
}

function sendRead(conv) {
  const c = state.convs.get(conv);
  if (!c) return readTimers.delete(conv);
  if (send({ type: "read", conv, seq: c.readSeq })) readTimers.delete(conv);
}

export function openDm(userId) {
  if (!userId || userId === state.me?.id) return;
  for (const c of state.convs.values()) {
    if (c.kind === "direct" && c.peer?.id === userId) return openConv(c.id, { show: true });
  }
  pendingOpen.dmUser = userId;
  sendOrWarn({ type: "dm.open", user: userId });
}

export function createGroup(name, isPublic) {
  pendingOpen.groupName = name;
  return sendOrWarn({ type: "group.create", name, public: isPublic });
}

export function joinGroup(groupId) {
  const conv = `g:${groupId}`;
  if (state.convs.has(conv)) return openConv(conv, { show: true });
  pendingOpen.joinGroup = groupId;
  if (sendOrWarn({ type: "group.join", group: groupId })) emit("groups");
}

export function isJoining(groupId) {
  return pendingOpen.joinGroup === groupId;
}

export function leaveGroup(groupId) {
  sendOrWarn({ type: "group.leave", group: groupId });
}

export function listGroups() {
  send({ type: "group.list" });
}

/** Asks for the online list (up to 1000) when the welcome's (up to 50) did not name everyone. */
export function listOnline() {
  if (state.onlineCount <= state.online.size) return;
  onlineListedAt = Date.now();
  send({ type: "presence.list" });
}

export function loadMembers(groupId) {
  if (state.members?.group !== groupId) state.members = { group: groupId, members: null };
  emit("members");
  send({ type: "group.members", group: groupId });
}

export function closeMembers() {
  state.members = null;
  watchMembers();
  emit("members");
}

/**
 * With many users online the server sends presence changes only for the peers of our direct
 * chats and the users we watch: watch the open member list, and take its online flags.
 */
function watchMembers() {
  const members = state.members?.members ?? [];
  for (const m of members) {
    if (m.online) state.online.set(m.id, { id: m.id, name: m.name });
    else state.online.delete(m.id);
  }
  send({ type: "presence.watch", users: members.slice(0, 500).map((m) => m.id) });
}

export function addMember(groupId, userId) {
  sendOrWarn({ type: "group.add", group: groupId, user: userId });
}

export function removeMember(groupId, userId) {
  sendOrWarn({ type: "group.remove", group: groupId, user: userId });
}

/** Looks users up by name; the answer is emitted as `users` with `forWhom`. */
export function findUsers(name, forWhom) {
  state.usersFor = forWhom;
  send({ type: "user.find", name: name.slice(0, 200) });
}

/** The bell: turns desktop notifications for direct messages on or off. */
export async function toggleNotify() {
  if (!notify.supported()) {
    toast("This browser cannot show notifications.", "error");
    return;
  }
  if (state.notify) {
    state.notify = false;
  } else {
    const ok = await notify.requestPermission();
    if (!ok) toast("Notifications are blocked in the browser settings.", "error");
    state.notify = ok;
  }
  store.persist();
  emit("me");
}
