/**
 * Helpers for the web client tests: headless Chromium through playwright-core, pages of signed-in
 * users, and a server that can be stopped and started again on the same port and KV file.
 *
 * Needs Chromium at /usr/bin/chromium (`apt-get install -y chromium`), or CHROMIUM_PATH.
 *
 * @module
 */
import { chromium } from "playwright-core";
import type { Browser, BrowserContext, Page } from "playwright-core";
import type { Config } from "../chat/config.ts";
import { defaultConfig } from "../chat/config.ts";
import { createNode } from "../chat/node.ts";
import { createApp } from "../routes/app.ts";
import type { TestServer } from "./_harness.ts";
import { freePort, tempKvPath } from "./_harness.ts";

// Page functions run in the browser. Deno has no DOM types: these are the few names they use.
interface DomEl {
  dataset: Record<string, string | undefined>;
  textContent: string | null;
  hidden: boolean;
  value: string;
  querySelector(selector: string): DomEl | null;
}
declare const document: {
  querySelector(selector: string): DomEl | null;
  querySelectorAll(selector: string): Iterable<DomEl>;
  addEventListener(
    type: string,
    listener: (e: { violatedDirective: string; blockedURI: string }) => void,
  ): void;
};
declare function requestAnimationFrame(callback: () => void): number;

/** Where Chromium is. */
export const CHROMIUM = Deno.env.get("CHROMIUM_PATH") ?? "/usr/bin/chromium";

/** Viewports of the screenshots. */
export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

/** Launches headless Chromium; fails with what to do when it is not installed. */
export async function launchChromium(): Promise<Browser> {
  try {
    await Deno.stat(CHROMIUM);
  } catch {
    throw new Error(
      `Chromium is missing at ${CHROMIUM}: install it with \`apt-get install -y chromium\` ` +
        "(or point CHROMIUM_PATH at a Chromium binary). These tests need a real browser.",
    );
  }
  return await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
}

/** A CSS selector for a `data-testid`, with optional extra attribute selectors. */
export function tid(testid: string, more = ""): string {
  return `[data-testid="${testid}"]${more}`;
}

/** A page in a browser context of its own (its own cookies and storage: one user). */
export interface UserPage {
  context: BrowserContext;
  page: Page;
  /** Uncaught page errors, console errors (CSP violations included), dialogs that opened. */
  errors: string[];
  console: string[];
  dialogs: string[];
  name: string;
  id: string;
}

/** Opens the client at `url` in a new context, recording errors and dialogs. */
export async function openPage(
  browser: Browser,
  url: string,
  options: { viewport?: { width: number; height: number }; phone?: boolean } = {},
): Promise<UserPage> {
  const context = await browser.newContext({
    viewport: options.viewport ?? DESKTOP,
    deviceScaleFactor: options.phone ? 2 : 1,
    isMobile: options.phone ?? false,
    hasTouch: options.phone ?? false,
    locale: "en-GB",
    timezoneId: "UTC",
  });
  context.setDefaultTimeout(10_000);
  const page = await context.newPage();
  const user: UserPage = { context, page, errors: [], console: [], dialogs: [], name: "", id: "" };
  page.on("pageerror", (error) => user.errors.push(String(error)));
  page.on("console", (m) => {
    if (m.type() === "error") user.console.push(m.text());
  });
  page.on("dialog", (dialog) => {
    user.dialogs.push(`${dialog.type()}: ${dialog.message()}`);
    void dialog.dismiss().catch(() => {});
  });
  await page.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => {
      console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  await page.goto(url);
  return user;
}

/** Signs in as a guest named `name` from the sign-in screen and waits until online. */
export async function signInAs(user: UserPage, name: string): Promise<UserPage> {
  const { page } = user;
  // The name field is pre-filled with a suggestion; wait for it so it does not overwrite ours.
  await page.waitForFunction(
    () => document.querySelector('[data-testid="signin-name"]')?.value,
  );
  await page.fill(tid("signin-name"), name);
  await page.click(tid("signin-button"));
  await page.waitForSelector(tid("connection-state", '[data-state="online"]'));
  const me = await page.evaluate(async () => (await (await fetch("/api/me")).json()).user);
  user.name = me.name;
  user.id = me.id;
  return user;
}

/** Opens a page and signs in. */
export async function openUser(
  browser: Browser,
  url: string,
  name: string,
  options: { viewport?: { width: number; height: number }; phone?: boolean } = {},
): Promise<UserPage> {
  return await signInAs(await openPage(browser, url, options), name);
}

/** Puts `text` in the composer and presses Enter. */
export async function say(page: Page, text: string): Promise<void> {
  await page.fill(tid("composer"), text);
  await page.press(tid("composer"), "Enter");
}

/** Waits until a message with exactly this text is shown (optionally with more attributes). */
export async function shows(page: Page, text: string, more = ""): Promise<void> {
  try {
    await page.waitForFunction(
      ([t, sel]) =>
        [...document.querySelectorAll(sel)].some((m) =>
          m.querySelector(".msg-text")?.textContent === t
        ),
      [text, tid("message", more)] as const,
    );
  } catch (error) {
    throw new Error(
      `The page does not show ${JSON.stringify(text)}${more ? ` as ${more}` : ""}; it shows: ${
        JSON.stringify((await shownMessages(page)).slice(-10))
      }`,
      { cause: error },
    );
  }
}

/** A message row as shown. */
export interface ShownMessage {
  text: string;
  id: string;
  seq: number | null;
  status: string | null;
  from: string;
}

/** The messages of the open conversation, top to bottom. */
export function shownMessages(page: Page): Promise<ShownMessage[]> {
  return page.$$eval(tid("message"), (els) =>
    els.map((e) => {
      const el = e as unknown as DomEl;
      return {
        text: el.querySelector(".msg-text")?.textContent ?? "",
        id: el.dataset.id ?? "",
        seq: el.dataset.seq ? Number(el.dataset.seq) : null,
        status: el.dataset.status ?? null,
        from: el.dataset.from ?? "",
      };
    }));
}

/** Saves a screenshot into docs/screenshots/. */
export async function screenshot(page: Page, file: string): Promise<void> {
  const dir = new URL("../docs/screenshots/", import.meta.url);
  await Deno.mkdir(dir, { recursive: true });
  // Let layout settle (fonts, the frame after the last render) before the shot.
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r(null))));
  await page.screenshot({ path: new URL(file, dir).pathname });
}

/**
 * A server on a fixed port and KV file that can be stopped and started again: the same address
 * and the same data, as after a restart. `server` is the running one (undefined while stopped).
 */
export class RestartableServer {
  readonly port: number;
  readonly kvPath: string;
  readonly url: string;
  readonly ws: string;
  readonly #config: Partial<Config>;
  server: TestServer | undefined;

  private constructor(port: number, kvPath: string, config: Partial<Config>) {
    this.port = port;
    this.kvPath = kvPath;
    this.#config = config;
    this.url = `http://127.0.0.1:${port}`;
    this.ws = this.url.replace("http", "ws");
  }

  /** Starts a server on a free port and a fresh KV file. */
  static async create(config: Partial<Config> = {}): Promise<RestartableServer> {
    const s = new RestartableServer(freePort(), await tempKvPath(), config);
    await s.start();
    return s;
  }

  /** Starts the server again on the same port and KV file. */
  async start(): Promise<void> {
    if (this.server) throw new Error("Already running");
    const kv = await Deno.openKv(this.kvPath);
    const config = defaultConfig({
      CHAT_BUS: ["none"],
      CHAT_LOG_LEVEL: "silent",
      CHAT_SIGNIN_PER_MINUTE: 10_000,
      ...this.#config,
    });
    const node = await createNode({ kv, config });
    const app = createApp(node);
    const ac = new AbortController();
    const server = Deno.serve(
      { port: this.port, hostname: "127.0.0.1", signal: ac.signal, onListen() {} },
      (req, info) => app.fetch(req, info),
    );
    let closed = false;
    const close = async () => {
      if (closed) return;
      closed = true;
      await node.shutdown();
      ac.abort();
      await server.finished;
      kv.close();
    };
    this.server = {
      url: this.url,
      ws: this.ws,
      node,
      kv,
      close,
      [Symbol.asyncDispose]: close,
    };
  }

  /** Stops the server the way a deploy does (clients are told to reconnect); keeps the data. */
  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    await s?.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}
