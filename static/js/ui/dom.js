/** Small DOM helpers. Text always goes in as text nodes: no HTML parsing of data, ever. */

/**
 * Creates an element.
 * @param {string} tag
 * @param {{class?: string, text?: string, testid?: string, attrs?: Record<string, string>,
 *   data?: Record<string, string>, on?: Record<string, EventListener>, hidden?: boolean}} [props]
 * @param {...(Node|string|null|undefined|false)} children
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  if (props.class) el.className = props.class;
  if (props.text !== undefined) el.textContent = props.text;
  if (props.testid) el.dataset.testid = props.testid;
  if (props.hidden) el.hidden = true;
  for (const [k, v] of Object.entries(props.attrs ?? {})) el.setAttribute(k, v);
  for (const [k, v] of Object.entries(props.data ?? {})) el.dataset[k] = v;
  for (const [k, v] of Object.entries(props.on ?? {})) el.addEventListener(k, v);
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return el;
}

export function $(id) {
  return document.getElementById(id);
}

/** Sets text only when it changed (keeps selection and avoids layout work). */
export function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

/**
 * Makes `parent`'s children exactly the nodes for `items`, in order, reusing nodes by key.
 * @template T
 * @param {Element} parent
 * @param {T[]} items
 * @param {Map<string, Element>} cache key -> node, kept between calls
 * @param {(item: T) => string} keyOf
 * @param {(item: T) => Element} create
 * @param {(node: Element, item: T) => void} update
 */
export function reconcile(parent, items, cache, keyOf, create, update) {
  const wanted = new Map();
  for (const item of items) wanted.set(keyOf(item), item);
  for (const [key, node] of cache) {
    if (!wanted.has(key)) {
      node.remove();
      cache.delete(key);
    }
  }
  let cursor = parent.firstChild;
  for (const [key, item] of wanted) {
    let node = cache.get(key);
    if (!node) cache.set(key, node = create(item));
    update(node, item);
    if (cursor === node) cursor = cursor.nextSibling;
    else parent.insertBefore(node, cursor);
  }
  while (cursor) {
    const next = cursor.nextSibling;
    cursor.remove();
    cursor = next;
  }
}

let toastHost = null;
/** Shows a short message at the bottom of the screen. */
export function toast(message, kind = "info") {
  toastHost ??= $("toasts");
  const el = h("div", {
    class: `toast toast-${kind}`,
    text: message,
    testid: "toast",
    attrs: { role: "status" },
  });
  toastHost.append(el);
  setTimeout(() => el.classList.add("out"), 3500);
  setTimeout(() => el.remove(), 4000);
}

/**
 * Schedules `fn` once per animation frame, however often it is asked for. Hidden tabs get no
 * animation frames, so there a timer is used: the tab title's unread count must still update.
 */
export function frameScheduler(fn) {
  let pending = false;
  const run = () => {
    if (!pending) return;
    pending = false;
    fn();
  };
  return () => {
    if (pending) return;
    pending = true;
    if (document.hidden) setTimeout(run, 50);
    else {
      requestAnimationFrame(run);
      setTimeout(run, 250); // In case the tab is hidden before the frame comes.
    }
  };
}
