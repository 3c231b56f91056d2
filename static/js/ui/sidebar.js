/**
 * The sidebar: who I am and the connection state, the search box, and three tabs: chats
 * (conversations with preview, time and unread count, plus people found by name), online users
 * and groups (create, browse, join).
 */
import * as chat from "../chat.js";
import * as store from "../store.js";
import { on, state } from "../store.js";
import { $, frameScheduler, h, reconcile, setText } from "./dom.js";
import { avatar, avatarClass, initial, listTime, noticeText } from "./format.js";

let tab = "chats";
let query = "";
let findTimer = 0;
const convNodes = new Map();
const onlineNodes = new Map();
const groupNodes = new Map();
const resultNodes = new Map();

export function init() {
  for (const button of document.querySelectorAll(".tabs [role=tab]")) {
    button.addEventListener("click", () => selectTab(button.dataset.tab));
  }
  $("search").addEventListener("input", (e) => {
    query = e.target.value.trim();
    renderAll();
    clearTimeout(findTimer);
    if (tab === "chats" && query.length >= 1) {
      findTimer = setTimeout(() => chat.findUsers(query, "search"), 300);
    } else {
      state.users = null;
      renderResults();
    }
  });
  $("search").addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      e.target.value = "";
      e.target.dispatchEvent(new Event("input"));
    }
  });
  $("create-group").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("group-name");
    const name = input.value.trim();
    if (!name) {
      input.focus();
      return;
    }
    if (chat.createGroup(name, $("group-public").checked)) input.value = "";
  });
  $("groups-refresh").addEventListener("click", () => chat.listGroups());
  $("notify-toggle").addEventListener("click", () => chat.toggleNotify());

  const convs = frameScheduler(renderConvs);
  on("convs", convs);
  on("typing", convs);
  on("open", convs);
  on("messages", convs);
  const presence = frameScheduler(() => {
    renderOnline();
    updatePresenceDots();
  });
  on("presence", presence);
  on("groups", frameScheduler(renderGroups));
  on("users", (forWhom) => {
    if (forWhom === "search") renderResults();
  });
  on("conn", renderConn);
  on("tick", renderConn);
  on("me", renderMe);
  on("ready", () => {
    if (tab === "groups") chat.listGroups();
  });
}

export function reset() {
  tab = "chats";
  query = "";
  $("search").value = "";
  for (const map of [convNodes, onlineNodes, groupNodes, resultNodes]) map.clear();
  for (const id of ["conv-list", "online-list", "group-list", "user-results-list"]) {
    $(id).replaceChildren();
  }
  $("user-results").hidden = true;
  selectTab("chats");
  renderMe();
  renderConn();
}

function selectTab(name) {
  tab = name;
  for (const button of document.querySelectorAll(".tabs [role=tab]")) {
    const selected = button.dataset.tab === name;
    button.setAttribute("aria-selected", String(selected));
    button.tabIndex = selected ? 0 : -1;
  }
  $("pane-chats").hidden = name !== "chats";
  $("pane-online").hidden = name !== "online";
  $("pane-groups").hidden = name !== "groups";
  $("search").placeholder = name === "chats"
    ? "Search chats and people"
    : name === "online"
    ? "Filter online users"
    : "Filter groups";
  if (name === "groups") chat.listGroups();
  if (name === "online") chat.listOnline();
  renderAll();
}

function renderAll() {
  renderConvs();
  renderOnline();
  renderGroups();
  renderResults();
}

function matches(text) {
  return !query || text.toLowerCase().includes(query.toLowerCase());
}

// ---- header ---------------------------------------------------------------------------------

function renderMe() {
  const me = state.me;
  if (!me) return;
  setText($("me-name"), me.name);
  const av = $("me-avatar");
  av.className = `avatar ${avatarClass(me.id)}`;
  setText(av, initial(me.name));
  const bell = $("notify-toggle");
  bell.setAttribute("aria-pressed", String(state.notify));
  bell.title = state.notify
    ? "Desktop notifications for direct messages: on"
    : "Desktop notifications for direct messages: off";
  bell.classList.toggle("on", state.notify);
}

const CONN_TEXT = { connecting: "Connecting…", online: "Online", offline: "Offline" };

function renderConn() {
  const { state: s, retryAt } = state.conn;
  let text = CONN_TEXT[s] ?? "";
  if (s === "reconnecting") {
    const secs = Math.ceil((retryAt - Date.now()) / 1000);
    text = retryAt && secs > 0 ? `Reconnecting in ${secs}s` : "Reconnecting…";
  }
  for (const el of [$("conn-state"), $("conn-banner")]) {
    el.dataset.state = s;
    setText(el, text);
  }
  $("conn-banner").hidden = s === "online";
}

// ---- conversations --------------------------------------------------------------------------

function previewOf(c) {
  if (c.typing.size) {
    const [first] = c.typing.values();
    return { text: c.kind === "direct" ? "typing…" : `${first.name} is typing…`, typing: true };
  }
  if (store.pendingOf(c.id).some((p) => p.status === "failed")) {
    return { text: "⚠ Message not sent", failed: true };
  }
  const p = c.preview;
  if (!p) return { text: "" };
  if (p.kind === "notice") return { text: noticeText(p) };
  const mine = p.from === state.me?.id;
  if (c.kind === "direct" && !mine) return { text: p.text };
  return { text: `${mine ? "You" : p.name}: ${p.text}` };
}

function createConv(c) {
  const refs = {
    title: h("span", { class: "conv-title" }),
    time: h("time", { class: "conv-time" }),
    preview: h("span", { class: "conv-preview", testid: "conv-preview" }),
    badge: h("span", { class: "badge", testid: "unread-badge", hidden: true }),
  };
  const av = c.kind === "direct"
    ? avatar(c.peer?.id ?? c.id, store.titleOf(c), {
      presenceUser: store.isNotices(c.id) ? undefined : c.peer?.id,
    })
    : avatar(c.id, store.titleOf(c), { kind: c.kind });
  const button = h(
    "button",
    {
      class: "conv-item",
      testid: "conv-item",
      data: { conv: c.id },
      attrs: { type: "button" },
      on: { click: () => chat.openConv(c.id, { show: true }) },
    },
    av,
    h(
      "span",
      { class: "conv-main" },
      h("span", { class: "conv-top" }, refs.title, refs.time),
      h("span", { class: "conv-bottom" }, refs.preview, refs.badge),
    ),
  );
  const li = h("li", {}, button);
  li._refs = { ...refs, button, av };
  return li;
}

function updateConv(li, c) {
  const r = li._refs;
  const title = store.titleOf(c);
  setText(r.title, title);
  if (c.kind !== "lobby" && r.av.firstChild?.nodeType === 3) {
    r.av.firstChild.nodeValue = initial(title);
  }
  const ts = c.preview?.ts ?? 0;
  setText(r.time, listTime(ts));
  const p = previewOf(c);
  setText(r.preview, p.text);
  r.preview.classList.toggle("typing", !!p.typing);
  r.preview.classList.toggle("failed", !!p.failed);
  const unread = store.unreadOf(c);
  r.badge.hidden = unread === 0;
  if (!r.badge.hidden) {
    setText(r.badge, unread > 999 ? "999+" : String(unread));
    r.badge.dataset.count = String(unread);
  }
  const active = state.open === c.id;
  r.button.classList.toggle("active", active);
  r.button.classList.toggle("unread", unread > 0);
  if (active) r.button.setAttribute("aria-current", "true");
  else r.button.removeAttribute("aria-current");
  r.button.setAttribute(
    "aria-label",
    `${title}${c.kind === "direct" && state.online.has(c.peer?.id) ? ", online" : ""}${
      unread ? `, ${unread} unread` : ""
    }`,
  );
}

function renderConvs() {
  const list = store.sortedConvs().filter((c) => matches(store.titleOf(c)));
  reconcile($("conv-list"), list, convNodes, (c) => c.id, createConv, updateConv);
  $("conv-empty").hidden = list.length > 0;
  updatePresenceDots($("conv-list"));
  const total = store.totalUnread();
  const badge = $("tab-chats-badge");
  badge.hidden = total === 0;
  setText(badge, total > 999 ? "999+" : String(total));
  document.title = total ? `(${total}) Chat` : "Chat";
}

// ---- people ---------------------------------------------------------------------------------

function userButton(testid) {
  return (u) => {
    const isMe = u.id === state.me?.id;
    const li = h(
      "li",
      {},
      h(
        "button",
        {
          class: "user-item",
          testid,
          data: { user: u.id },
          attrs: {
            type: "button",
            "aria-label": isMe ? `${u.name} (you)` : `Chat with ${u.name}`,
          },
          on: { click: () => chat.openDm(u.id) },
        },
        avatar(u.id, u.name, { presenceUser: u.id }),
        h("span", { class: "user-name", text: u.name }),
        isMe ? h("span", { class: "tag", text: "you" }) : null,
      ),
    );
    if (isMe) li.firstChild.disabled = true;
    return li;
  };
}

function renderOnline() {
  setText($("online-count"), String(state.onlineCount));
  if (tab !== "online") return;
  const users = [...state.online.values()]
    .filter((u) => matches(u.name))
    .sort((a, b) =>
      (b.id === state.me?.id) - (a.id === state.me?.id) || a.name.localeCompare(b.name)
    );
  reconcile(
    $("online-list"),
    users,
    onlineNodes,
    (u) => u.id,
    userButton("online-user"),
    () => {},
  );
  updatePresenceDots($("online-list"));
  const more = state.onlineCount - state.online.size;
  $("online-more").hidden = more <= 0;
  setText($("online-more"), more > 0 ? `and ${more} more` : "");
}

function renderResults() {
  const box = $("user-results");
  const users = tab === "chats" && query && state.usersFor === "search" && state.users
    ? state.users.filter((u) => u.id !== state.me?.id)
    : null;
  box.hidden = !users;
  if (!users) return;
  reconcile(
    $("user-results-list"),
    users,
    resultNodes,
    (u) => u.id,
    userButton("user-result"),
    () => {},
  );
  $("user-results-empty").hidden = users.length > 0;
  updatePresenceDots(box);
}

/** Colours every presence dot under `root` from the online set. */
export function updatePresenceDots(root = document) {
  for (const dot of root.querySelectorAll(".presence-dot")) {
    const online = state.online.has(dot.dataset.user);
    if (dot.dataset.online !== String(online)) {
      dot.dataset.online = String(online);
      dot.classList.toggle("on", online);
      dot.title = online ? "Online" : "Offline";
    }
  }
}

// ---- groups ---------------------------------------------------------------------------------

function createGroupItem(g) {
  const sub = h("span", { class: "group-sub" });
  const action = h("button", {
    class: "small",
    attrs: { type: "button" },
    data: { group: g.id },
    on: { click: () => chat.joinGroup(g.id) },
  });
  const li = h(
    "li",
    { class: "group-item", testid: "group-item", data: { group: g.id } },
    avatar(`g:${g.id}`, g.name),
    h("span", { class: "group-main" }, h("span", { class: "group-name", text: g.name }), sub),
    action,
  );
  li._refs = { sub, action };
  return li;
}

function updateGroupItem(li, g) {
  const { sub, action } = li._refs;
  setText(
    sub,
    `${g.public ? "Public" : "Private"} · ${g.members} member${g.members === 1 ? "" : "s"}`,
  );
  const joining = chat.isJoining(g.id);
  action.dataset.testid = g.member ? "open-group-button" : "join-group-button";
  action.className = g.member ? "small secondary" : "small primary";
  action.disabled = joining;
  setText(action, g.member ? "Open" : joining ? "Joining…" : "Join");
  action.setAttribute("aria-label", `${g.member ? "Open" : "Join"} ${g.name}`);
}

function renderGroups() {
  if (tab !== "groups") return;
  const groups = (state.groups ?? []).filter((g) => matches(g.name));
  reconcile($("group-list"), groups, groupNodes, (g) => g.id, createGroupItem, updateGroupItem);
  const empty = $("groups-empty");
  empty.hidden = groups.length > 0;
  setText(
    empty,
    state.groups === null
      ? "Loading…"
      : query
      ? "No group matches."
      : "No public groups yet. Create one above.",
  );
}
