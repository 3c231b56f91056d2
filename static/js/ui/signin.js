/**
 * The sign-in screen: a name pre-filled with a free default, an optional password. No password:
 * guest sign-in. With a password: sign in, or create an account.
 */
import * as api from "../api.js";
import { $, setText } from "./dom.js";

let onSignedIn = () => {};
let busy = false;

export function init(signedIn) {
  onSignedIn = signedIn;
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    go("signin");
  });
  $("register-button").addEventListener("click", () => go("register"));
  $("signin-shuffle").addEventListener("click", () => suggest(true));
  $("signin-password").addEventListener("input", updateLabels);
  $("signin-name").addEventListener("input", () => showError(""));
}

/** Shows the screen, with an optional message (e.g. "your session ended"). */
export function show(message = "") {
  $("signin").hidden = false;
  $("signin-name").value = "";
  $("signin-password").value = "";
  showError(message);
  updateLabels();
  suggest(false);
  $("signin-name").focus();
}

export function hide() {
  $("signin").hidden = true;
}

async function suggest(force) {
  const input = $("signin-name");
  try {
    const name = await api.suggestName();
    if (name && (force || !input.value)) {
      input.value = name;
      input.select();
    }
  } catch (error) {
    if (force) showError(error.message);
  }
}

function updateLabels() {
  const hasPassword = $("signin-password").value.length > 0;
  setText($("signin-button"), hasPassword ? "Sign in" : "Continue as guest");
  $("register-button").disabled = !hasPassword;
  setText(
    $("signin-hint"),
    hasPassword
      ? "Sign in to your account, or create one with this name and password."
      : "Without a password you join as a guest. Add one to sign in or create an account.",
  );
}

function showError(message) {
  const el = $("signin-error");
  setText(el, message);
  el.hidden = !message;
}

async function go(mode) {
  if (busy) return;
  const name = $("signin-name").value.trim();
  const password = $("signin-password").value;
  if (!name) {
    showError("Please enter a name.");
    $("signin-name").focus();
    return;
  }
  if (mode === "register" && !password) {
    showError("Choose a password to create an account.");
    $("signin-password").focus();
    return;
  }
  busy = true;
  for (const id of ["signin-button", "register-button"]) $(id).disabled = true;
  showError("");
  try {
    const result = mode === "register"
      ? await api.register(name, password)
      : await api.signIn(name, password);
    hide();
    onSignedIn(result.user);
  } catch (error) {
    showError(explain(error, mode, !!password));
  } finally {
    busy = false;
    $("signin-button").disabled = false;
    updateLabels();
  }
}

function explain(error, mode, withPassword) {
  if (error.status === 409) {
    return mode === "register"
      ? "That name is taken. Pick another one."
      : withPassword
      ? "That name is in use by a guest right now. Pick another one."
      : "That name is taken. Pick another one, or sign in with its password.";
  }
  if (error.status === 401 || error.status === 403) {
    return withPassword
      ? "Wrong name or password."
      : "That name belongs to an account: enter its password.";
  }
  if (error.status === 429) return "Too many attempts. Wait a moment and try again.";
  return error.message || "Sign-in failed.";
}
