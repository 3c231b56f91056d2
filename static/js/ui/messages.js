/**
 * The message list of the open conversation: day separators, messages grouped by sender,
 * own messages on the right with pending / sent / failed state, centred notices, and loading
 * of older pages when scrolled to the top. Nodes are keyed (by seq, or by client id while
 * pending) and reused, so a new message costs one node, not a redraw.
 */
import * as chat from "../chat.js";
import * as store from "../store.js";
import { on, state } from "../store.js";
import { $, frameScheduler, h, reconcile, setText } from "./dom.js";
import { avatar, dayKey, dayLabel, fullTime, noticeText, richText, time } from "./format.js";

/** Messages of one sender closer than this share a group (one name, one avatar). */
const GROUP_GAP_MS = 5 * 60_000;
const NEAR_BOTTOM_PX = 48;
const NEAR_TOP_PX = 200;
/** Messages kept on screen while following the newest. */
const MAX_ROWS = 1000;

let conv = null;
let nodes = new Map();
let stick = true;
/** The newest seq the user has seen at the bottom (for the "new messages" button). */
let bottomSeq = 0;
let scroller;
let items;

export function init() {
  scroller = $("messages");
  items = $("message-items");
  const schedule = frameScheduler(render);
  on("messages", (c) => {
    if (c === conv) schedule();
  });
  on("open", (c) => {
    if (c !== conv) show(c);
    else schedule();
  });
  on("sent", (c) => {
    if (c === conv) {
      stick = true;
      schedule();
    }
  });
  scroller.addEventListener("scroll", onScroll, { passive: true });
  $("jump").addEventListener("click", () => {
    stick = true;
    scrollToBottom();
    $("jump").hidden = true;
  });
  items.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-action]");
    if (!button) return;
    const id = button.closest("[data-id]")?.dataset.id;
    if (button.dataset.action === "retry") chat.retry(id);
    if (button.dataset.action === "discard") chat.discard(id);
  });
  new ResizeObserver(() => {
    if (stick) scrollToBottom();
  }).observe(scroller);
}

export function reset() {
  conv = null;
  nodes = new Map();
  items.replaceChildren();
}

function show(c) {
  conv = c;
  nodes = new Map();
  items.replaceChildren();
  stick = true;
  bottomSeq = 0;
  $("jump").hidden = true;
  render();
}

function onScroll() {
  const fromBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
  stick = fromBottom < NEAR_BOTTOM_PX;
  if (stick) {
    const c = state.convs.get(conv);
    bottomSeq = c?.lastSeq ?? 0;
    $("jump").hidden = true;
  }
  if (scroller.scrollTop < NEAR_TOP_PX && conv) chat.loadOlder(conv);
}

function scrollToBottom() {
  scroller.scrollTop = scroller.scrollHeight;
}

/** The view model: day separators and messages, with grouping flags. */
function buildRows(c) {
  const rows = [];
  const days = new Set();
  let prev = null;
  let prevDay = null;
  const push = (m, pending) => {
    const ts = m.ts || Date.now();
    const day = dayKey(ts);
    if (day !== prevDay) {
      // Keys stay unique even if clocks disagree and a day comes back.
      const key = days.has(day) ? `d:${day}:${rows.length}` : `d:${day}`;
      days.add(day);
      rows.push({ key, day: true, ts });
      prevDay = day;
      prev = null;
    }
    const from = pending ? state.me.id : m.from;
    const notice = !pending && m.kind === "notice";
    const first = notice || !prev || prev.notice || prev.from !== from ||
      ts - prev.ts > GROUP_GAP_MS;
    const row = {
      key: pending ? `p:${m.id}` : `s:${m.seq}`,
      m,
      pending,
      from,
      ts,
      notice,
      first,
      mine: from === state.me.id,
    };
    rows.push(row);
    prev = row;
  };
  for (const m of c.msgs) push(m, false);
  for (const p of store.pendingOf(c.id)) push(p, true);
  return rows;
}

function createRow(row) {
  if (row.day) {
    return h(
      "div",
      { class: "day-sep", testid: "day-separator", attrs: { role: "separator" } },
      h("span", { text: dayLabel(row.ts) }),
    );
  }
  const m = row.m;
  if (row.notice) {
    return h(
      "div",
      {
        class: "notice",
        testid: "notice",
        data: { seq: String(m.seq), id: m.id },
        attrs: { title: fullTime(m.ts) },
      },
      h("span", {}, richText(noticeText(m)), ` · ${time(m.ts)}`),
    );
  }
  const timeEl = h("time", {
    class: "msg-time",
    text: time(row.ts),
    attrs: { datetime: new Date(row.ts).toISOString(), title: fullTime(row.ts) },
  });
  const status = h("span", { class: "msg-status", testid: "message-status" });
  const text = h("span", { class: "msg-text" });
  text.append(richText(m.text));
  const bubble = h(
    "div",
    { class: "bubble" },
    text,
    h("span", { class: "msg-meta" }, timeEl, status),
  );
  const name = h("div", { class: "msg-name", text: row.mine ? "" : m.name });
  const error = h("div", { class: "msg-error", hidden: true });
  const el = h(
    "div",
    { class: "msg", testid: "message", data: { id: m.id, from: row.from } },
    avatar(row.from, row.mine ? state.me.name : m.name),
    h("div", { class: "msg-body" }, name, bubble, error),
  );
  if (!row.pending) el.dataset.seq = String(m.seq);
  el._refs = { status, error, name };
  return el;
}

function updateRow(el, row) {
  if (row.day) return;
  if (row.notice) return;
  const cls = `msg${row.mine ? " mine" : ""}${row.first ? " first" : " cont"}${
    row.pending ? ` ${row.m.status}` : ""
  }`;
  if (el.className !== cls) el.className = cls;
  const r = el._refs;
  const statusName = row.pending ? row.m.status : row.mine ? "sent" : "";
  if (el.dataset.status !== statusName) {
    if (statusName) el.dataset.status = statusName;
    else delete el.dataset.status;
    setText(r.status, statusName === "failed" ? "!" : "");
    r.status.setAttribute(
      "aria-label",
      statusName === "pending" ? "Sending" : statusName === "sent" ? "Sent" : "Not sent",
    );
    if (!statusName) r.status.removeAttribute("aria-label");
  }
  const failed = row.pending && row.m.status === "failed";
  r.error.hidden = !failed;
  if (failed && r.error.dataset.text !== row.m.error) {
    r.error.dataset.text = row.m.error ?? "";
    r.error.replaceChildren(
      h("span", { text: `Not sent: ${row.m.error ?? "error"}` }),
      h("button", {
        class: "link-btn",
        text: "Retry",
        testid: "message-retry",
        data: { action: "retry" },
        attrs: { type: "button" },
      }),
      h("button", {
        class: "link-btn",
        text: "Delete",
        testid: "message-discard",
        data: { action: "discard" },
        attrs: { type: "button" },
      }),
    );
  }
}

/** Finds the first row visible at the top, to keep it in place across a redraw. */
function anchor() {
  const top = scroller.scrollTop;
  for (const el of items.children) {
    if (el.offsetTop + el.offsetHeight > top) return { el, offset: el.offsetTop - top };
  }
  return null;
}

function render() {
  const c = state.convs.get(conv);
  if (!c) {
    items.replaceChildren();
    nodes = new Map();
    renderStatus(null);
    return;
  }
  const keep = stick ? null : anchor();
  // Following a busy conversation at the bottom: keep the DOM small.
  if (stick && c.msgs.length > MAX_ROWS) store.trim(c.id, MAX_ROWS / 2);
  const rows = buildRows(c);
  reconcile(items, rows, nodes, (r) => r.key, createRow, updateRow);
  renderStatus(c);
  if (stick) {
    scrollToBottom();
    bottomSeq = c.lastSeq;
  } else if (keep?.el.isConnected) {
    scroller.scrollTop = keep.el.offsetTop - keep.offset;
  }
  // New messages below while reading older ones: offer a jump.
  const jump = $("jump");
  let fresh = 0;
  for (let i = c.msgs.length - 1; i >= 0 && c.msgs[i].seq > bottomSeq; i--) fresh++;
  jump.hidden = stick || fresh === 0;
  if (!jump.hidden) setText(jump, `↓ ${fresh} new message${fresh === 1 ? "" : "s"}`);
  // Not enough to scroll yet: fetch more.
  if (c.more !== false && scroller.scrollHeight <= scroller.clientHeight + NEAR_TOP_PX) {
    chat.loadOlder(c.id);
  }
}

function renderStatus(c) {
  const el = $("history-status");
  let text = "";
  if (c) {
    if (c.loadingOlder) text = "Loading…";
    else if (c.more === false) {
      text = c.msgs.length ? "Beginning of the conversation" : "No messages yet. Say hi!";
    }
  }
  setText(el, text);
  el.dataset.state = !c ? "" : c.loadingOlder ? "loading" : c.more === false ? "start" : "more";
}
