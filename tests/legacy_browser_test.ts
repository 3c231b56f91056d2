/**
 * A real browser: a plain page in the style of the seed clients (tests/fixtures/seed_client.html,
 * served from another origin like a user's own page) in headless Chromium, chatting with a client
 * of our protocol in the lobby, a direct conversation and a group, and receiving a push.
 *
 * Needs Chromium at /usr/bin/chromium (`apt-get install -y chromium`), or CHROMIUM_PATH.
 */
import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import { legacySockets } from "../routes/legacy.ts";
import type { Frame } from "./_harness.ts";
import { signIn, startServer, TestClient, uniqueName } from "./_harness.ts";
import { launchChromium } from "./_browser.ts";

// The page functions below run in the browser, where this exists.
declare const document: { getElementById(id: string): { textContent: string | null } | null };

const ADMIN = "browser-admin-token-0123456789";
const PAGE = new URL("./fixtures/seed_client.html", import.meta.url);

/** Serves the seed page on a port of its own: another origin than the chat server. */
function servePage(): { url: string; [Symbol.asyncDispose](): Promise<void> } {
  const ac = new AbortController();
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", signal: ac.signal, onListen() {} },
    async () =>
      new Response(await Deno.readFile(PAGE), {
        headers: { "content-type": "text/html; charset=utf-8" },
      }),
  );
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    async [Symbol.asyncDispose]() {
      ac.abort();
      await server.finished;
    },
  };
}

/** Waits until the page's message list shows `text`. */
async function shows(page: Page, text: string): Promise<void> {
  try {
    await page.waitForFunction(
      (t) => document.getElementById("msg_list")!.textContent!.includes(t),
      text,
      { timeout: 10_000 },
    );
  } catch (error) {
    const list = await page.evaluate(() => document.getElementById("msg_list")!.textContent);
    throw new Error(`The page does not show ${JSON.stringify(text)}; it shows: ${list}`, {
      cause: error,
    });
  }
}

/** Types a message the way a user does: into the textarea, then Enter. */
async function say(page: Page, text: string, to: { uid?: string; gid?: string } = {}) {
  await page.fill("#uid", to.uid ?? "");
  await page.fill("#gid", to.gid ?? "");
  await page.fill("#msg_box", text);
  await page.press("#msg_box", "Enter");
}

Deno.test({
  name: "a seed-style page in headless Chromium chats with our client: lobby, pm, group, push",
  async fn() {
    await using server = await startServer({
      config: { CHAT_ADMIN_TOKEN: ADMIN },
      app: { sockets: legacySockets },
    });
    await using site = servePage();
    const bob = await signIn(server.url, uniqueName("bob"));
    await using cb = await TestClient.connect(server, bob.token);

    const browser = await launchChromium();
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on("pageerror", (error) => errors.push(String(error)));
      page.on("dialog", (dialog) => {
        errors.push(`dialog: ${dialog.message()}`);
        void dialog.dismiss();
      });
      const name = uniqueName("lin");
      const query = new URLSearchParams({ ws: `${server.ws}/`, name });
      await page.goto(`${site.url}/?${query}`);

      // Handshake → login: the page lists both users and says it is online.
      await shows(page, `系统消息: ${name} 已上线`);
      await page.waitForFunction(
        ([a, b]) => {
          const list = document.getElementById("user_list")!.textContent!;
          return list.includes(a) && list.includes(b);
        },
        [name, bob.user.name],
      );
      const online = await cb.next(
        "presence",
        (f) => f.changes.some((c: Frame) => c.user.name === name && c.online),
      );
      const lin = online.changes.find((c: Frame) => c.user.name === name).user;

      // Lobby, both ways.
      await say(page, "大家好 from Chromium");
      const m = await cb.next("message", (f) => f.conv === "lobby" && f.from === lin.id);
      assert.equal(m.text, "大家好 from Chromium");
      await shows(page, `${name}: 大家好 from Chromium`);
      await cb.post("lobby", `hi <img src=x onerror="window.__xss=1"> there`);
      await shows(page, `${bob.user.name}: hi <img src=x onerror="window.__xss=1"> there`);

      // Private messages, by name from the page, by id from ours.
      await say(page, "just for you", { uid: bob.user.name });
      const dm = await cb.next("message", (f) => f.conv.startsWith("d:") && f.from === lin.id);
      assert.equal(dm.text, "just for you");
      await cb.post({ to: lin.id }, "private reply");
      await shows(page, `私聊 ${bob.user.name}: private reply`);

      // A group: our client creates it and adds the page's user, who then writes to it.
      cb.send({ type: "group.create", name: "browser group", public: false });
      const made = await cb.next("conversation", (f) => f.conversation.title === "browser group");
      const gid = made.conversation.group.id as string;
      cb.send({ type: "group.add", group: gid, user: lin.id });
      await shows(page, `系统消息: ${bob.user.name} added ${name}`);
      await say(page, "hello group", { gid });
      const gm = await cb.next("message", (f) => f.conv === `g:${gid}` && f.from === lin.id);
      assert.equal(gm.text, "hello group");
      await cb.post(`g:${gid}`, "group reply");
      await shows(page, `群 ${gid} ${bob.user.name}: group reply`);

      // Server push to the page's user arrives as a system message.
      const res = await fetch(`${server.url}/api/push`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
        body: JSON.stringify({ to: { user: lin.id }, text: "Pushed by the admin" }),
      });
      assert.equal(res.status, 200);
      assert.equal((await res.json()).delivered.online, 1);
      await shows(page, "系统消息: Pushed by the admin");

      // No markup from others ran, nothing failed.
      assert.equal(await page.evaluate(() => (window as { __xss?: number }).__xss), undefined);
      assert.equal(await page.locator("#msg_list img").count(), 0);
      assert.deepEqual(errors, []);

      // Closing the page logs the user out for everyone.
      await page.close();
      await cb.next(
        "presence",
        (f) => f.changes.some((c: Frame) => c.user.id === lin.id && !c.online),
      );
    } finally {
      await browser.close();
    }
  },
});
