/**
 * The WebSocket connection: connect, welcome → resume handshake, heartbeat, and reconnection
 * with exponential backoff and jitter. It knows nothing about chat state: the caller supplies
 * `onWelcome` (returns the `since` map for `resume`), `onReady` (flush the outbox, load history),
 * `onFrame` and `onState`.
 */
import * as api from "./api.js";

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 10_000;
const PING_EVERY_MS = 25_000;
const DEAD_AFTER_MS = 60_000;
/** Close codes after which the server expects us back at once (restart, overload, going away). */
const QUICK_CODES = new Set([1001, 1012, 1013]);

function socketUrl() {
  // `batch=1`: the frames of one server tick arrive as one `batch` frame (docs/protocol.md).
  return (location.protocol === "https:" ? "wss:" : "ws:") + "//" + location.host + "/ws?batch=1";
}

export class Connection {
  /**
   * @param {{
   *   onWelcome: (frame: object) => Record<string, number>,
   *   onReady: () => void,
   *   onFrame: (frame: object) => void,
   *   onState: (state: {state: string, retryAt: number}) => void,
   *   onAuthLost: () => void,
   * }} handlers
   */
  constructor(handlers) {
    this.h = handlers;
    this.ws = null;
    this.ready = false;
    this.stopped = true;
    this.attempt = 0;
    this.retryTimer = 0;
    this.pingTimer = 0;
    this.lastRx = 0;
    this.onOnline = () => this.#wake();
    this.onVisible = () => {
      if (!document.hidden) this.#wake();
    };
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.attempt = 0;
    addEventListener("online", this.onOnline);
    document.addEventListener("visibilitychange", this.onVisible);
    this.#connect();
  }

  /** Closes for good (sign-out). */
  stop() {
    this.stopped = true;
    removeEventListener("online", this.onOnline);
    document.removeEventListener("visibilitychange", this.onVisible);
    clearTimeout(this.retryTimer);
    this.#detach("Signed out");
    this.#state("offline", 0);
  }

  /** Sends a frame if the connection is live (welcomed and resumed); returns whether it did. */
  send(frame) {
    if (!this.ready || this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** The server asked us to move (a `reconnect` frame): go now, with a little jitter. */
  reconnectSoon() {
    this.#drop(true);
  }

  #state(state, retryAt) {
    this.h.onState({ state, retryAt });
  }

  #connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    if (this.stopped) return;
    this.#state(this.attempt === 0 ? "connecting" : "reconnecting", 0);
    let ws;
    try {
      ws = new WebSocket(socketUrl());
    } catch {
      this.#schedule(false);
      return;
    }
    this.ws = ws;
    this.ready = false;
    let welcomed = false;
    ws.onmessage = (event) => {
      this.lastRx = Date.now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame?.type === "batch" && Array.isArray(frame.frames)) {
        for (const f of frame.frames) {
          if (this.ws !== ws) return;
          handle(f);
        }
      } else handle(frame);
    };
    const handle = (frame) => {
      if (!frame || typeof frame.type !== "string") return;
      if (frame.type === "welcome") {
        welcomed = true;
        this.attempt = 0;
        const since = this.h.onWelcome(frame);
        ws.send(JSON.stringify({ type: "resume", since }));
        this.ready = true;
        this.#state("online", 0);
        this.h.onReady();
        return;
      }
      if (frame.type === "reconnect") {
        this.h.onFrame(frame);
        this.#drop(true);
        return;
      }
      this.h.onFrame(frame);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.ready = false;
      clearInterval(this.pingTimer);
      if (this.stopped) return;
      if (!welcomed) {
        // Refused before the welcome: maybe the session is gone. Ask over HTTP.
        api.me().then(
          () => this.#schedule(false),
          (error) => {
            if (this.stopped) return;
            if (error.status === 401) this.h.onAuthLost();
            else this.#schedule(false);
          },
        );
        return;
      }
      this.#schedule(QUICK_CODES.has(event.code));
    };
    ws.onerror = () => {
      // onclose follows.
    };
    clearInterval(this.pingTimer);
    this.lastRx = Date.now();
    this.pingTimer = setInterval(() => this.#heartbeat(), PING_EVERY_MS);
  }

  #heartbeat() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - this.lastRx > DEAD_AFTER_MS) {
      this.#drop(false);
      return;
    }
    if (this.ready) this.ws.send(JSON.stringify({ type: "ping", t: Date.now() }));
  }

  /** Closes the current socket and schedules a new one. */
  #drop(quick) {
    this.#detach("Reconnecting");
    if (!this.stopped) this.#schedule(quick);
  }

  /** Stops the heartbeat and closes the current socket without hearing from it again. */
  #detach(reason) {
    const ws = this.ws;
    this.ws = null;
    this.ready = false;
    clearInterval(this.pingTimer);
    if (!ws) return;
    ws.onclose =
      ws.onmessage =
      ws.onerror =
      ws.onopen =
        null;
    try {
      ws.close(1000, reason);
    } catch {
      // Already closed.
    }
  }

  #schedule(quick) {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    let delay;
    if (quick) {
      delay = 100 + Math.random() * 900;
    } else {
      const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
      delay = ceiling / 2 + Math.random() * (ceiling / 2);
      this.attempt++;
    }
    if (this.attempt === 0) this.attempt = 1;
    const retryAt = Date.now() + delay;
    this.#state("reconnecting", retryAt);
    this.retryTimer = setTimeout(() => this.#connect(), delay);
  }

  /** The network came back or the tab became visible: skip the rest of the wait. */
  #wake() {
    if (this.stopped || this.ws || !this.retryTimer) return;
    this.#connect();
  }
}
