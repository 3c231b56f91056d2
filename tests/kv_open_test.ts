import assert from "node:assert/strict";
import { isLocalKvPath, openKv } from "../chat/kv_open.ts";

Deno.test("kv_open: which paths are local files", () => {
  assert.equal(isLocalKvPath("data/chat.kv"), true);
  assert.equal(isLocalKvPath("chat.kv"), true);
  assert.equal(isLocalKvPath(":memory:"), false);
  assert.equal(isLocalKvPath(""), false);
  assert.equal(isLocalKvPath(undefined), false);
  assert.equal(isLocalKvPath("https://api.deno.com/databases/x/connect"), false);
});

Deno.test("kv_open: creates the file's folder", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const kv = await openKv(`${dir}/nested/deeper/chat.kv`);
    await kv.set(["k"], 1);
    assert.equal((await kv.get<number>(["k"])).value, 1);
    kv.close();
    assert.equal((await Deno.stat(`${dir}/nested/deeper/chat.kv`)).isFile, true);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("kv_open: two workers opening one fresh file at once both succeed", async () => {
  // `Deno.openKv` alone fails in about one round in sixteen here with "database is locked".
  const dir = await Deno.makeTempDir();
  const workers = [0, 1].map(() =>
    new Worker(new URL("./fixtures/kv_open_worker.ts", import.meta.url), { type: "module" })
  );
  const round = (path: string, raw: boolean) =>
    Promise.all(workers.map((worker) =>
      new Promise<string>((resolve) => {
        worker.onmessage = (event: MessageEvent<string>) => resolve(event.data);
        worker.postMessage({ path, raw });
      })
    ));
  try {
    const failures: string[] = [];
    let rawLocked = 0;
    for (let i = 0; i < 60; i++) {
      failures.push(...(await round(`${dir}/open-${i}.kv`, false)).filter((r) => r !== "ok"));
      const raw = await round(`${dir}/raw-${i}.kv`, true);
      rawLocked += raw.filter((r) => /locked/.test(r)).length;
    }
    console.log(`  Deno.openKv alone: ${rawLocked} of 120 opens locked; openKv: 0 expected`);
    assert.deepEqual(failures, []);
  } finally {
    for (const worker of workers) worker.terminate();
    await Deno.remove(dir, { recursive: true });
  }
});
