/**
 * Web chat client: entry point. Vanilla ES modules, no build step.
 *
 *   api.js          HTTP API (session, names, previews)
 *   socket.js       WebSocket: welcome → resume, heartbeat, backoff reconnect
 *   chat.js         controller: server frames → state, user actions → frames, outbox
 *   store.js        state + pub/sub; dedupe by (conv, seq); seen / read positions
 *   storage.js      local/session storage per user (survives reload)
 *   notify.js       desktop notifications
 *   ui/*.js         views: signin, sidebar, chatpane, messages, members; dom + format helpers
 *
 * data-testid reference (stable; for the browser tests)
 *   Sign-in:   signin-name, signin-password, signin-button (guest or password sign-in),
 *              register-button, signin-error
 *   Header:    me-name, connection-state (data-state = connecting|online|reconnecting|offline),
 *              connection-banner (chat pane, hidden while online), notify-toggle (aria-pressed),
 *              signout-button
 *   Sidebar:   search-input, tab-chats, tab-online, tab-groups, online-count,
 *              conv-list, conv-item (data-conv = conversation id, class "active" when open),
 *              conv-preview, unread-badge (text and data-count; hidden when 0),
 *              user-results / user-result (data-user: people found by name in the chats tab),
 *              online-list, online-user (data-user; click opens a DM),
 *              presence-dot (data-user, data-online = true|false; class "on"),
 *              create-group-form, group-name-input, group-public-checkbox, create-group-button,
 *              groups-refresh, group-list, group-item (data-group),
 *              join-group-button / open-group-button (data-group)
 *   Chat pane: back-button (phone layout), chat-title, members-button (groups only),
 *              message-list, history-status (data-state = loading|start|more),
 *              day-separator, message (data-seq once stored, data-id = client id,
 *              data-from, data-status = pending|sent|failed for own messages; class "mine"),
 *              message-status, message-retry, message-discard, notice (data-seq),
 *              jump-to-latest, typing-indicator, composer (textarea), send-button,
 *              composer-note (byte counter)
 *   Members:   members-panel, member-list, member-item (data-user), member-remove (data-user),
 *              member-add-input, member-add-search, member-add-button (data-user), leave-button
 *   Other:     boot (loading screen), toast
 */
import * as api from "./api.js";
import * as chat from "./chat.js";
import * as storage from "./storage.js";
import * as store from "./store.js";
import { state } from "./store.js";
import * as chatpane from "./ui/chatpane.js";
import { $, toast } from "./ui/dom.js";
import * as members from "./ui/members.js";
import * as messages from "./ui/messages.js";
import * as sidebar from "./ui/sidebar.js";
import * as signin from "./ui/signin.js";

function enterChat(user) {
  store.reset(user);
  sidebar.reset();
  messages.reset();
  members.reset();
  chatpane.reset();
  $("boot").hidden = true;
  signin.hide();
  $("app").hidden = false;
  store.emit("me");
  chat.start({ onAuthLost: () => leaveChat("Your session has ended. Please sign in again.") });
}

function leaveChat(message = "") {
  chat.stop();
  store.reset(null);
  $("app").hidden = true;
  $("boot").hidden = true;
  signin.show(message);
}

async function signOut() {
  const me = state.me;
  chat.stop();
  try {
    await api.signOut();
  } catch {
    // The cookie may already be gone; signing out locally is what matters.
  }
  if (me) storage.forget(me.id);
  leaveChat();
}

async function boot() {
  signin.init(enterChat);
  sidebar.init();
  messages.init();
  chatpane.init();
  members.init();
  $("signout").addEventListener("click", signOut);
  addEventListener("pagehide", () => store.flush());
  try {
    enterChat(await api.me());
  } catch (error) {
    $("boot").hidden = true;
    signin.show(error.status === 401 || error.status === 404 ? "" : error.message);
    if (error.status === 0) toast(error.message, "error");
  }
}

boot();
