/** The HTTP API (same origin; the session is an HttpOnly cookie, so no token is kept here). */

export class ApiError extends Error {
  /**
   * @param {number} status HTTP status (0 when the server could not be reached)
   * @param {string} code stable error code from the server, or `http_<status>` / `network`
   * @param {string} message
   */
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

async function request(method, path, body) {
  let res;
  try {
    res = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: body === undefined
        ? { accept: "application/json" }
        : { accept: "application/json", "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "network", "Cannot reach the server. Check your connection.");
  }
  let data = null;
  try {
    data = await res.json();
  } catch {
    // Empty or non-JSON body.
  }
  if (!res.ok) {
    throw new ApiError(
      res.status,
      data?.error?.code ?? `http_${res.status}`,
      data?.error?.message ?? (res.statusText || `Request failed (${res.status})`),
    );
  }
  return data;
}

/** A free, unique default name. */
export async function suggestName() {
  const data = await request("GET", "/api/names/suggest");
  return typeof data?.name === "string" ? data.name : "";
}

/** Guest sign-in (no password) or password sign-in. Resolves to `{ user, expiresAt }`. */
export function signIn(name, password) {
  return request("POST", "/api/session", password ? { name, password } : { name });
}

/** Creates an account and signs in. */
export function register(name, password) {
  return request("POST", "/api/register", { name, password });
}

export function signOut() {
  return request("DELETE", "/api/session");
}

/** The signed-in user, or an ApiError with status 401. */
export async function me() {
  const data = await request("GET", "/api/me");
  return data.user;
}
