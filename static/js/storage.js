/**
 * Browser storage for one signed-in user: what survives a reload.
 *
 * - localStorage (shared by tabs): last seen seq and read position per conversation, the last
 *   message preview per conversation, and the notification preference.
 * - sessionStorage (this tab only): the outbox of unacknowledged sends and the open conversation.
 *
 * Every access is guarded: storage may be full or disabled (private windows).
 */
const PREFIX = "chat.v1.";

function read(area, key) {
  try {
    const raw = area.getItem(PREFIX + key);
    return raw ? JSON.parse(raw) : null;
  } catch {
    return null;
  }
}

function write(area, key, value) {
  try {
    if (value === null) area.removeItem(PREFIX + key);
    else area.setItem(PREFIX + key, JSON.stringify(value));
  } catch {
    // Full or disabled: the session still works, it just will not survive a reload.
  }
}

/** @returns {{seen: Record<string, number>, read: Record<string, number>, previews: Record<string, object>, notify: boolean}} */
export function loadProfile(userId) {
  const data = read(localStorage, `u.${userId}`) ?? {};
  return {
    seen: data.seen ?? {},
    read: data.read ?? {},
    previews: data.previews ?? {},
    notify: data.notify === true,
  };
}

export function saveProfile(userId, profile) {
  write(localStorage, `u.${userId}`, profile);
}

export function loadOutbox(userId) {
  const list = read(sessionStorage, `outbox.${userId}`);
  return Array.isArray(list) ? list : [];
}

export function saveOutbox(userId, list) {
  write(sessionStorage, `outbox.${userId}`, list.length ? list : null);
}

export function loadOpenConv() {
  return read(sessionStorage, "open");
}

export function saveOpenConv(conv) {
  write(sessionStorage, "open", conv);
}

/** Forgets everything kept for a user (on sign-out). */
export function forget(userId) {
  write(localStorage, `u.${userId}`, null);
  write(sessionStorage, `outbox.${userId}`, null);
  write(sessionStorage, "open", null);
}
