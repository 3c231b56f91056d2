/**
 * Desktop notifications of the web client in headless Chromium: a direct message to a hidden
 * tab shows one (after the user turned them on with the bell); a visible tab and lobby messages
 * do not. Headless Chromium grants the permission but shows nothing on screen, so the page's
 * `Notification` is wrapped to record what the client asked to show.
 */
import assert from "node:assert/strict";
import { launchChromium, openPage, signInAs, tid } from "./_browser.ts";
import { signIn, startServer, TestClient, uniqueName, until } from "./_harness.ts";

Deno.test("web client: a direct message to a hidden tab shows a desktop notification", async () => {
  await using server = await startServer();
  const browser = await launchChromium();
  try {
    const alice = await openPage(browser, server.url);
    await alice.context.grantPermissions(["notifications"], { origin: server.url });
    // Runs in the page before its scripts (plain JS: browser globals are not in Deno's types).
    await alice.page.addInitScript({
      content: `
        const Real = window.Notification;
        const shown = [];
        window.__shown = shown;
        function Recording(title, options) {
          shown.push({ title, body: options && options.body });
          try { return new Real(title, options); } catch { return { close() {}, onclick: null }; }
        }
        Object.defineProperty(Recording, "permission", { get: () => Real.permission });
        Recording.requestPermission = () => Real.requestPermission();
        window.Notification = Recording;
        Object.defineProperty(Document.prototype, "hidden", {
          configurable: true,
          get: () => window.__hidden === true,
        });
      `,
    });
    await alice.page.reload();
    await signInAs(alice, uniqueName("Alice"));
    await alice.page.click(tid("notify-toggle"));
    await alice.page.waitForSelector(tid("notify-toggle", '[aria-pressed="true"]'));

    const bob = await signIn(server.url, uniqueName("Bob"));
    await using cb = await TestClient.connect(server, bob.token);
    const shown = () =>
      alice.page.evaluate(() =>
        (globalThis as unknown as { __shown: { title: string; body?: string }[] }).__shown
      );

    // Visible tab: no notification.
    await cb.post({ to: alice.id }, "while you look");
    await alice.page.waitForSelector(`text=while you look`).catch(() => {});
    // Hidden tab: a lobby message does not notify, a direct message does.
    await alice.page.evaluate(() => {
      (globalThis as unknown as Record<string, unknown>).__hidden = true;
    });
    await cb.post("lobby", "lobby chatter");
    await cb.post({ to: alice.id }, "are you there?");
    await until(async () => (await shown()).length > 0, 10_000, "a notification");
    await cb.request({ type: "ping" }, "pong");
    const all = await shown();
    assert.deepEqual(all, [{ title: bob.user.name, body: "are you there?" }]);
    await alice.context.close();
  } finally {
    await browser.close();
  }
});
