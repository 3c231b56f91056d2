/** Desktop notifications. Permission is only ever asked from a user gesture (the bell). */

export function supported() {
  return typeof Notification !== "undefined";
}

export function granted() {
  return supported() && Notification.permission === "granted";
}

/** Asks for permission if needed; resolves to whether notifications may be shown. */
export async function requestPermission() {
  if (!supported()) return false;
  if (Notification.permission === "default") {
    try {
      await Notification.requestPermission();
    } catch {
      return false;
    }
  }
  return Notification.permission === "granted";
}

/** Shows a notification; `onClick` runs when the user clicks it. */
export function show(title, body, tag, onClick) {
  if (!granted()) return;
  try {
    const n = new Notification(title, { body, tag, silent: false });
    n.onclick = () => {
      globalThis.focus();
      onClick?.();
      n.close();
    };
    setTimeout(() => n.close(), 10_000);
  } catch {
    // Some browsers only allow notifications from a service worker.
  }
}
