/**
 * The gateway's browser page in REAL headless Chromium (Debian's `chromium`
 * driven by playwright-core), against a real gateway in front of the real
 * Python worker (fake engine: real VAD, deterministic text with token
 * times). The microphone is Chromium's fake capture device playing a shared
 * recording, so the page's whole path runs: getUserMedia, the AudioWorklet's
 * 16 kHz PCM16 frames, the FunASR protocol over the WebSocket, the display.
 *
 * Screenshots are kept in test-output/ui/ (gitignored; UI_TEST_OUTPUT moves
 * it) so that a person can look at what the page showed.
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { chromium, type BrowserContext, type Page } from "playwright-core";
import { AUDIO_SKIP_REASON, REPO_ROOT, sharedAudio, SKIP_REASON as WORKER_SKIP, startRealWorker, type RealWorker } from "../e2e/helpers/real-worker.js";
import { pcm, startGateway, TestClient, wavFile, type TestGateway } from "../gateway/helpers/harness.js";
import { ScriptedWorker } from "../gateway/helpers/scripted-worker.js";

/** Debian's chromium (apt-get install chromium; .ci/run installs it, with a CJK font, when run as root). */
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const CHROMIUM_SKIP: string | false = existsSync(CHROMIUM) ? false : `chromium not found at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`;
const SKIP_REASON = CHROMIUM_SKIP || WORKER_SKIP || AUDIO_SKIP_REASON;

/** Where screenshots go. */
const OUTPUT_DIR = process.env.UI_TEST_OUTPUT ?? path.join(REPO_ROOT, "test-output", "ui");
const MIC_WAV = "zh/damo.wav";
const FILE_WAV = "synth/three_utterances.wav";
const TOKEN = "page-test-token";
/**
 * The status once a session has ended, well or not. Waiting for "not busy" instead raced the
 * page: right after a click the status can still be idle (the file is being read), which
 * matched at once.
 */
const ENDED = '#status[data-state="done"], #status[data-state="error"]';
/** What Chromium needs on a CI network with no outside access (each run also gets a fresh profile). */
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

describe("browser page in headless Chromium", { skip: SKIP_REASON }, () => {
  let worker: RealWorker;
  let gw: TestGateway;
  let refusing: TestGateway;
  let profile: string;
  let browser: BrowserContext;

  before(async () => {
    mkdirSync(OUTPUT_DIR, { recursive: true });
    worker = await startRealWorker(["--engine", "fake"]);
    gw = await startGateway([worker.address], { AUTH_TOKEN: TOKEN }, { ui: true });
    assert.equal(gw.pool.servingCount(), 1, "worker never reported SERVING");
    // A gateway whose only worker address has nothing listening: every session is refused with 503.
    refusing = await startGateway(["127.0.0.1:1"], { RETRY_AFTER_SECONDS: "9" }, { ui: true, waitServing: false });
    profile = mkdtempSync(path.join(tmpdir(), "asr-ui-chromium-"));
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      timeout: 60_000,
      args: [
        ...CHROMIUM_ARGS,
        // The fake microphone plays this recording (looping) and is granted without a prompt.
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        `--use-file-for-fake-audio-capture=${sharedAudio(MIC_WAV)}`,
        "--autoplay-policy=no-user-gesture-required",
      ],
    });
  });
  after(async () => {
    await browser?.close();
    if (profile !== undefined) rmSync(profile, { recursive: true, force: true });
    await refusing?.stop();
    await gw?.stop();
    await worker?.stop();
  });

  async function openPage(base: string, query = "", initScript?: string): Promise<Page> {
    const page = await browser.newPage();
    page.on("pageerror", (e) => process.stderr.write(`page error: ${e.message}\n`));
    if (initScript !== undefined) await page.addInitScript(initScript);
    // GET / redirects to the page at /ui/.
    const res = await page.goto(`${base}/${query}`);
    assert.equal(res?.status(), 200);
    assert.ok(page.url().startsWith(`${base}/ui/`), `landed on ${page.url()}`);
    return page;
  }

  async function finalTexts(page: Page): Promise<string[]> {
    return page.locator("#finals li.final .text").allTextContents();
  }

  test("mic session: the fake microphone streams 60 ms frames of 16 kHz PCM16 in 2pass, partials update in place, Stop brings the finals", async (t) => {
    // Record every binary frame the page sends: [time ms, bytes].
    const page = await openPage(
      gw.http,
      "",
      `(() => {
        window.sentFrames = [];
        const send = WebSocket.prototype.send;
        WebSocket.prototype.send = function (d) {
          if (typeof d !== "string") window.sentFrames.push([performance.now(), d.byteLength]);
          return send.call(this, d);
        };
      })()`,
    );
    await page.fill("#token", TOKEN);
    await page.selectOption("#mode", "2pass");
    // Count the partial line's updates and the longest text it held (it is one element, updated in place).
    await page.evaluate(`(() => {
      const el = document.getElementById("partial");
      window.partialUpdates = 0;
      window.partialLongest = 0;
      new MutationObserver(() => {
        window.partialUpdates++;
        window.partialLongest = Math.max(window.partialLongest, el.textContent.length);
      }).observe(el, { childList: true, characterData: true, subtree: true });
    })()`);
    await page.click("#micStart");
    await page.waitForSelector('#status[data-state="busy"]:has-text("Listening")', { timeout: 30_000 });
    // Real-time capture: wait for recognized speech (a partial or a VAD final), then stop.
    await page.waitForSelector("#partial:not(:empty), #finals li.final", { timeout: 30_000 });
    await page.click("#micStop");
    await page.waitForSelector(ENDED, { timeout: 30_000 });
    const status = await page.textContent("#status");
    await page.screenshot({ path: path.join(OUTPUT_DIR, "mic-session.png"), fullPage: true });
    assert.equal(await page.getAttribute("#status", "data-state"), "done", `status: ${status}`);
    const texts = await finalTexts(page);
    assert.ok(texts.length >= 1 && texts.every((t) => t.length > 0), `finals: ${JSON.stringify(texts)}`);
    assert.equal(await page.textContent("#partial"), "", "the partial line was replaced by the final");
    assert.ok(((await page.evaluate("window.partialLongest")) as number) > 0, "a partial was shown before the final");
    assert.ok(((await page.evaluate("window.partialUpdates")) as number) >= 2, "the partial line was updated, then cleared");
    const frames = (await page.evaluate("window.sentFrames")) as Array<[number, number]>;
    assert.ok(frames.length >= 20, `only ${frames.length} frames`);
    // Every frame but the flushed last one is 960 samples of 16-bit PCM (60 ms at 16 kHz).
    assert.deepEqual([...new Set(frames.slice(0, -1).map((f) => f[1]))], [1920]);
    // Real-time capture resampled to 16 kHz: 32,000 bytes per second of wall time (audio callbacks come in bursts: 15 %).
    const bytes = frames.slice(1, -1).reduce((a, f) => a + f[1], 0);
    const rate = bytes / ((frames.at(-2)![0] - frames[0]![0]) / 1000);
    assert.ok(Math.abs(rate - 32_000) < 32_000 * 0.15, `${Math.round(rate)} bytes/s of PCM`);
    t.diagnostic(`${frames.length} frames, ${Math.round(rate)} bytes/s of PCM`);
    await page.close();
  });

  test("mic session in offline mode: nothing until Stop, then one offline final", async () => {
    const page = await openPage(gw.http, `?token=${TOKEN}`);
    await page.selectOption("#mode", "offline");
    await page.click("#micStart");
    await page.waitForSelector('#status[data-state="busy"]:has-text("Listening")', { timeout: 30_000 });
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(await page.locator("#finals li.final").count(), 0, "offline mode shows nothing before the end of input");
    await page.click("#micStop");
    await page.waitForSelector(ENDED, { timeout: 30_000 });
    assert.equal(await page.getAttribute("#status", "data-state"), "done", `status: ${await page.textContent("#status")}`);
    const texts = await finalTexts(page);
    assert.equal(texts.length, 1, JSON.stringify(texts));
    assert.ok(texts[0]!.length > 0, "the offline final has text");
    await page.close();
  });

  test("file session: a WAV in offline mode gives the same one final as a WebSocket client, with its times and token timestamps", async () => {
    const page = await openPage(gw.http, `?token=${TOKEN}`);
    await page.setInputFiles("#file", sharedAudio(FILE_WAV));
    await page.click("#fileStart");
    await page.waitForSelector(ENDED, { timeout: 60_000 });
    await page.screenshot({ path: path.join(OUTPUT_DIR, "file-session.png"), fullPage: true });
    assert.equal(await page.getAttribute("#status", "data-state"), "done", `status: ${await page.textContent("#status")}`);

    const ws = await TestClient.connect(`${gw.url}/?token=${TOKEN}`);
    ws.json({ mode: "offline", wav_name: "three", wav_format: "wav", is_speaking: true });
    ws.ws.send(readFileSync(sharedAudio(FILE_WAV)));
    ws.json({ is_speaking: false });
    const msgs = await ws.until((m) => m.some((x) => x.mode === "offline" && x.is_final), 30_000);
    ws.close();
    const expected = msgs.find((x) => x.mode === "offline")!;
    assert.deepEqual(await finalTexts(page), [expected.text]);
    const time = await page.textContent("#finals li.final .time");
    assert.match(time ?? "", /^00:0\d\.\d\d – 00:2\d\.\d\d$/, "the span of the file's speech");
    const tokens = await page.locator("#finals li.final .token").count();
    assert.equal(tokens, JSON.parse(expected.timestamp!).length, "one chip per timed token");
    await page.close();
  });

  test("refused connection: no worker gives the 503 reason and Retry-After; a wrong token says a token is required; an unreachable server says so", async () => {
    const page = await openPage(refusing.http);
    await page.setInputFiles("#file", sharedAudio(MIC_WAV));
    await page.click("#fileStart");
    await page.waitForSelector('#status[data-state="error"]', { timeout: 30_000 });
    await page.screenshot({ path: path.join(OUTPUT_DIR, "refused.png"), fullPage: true });
    const status = (await page.textContent("#status")) ?? "";
    assert.match(status, /refused the connection \(HTTP 503\): no recognition worker is available\. Retry after 9 s\./);
    await page.close();

    const wrong = await openPage(gw.http, "?token=not-the-token");
    await wrong.setInputFiles("#file", sharedAudio(MIC_WAV));
    await wrong.click("#fileStart");
    await wrong.waitForSelector('#status[data-state="error"]', { timeout: 30_000 });
    assert.match((await wrong.textContent("#status")) ?? "", /HTTP 401\): a valid token is required/);
    await wrong.close();

    // Nothing listening at the address typed into the Server field.
    const gone = await openPage(gw.http);
    await gone.fill("#server", "ws://127.0.0.1:1/");
    await gone.setInputFiles("#file", sharedAudio(MIC_WAV));
    await gone.click("#fileStart");
    await gone.waitForSelector('#status[data-state="error"]', { timeout: 30_000 });
    assert.match((await gone.textContent("#status")) ?? "", /Could not connect to http:\/\/127\.0\.0\.1:1: the server is unreachable/);
    await gone.close();
  });
});

describe("browser page against a scripted worker: options reach the worker, server errors are shown", { skip: CHROMIUM_SKIP }, () => {
  let w: ScriptedWorker;
  let gw: TestGateway;
  let profile: string;
  let dir: string;
  let file: string;
  let browser: BrowserContext;
  before(async () => {
    w = await new ScriptedWorker().start();
    gw = await startGateway([w.address], {}, { ui: true });
    profile = mkdtempSync(path.join(tmpdir(), "asr-ui-chromium-"));
    dir = mkdtempSync(path.join(tmpdir(), "asr-ui-file-"));
    file = path.join(dir, "speech.wav");
    writeFileSync(file, wavFile(pcm([{ silence: 200 }, { speech: 800 }, { silence: 400 }]), 16000));
    browser = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, timeout: 60_000, args: CHROMIUM_ARGS });
  });
  after(async () => {
    await browser?.close();
    for (const d of [profile, dir]) if (d !== undefined) rmSync(d, { recursive: true, force: true });
    await gw?.stop();
    await w?.stop();
  });

  test("hotwords, ITN off and the file's name arrive in the worker's offline config", async () => {
    const page = await browser.newPage();
    await page.goto(`${gw.http}/ui/`);
    await page.fill("#hotwords", "阿里巴巴 20\n达摩院 10");
    await page.uncheck("#itn");
    await page.setInputFiles("#file", file);
    await page.click("#fileStart");
    await page.waitForSelector(ENDED, { timeout: 30_000 });
    assert.equal(await page.getAttribute("#status", "data-state"), "done", `status: ${await page.textContent("#status")}`);
    const texts = await page.locator("#finals li.final .text").allTextContents();
    assert.equal(texts.length, 1, JSON.stringify(texts));
    assert.match(texts[0]!, /^S0w+$/);
    const cfg = w.calls.at(-1)!.configs[0] as { hotwords: Array<{ phrase: string; weight: number }>; itn: boolean; mode: number; wavName: string };
    assert.deepEqual(cfg.hotwords.map((h) => [h.phrase, h.weight]), [["阿里巴巴", 20], ["达摩院", 10]]);
    assert.equal(cfg.itn, false);
    assert.equal(cfg.mode, 1, "offline");
    assert.equal(cfg.wavName, "speech.wav");
    await page.close();
  });

  test("a session the server ends with an error: the error and the close code are shown", async () => {
    const small = await startGateway([w.address], { MAX_FILE_BYTES: "1024" }, { ui: true });
    try {
      const page = await browser.newPage();
      await page.goto(`${small.http}/ui/`);
      await page.setInputFiles("#file", file);
      await page.click("#fileStart");
      await page.waitForSelector('#status[data-state="error"]', { timeout: 30_000 });
      const status = (await page.textContent("#status")) ?? "";
      assert.match(status, /closed the connection \(code 1009: FILE_TOO_LARGE\)\. Last error: FILE_TOO_LARGE: offline file exceeds MAX_FILE_BYTES/);
      await page.close();
    } finally {
      await small.stop();
    }
  });
});
