/**
 * The page's HTTP side without a browser: GET / redirects to /ui/ (keeping
 * ?token=), the static files come with their types and a same-origin CSP,
 * /ui/admission answers with the reason an upgrade would get, and nothing of
 * this is served when the gateway has no page. (The page itself runs in
 * Chromium in tests/ui.)
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { startGateway, TestClient, type TestGateway } from "./helpers/harness.js";
import { ScriptedWorker } from "./helpers/scripted-worker.js";

describe("browser page: static serving and the admission probe", () => {
  let w: ScriptedWorker;
  let gw: TestGateway;
  before(async () => {
    w = await new ScriptedWorker().start();
    gw = await startGateway([w.address], { AUTH_TOKEN: "probe-token-1", MAX_SESSIONS: "1", RETRY_AFTER_SECONDS: "4" }, { ui: true });
  });
  after(async () => {
    await gw.stop();
    await w.stop();
  });

  test("GET / redirects to ui/ keeping the query; the page's files are served with their types", async () => {
    const r = await fetch(`${gw.http}/?token=abc`, { redirect: "manual" });
    assert.equal(r.status, 302);
    assert.equal(r.headers.get("location"), "ui/?token=abc");
    const index = await fetch(`${gw.http}/ui/`);
    assert.equal(index.status, 200);
    assert.match(index.headers.get("content-type") ?? "", /^text\/html/);
    assert.match(index.headers.get("content-security-policy") ?? "", /script-src 'self'/);
    const html = await index.text();
    for (const asset of ["app.js", "style.css"]) assert.ok(html.includes(`"${asset}"`), `index.html links ${asset}`);
    for (const [file, type] of [["app.js", /^text\/javascript/], ["pcm-worklet.js", /^text\/javascript/], ["style.css", /^text\/css/]] as const) {
      const res = await fetch(`${gw.http}/ui/${file}`);
      assert.equal(res.status, 200, file);
      assert.match(res.headers.get("content-type") ?? "", type, file);
      assert.ok((await res.text()).length > 100, `${file} has content`);
    }
    assert.equal((await fetch(`${gw.http}/ui/missing.js`)).status, 404);
    assert.equal((await fetch(`${gw.http}/ui/../package.json`)).status !== 200, true, "no path escapes the page's folder");
  });

  test("the page needs no other origin: every src/href in index.html is relative", async () => {
    const html = await (await fetch(`${gw.http}/ui/`)).text();
    const refs = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]!);
    assert.ok(refs.length >= 2, "index.html references its assets");
    for (const ref of refs) assert.doesNotMatch(ref, /^(https?:)?\/\//, `external reference ${ref}`);
  });

  test("GET /ui/admission gives the upgrade's answer: 401 without the token, 200 with it, 503 + Retry-After at MAX_SESSIONS", async () => {
    const noToken = await fetch(`${gw.http}/ui/admission`);
    assert.equal(noToken.status, 401);
    assert.equal(((await noToken.json()) as { admitted: boolean }).admitted, false);
    const ok = await fetch(`${gw.http}/ui/admission?token=probe-token-1`);
    assert.equal(ok.status, 200);
    assert.deepEqual(await ok.json(), { admitted: true });

    const held = await TestClient.connect(`${gw.url}/?token=probe-token-1`);
    try {
      const full = await fetch(`${gw.http}/ui/admission?token=probe-token-1`);
      assert.equal(full.status, 503);
      assert.equal(full.headers.get("retry-after"), "4");
      const body = (await full.json()) as { error: string; retry_after_seconds: number };
      assert.match(body.error, /MAX_SESSIONS/);
      assert.equal(body.retry_after_seconds, 4);
    } finally {
      held.close();
    }
  });

  test("without a page, / and /ui/ stay what they were: 426 for a plain GET", async () => {
    const bare = await startGateway([w.address]);
    try {
      assert.equal((await fetch(`${bare.http}/`, { redirect: "manual" })).status, 426);
      assert.equal((await fetch(`${bare.http}/ui/`)).status, 426);
      assert.equal((await fetch(`${bare.http}/ui/admission`)).status, 426);
    } finally {
      await bare.stop();
    }
  });
});
