/**
 * The chat pane around the message list: header (title, status, back, group info), typing
 * indicator and composer (Enter sends, Shift+Enter breaks the line, drafts kept per conversation).
 * Also the phone layout, where the list and the chat are two screens.
 */
import * as chat from "../chat.js";
import * as store from "../store.js";
import { emit, on, state } from "../store.js";
import { $, frameScheduler, setText } from "./dom.js";
import { byteLength } from "./format.js";

const phone = matchMedia("(max-width: 640px)");
const drafts = new Map();
let shownConv = null;

export function init() {
  const input = $("composer-input");
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    submit();
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      submit();
    }
  });
  input.addEventListener("input", () => {
    autosize();
    updateCounter();
    if (input.value.trim()) chat.typing();
  });
  $("back").addEventListener("click", () => {
    if (history.state?.chat) history.back();
    else showList();
  });
  addEventListener("popstate", () => {
    if (document.body.classList.contains("show-chat")) showList(true);
  });
  phone.addEventListener("change", updateVisibility);
  $("members-button").addEventListener("click", () => {
    const c = state.convs.get(state.open);
    if (!c?.group) return;
    if (state.members?.group === c.group.id) chat.closeMembers();
    else chat.loadMembers(c.group.id);
  });

  on("open", onOpen);
  on("show-chat", showChat);
  on("convs", frameScheduler(renderHeader));
  on("presence", frameScheduler(renderHeader));
  on("typing", (c) => {
    if (c === state.open) renderTyping();
  });
  on("members", () => {
    $("members-button").setAttribute("aria-expanded", String(!!state.members));
    renderHeader();
  });
  updateVisibility();
}

export function reset() {
  drafts.clear();
  shownConv = null;
  $("composer-input").value = "";
  document.body.classList.remove("show-chat");
  updateVisibility();
}

function onOpen(convId) {
  const input = $("composer-input");
  if (shownConv && shownConv !== convId) drafts.set(shownConv, input.value);
  if (shownConv !== convId) {
    input.value = drafts.get(convId) ?? "";
    autosize();
    updateCounter();
    if (state.members && state.members.group !== state.convs.get(convId)?.group?.id) {
      chat.closeMembers();
    }
  }
  shownConv = convId;
  $("chat").classList.toggle("has-conv", !!convId);
  renderHeader();
  renderTyping();
  if (!phone.matches) input.focus({ preventScroll: true });
}

function submit() {
  const input = $("composer-input");
  const text = input.value;
  if (!text.trim()) return;
  const max = state.limits.maxMessageBytes;
  if (max && byteLength(text) > max) {
    updateCounter();
    return;
  }
  if (chat.sendText(text)) {
    input.value = "";
    drafts.delete(state.open);
    autosize();
    updateCounter();
    input.focus();
  }
}

function autosize() {
  const input = $("composer-input");
  input.style.height = "";
  // Hidden (phone list screen) or empty: the stylesheet's height is right.
  if (!input.value || !input.offsetParent) return;
  input.style.height = `${Math.min(input.scrollHeight + 2, 160)}px`;
}

function updateCounter() {
  const text = $("composer-input").value;
  const max = state.limits.maxMessageBytes;
  const note = $("composer-note");
  const bytes = max ? byteLength(text) : 0;
  const over = max && bytes > max;
  note.hidden = !max || bytes < max * 0.8;
  note.classList.toggle("over", !!over);
  setText(note, over ? `Too long: ${bytes} / ${max} bytes` : `${bytes} / ${max} bytes`);
  $("send").disabled = !!over || !text.trim() || store.isNotices(state.open ?? "");
}

function renderHeader() {
  const c = state.convs.get(state.open);
  if (!c) return;
  setText($("chat-title"), store.titleOf(c));
  let sub = "";
  if (c.kind === "lobby") sub = `Everyone · ${state.onlineCount} online`;
  else if (c.kind === "group") {
    const priv = c.group && !c.group.public;
    const count = state.members?.group === c.group?.id && state.members.members
      ? ` · ${state.members.members.length} members`
      : "";
    sub = `${priv ? "Private" : "Public"} group${count}`;
  } else if (store.isNotices(c.id)) sub = "Messages from the service";
  else sub = state.online.has(c.peer?.id) ? "Online" : "Offline";
  setText($("chat-sub"), sub);
  $("chat-sub").classList.toggle("online", c.kind === "direct" && state.online.has(c.peer?.id));
  $("members-button").hidden = c.kind !== "group";
  const readOnly = store.isNotices(c.id);
  const input = $("composer-input");
  input.disabled = readOnly;
  input.placeholder = readOnly ? "Notices are read-only" : `Message ${store.titleOf(c)}`;
  if (readOnly) $("send").disabled = true;
}

function renderTyping() {
  const c = state.convs.get(state.open);
  const el = $("typing");
  const names = c ? [...c.typing.values()].map((t) => t.name) : [];
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = `${names.length} people are typing…`;
  setText(el, text);
  el.classList.toggle("active", names.length > 0);
}

// ---- phone layout ---------------------------------------------------------------------------

function showChat() {
  if (!phone.matches || document.body.classList.contains("show-chat")) {
    updateVisibility();
    return;
  }
  document.body.classList.add("show-chat");
  history.pushState({ chat: true }, "");
  updateVisibility();
}

function showList(fromPopstate = false) {
  document.body.classList.remove("show-chat");
  if (!fromPopstate && history.state?.chat) history.replaceState(null, "");
  updateVisibility();
}

/** Whether the chat pane is on screen (always on a wide screen; the second screen on a phone). */
function updateVisibility() {
  const visible = !phone.matches || document.body.classList.contains("show-chat");
  if (visible) autosize();
  if (visible !== state.chatVisible) {
    state.chatVisible = visible;
    emit("convs");
    chat.markViewed();
  }
}
