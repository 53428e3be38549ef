/**
 * The page's logic: one FunASR-protocol session per WebSocket, fed by the
 * microphone (AudioWorklet "pcm-capture": 16 kHz PCM16, 60 ms frames) or by a
 * whole file in offline mode (WAV or anything the gateway decodes).
 *
 * Display rules follow FunASR's own clients: partial texts are deltas and are
 * concatenated into one line that updates in place; a final (2pass-offline /
 * offline) replaces it and becomes a line of its own, with its time span and
 * token timestamps when the server sends them.
 *
 * Browsers never see the HTTP status of a refused WebSocket handshake, so
 * when a connection fails before opening, the page asks the gateway's
 * GET /ui/admission (the same admission rules) why, and shows that.
 */

/** 60 ms at 16 kHz: FunASR clients' frame (chunk_size [5,10,5], chunk_interval 10). */
const FRAME_SAMPLES = 960;
const TARGET_RATE = 16000;
/** File bytes per WebSocket frame (below the gateway's MAX_FRAME_BYTES default of 1 MiB). */
const FILE_CHUNK_BYTES = 256 * 1024;
/** Token timestamp lists longer than this start folded. */
const TOKENS_OPEN_MAX = 40;
/** Chips drawn at most per line (a long file has thousands of tokens). */
const TOKENS_SHOWN_MAX = 2000;

const $ = (id) => document.getElementById(id);
const ui = {
  server: $("server"),
  token: $("token"),
  mode: $("mode"),
  isFinalMode: $("isFinalMode"),
  itn: $("itn"),
  hotwords: $("hotwords"),
  micStart: $("micStart"),
  micStop: $("micStop"),
  file: $("file"),
  fileStart: $("fileStart"),
  status: $("status"),
  finals: $("finals"),
  partial: $("partial"),
  clear: $("clear"),
};

/** The session in progress, or null. */
let current = null;

function setStatus(kind, text) {
  ui.status.className = `status ${kind}`;
  ui.status.dataset.state = kind;
  ui.status.textContent = text;
}

function setBusy(busy, mic) {
  ui.micStart.disabled = busy;
  ui.fileStart.disabled = busy;
  ui.micStop.disabled = !(busy && mic);
}

/** The WebSocket address: the gateway that served this page (the path above /ui/), same scheme family. */
function defaultServer() {
  const u = new URL("../", window.location.href);
  u.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
  u.search = "";
  u.hash = "";
  return u.href;
}

function withToken(url) {
  const token = ui.token.value.trim();
  if (token !== "") url.searchParams.set("token", token);
  return url;
}

/** The first JSON frame; options come from the form. */
function configMessage(overrides) {
  const m = {
    mode: ui.mode.value,
    chunk_size: [5, 10, 5],
    chunk_interval: 10,
    wav_name: "microphone",
    wav_format: "pcm",
    audio_fs: TARGET_RATE,
    is_speaking: true,
    itn: ui.itn.checked,
  };
  const hotwords = ui.hotwords.value.trim();
  if (hotwords !== "") m.hotwords = hotwords;
  if (ui.isFinalMode.value !== "") m.is_final_mode = ui.isFinalMode.value;
  return { ...m, ...overrides };
}

// ---------------------------------------------------------------------------
// transcript display

function fmtTime(ms) {
  const s = ms / 1000;
  const m = Math.floor(s / 60);
  return `${String(m).padStart(2, "0")}:${(s - m * 60).toFixed(2).padStart(5, "0")}`;
}

/** [text, start_ms, end_ms] per token, from stamp_sents (text_seg is space separated, ts_list aligned with it). */
function tokensOf(msg) {
  const out = [];
  for (const sent of msg.stamp_sents ?? []) {
    const words = sent.text_seg.split(" ").filter((w) => w !== "");
    sent.ts_list.forEach((ts, i) => out.push([words[i] ?? "", ts[0], ts[1]]));
  }
  return out;
}

function spanOf(msg) {
  if (typeof msg.timestamp !== "string") return null;
  try {
    const pairs = JSON.parse(msg.timestamp);
    if (!Array.isArray(pairs) || pairs.length === 0) return null;
    return [pairs[0][0], pairs[pairs.length - 1][1]];
  } catch {
    return null;
  }
}

function renderPartial(s) {
  ui.partial.textContent = s.partial;
}

function addFinal(s, text, msg) {
  const li = document.createElement("li");
  li.className = "final";
  const time = document.createElement("span");
  time.className = "time";
  const span = msg === null ? null : spanOf(msg);
  time.textContent = span !== null ? `${fmtTime(span[0])} – ${fmtTime(span[1])}` : `at ${fmtTime(performance.now() - s.t0)}`;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  li.append(time, body);
  const tokens = msg === null ? [] : tokensOf(msg);
  if (tokens.length > 0) {
    // Token timestamps: open for a sentence, folded for a whole file (they would bury the text).
    const box = document.createElement("details");
    box.className = "tokens";
    box.open = tokens.length <= TOKENS_OPEN_MAX;
    const summary = document.createElement("summary");
    summary.textContent = `${tokens.length} token timestamps`;
    const list = document.createElement("span");
    list.className = "token-list";
    for (const [t, a, b] of tokens.slice(0, TOKENS_SHOWN_MAX)) {
      const chip = document.createElement("span");
      chip.className = "token";
      const w = document.createElement("b");
      w.textContent = t;
      chip.append(w, `${(a / 1000).toFixed(2)}–${(b / 1000).toFixed(2)}`);
      list.append(chip);
    }
    box.append(summary, list);
    li.append(box);
  }
  ui.finals.append(li);
}

// ---------------------------------------------------------------------------
// one session

/**
 * Opens a WebSocket session with `config` as its first frame. `onOpen(s)`
 * starts the input; `s.cleanup()` (set by the caller) releases it.
 */
function openSession(config, onOpen, mic) {
  let url;
  try {
    url = withToken(new URL(ui.server.value.trim()));
  } catch {
    setStatus("error", `"${ui.server.value}" is not a WebSocket address (ws://host:port/).`);
    return null;
  }
  const s = {
    ws: new WebSocket(url.href),
    url,
    opened: false,
    finished: false,
    error: null,
    partial: "",
    t0: performance.now(),
    cleanup: () => {},
  };
  current = s;
  setBusy(true, mic);
  setStatus("busy", `Connecting to ${url.origin}…`);
  s.ws.binaryType = "arraybuffer";
  s.ws.onopen = () => {
    s.opened = true;
    s.t0 = performance.now();
    s.ws.send(JSON.stringify(config));
    Promise.resolve(onOpen(s)).catch((e) => {
      setStatus("error", `Could not start: ${e.message ?? e}`);
      s.ws.close(1000);
    });
  };
  s.ws.onmessage = (e) => {
    if (typeof e.data !== "string") return;
    let msg;
    try {
      msg = JSON.parse(e.data);
    } catch {
      return;
    }
    onMessage(s, msg);
  };
  s.ws.onclose = (e) => void onClose(s, e);
  return s;
}

function commitPartial(s) {
  if (s.partial !== "") addFinal(s, s.partial, null);
  s.partial = "";
  renderPartial(s);
}

function onMessage(s, msg) {
  if (typeof msg.error === "string") {
    s.error = msg.error;
    setStatus("error", `The server reported an error: ${msg.error}`);
  }
  if (msg.is_end === true) {
    commitPartial(s);
    s.finished = true;
    s.ws.close(1000);
    return;
  }
  if (typeof msg.error === "string") return;
  if (msg.mode === "2pass-online" || (msg.mode === "online" && msg.is_final !== true)) {
    s.partial += msg.text;
    renderPartial(s);
  } else if (msg.mode === "online") {
    // Strict online: the end-of-input flush closes the concatenated deltas.
    s.partial += msg.text;
    commitPartial(s);
  } else if (msg.mode === "2pass-offline" || msg.mode === "offline") {
    s.partial = "";
    renderPartial(s);
    if (msg.text !== "") addFinal(s, msg.text, msg);
  }
}

/**
 * Why the gateway refused: its GET /ui/admission applies the upgrade's rules
 * without upgrading (found beside the WebSocket address, so that it asks the
 * gateway in the Server field, not necessarily the one that served the page).
 */
async function refusalReason(s) {
  const http = new URL(s.url.href);
  http.protocol = http.protocol === "wss:" ? "https:" : "http:";
  http.search = "";
  const probe = withToken(new URL("ui/admission", http));
  let res;
  try {
    res = await fetch(probe, { cache: "no-store" });
  } catch {
    return `Could not connect to ${http.origin}: the server is unreachable or refused the connection.`;
  }
  let body = {};
  try {
    body = await res.json();
  } catch {
    // A server that is not this gateway: the status alone must do.
  }
  if (res.ok) return `Could not open the WebSocket to ${s.url.origin} (the handshake failed; is the address right?).`;
  const retry = res.headers.get("Retry-After") ?? body.retry_after_seconds;
  const what = res.status === 401 ? "a valid token is required; enter it above" : (body.error ?? res.statusText);
  return `The server refused the connection (HTTP ${res.status}): ${what}.${retry ? ` Retry after ${retry} s.` : ""}`;
}

async function onClose(s, e) {
  s.cleanup();
  if (current === s) current = null;
  setBusy(false, false);
  if (!s.opened) {
    setStatus("error", await refusalReason(s));
    return;
  }
  commitPartial(s);
  if (!s.finished) {
    const reason = e.reason ? `: ${e.reason}` : "";
    const detail = s.error !== null ? ` Last error: ${s.error}` : "";
    setStatus("error", `The server closed the connection (code ${e.code}${reason}).${detail}`);
  } else if (s.error === null) {
    setStatus("done", `Finished: ${ui.finals.children.length} line(s).`);
  }
}

// ---------------------------------------------------------------------------
// inputs

async function startMic() {
  if (current !== null) return;
  if (navigator.mediaDevices?.getUserMedia === undefined) {
    setStatus("error", "This browser gives no microphone here (a secure origin, https or localhost, is required).");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true } });
  } catch (e) {
    setStatus("error", `Microphone unavailable: ${e.message ?? e.name}`);
    return;
  }
  const ctx = new AudioContext();
  const release = () => {
    for (const t of stream.getTracks()) t.stop();
    if (ctx.state !== "closed") void ctx.close();
  };
  try {
    await ctx.audioWorklet.addModule("pcm-worklet.js");
  } catch (e) {
    release();
    setStatus("error", `Audio capture could not start: ${e.message ?? e}`);
    return;
  }
  const s = openSession(configMessage({ wav_name: "microphone" }), async (s) => {
    await ctx.resume();
    const source = ctx.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(ctx, "pcm-capture", { processorOptions: { targetRate: TARGET_RATE, frameSamples: FRAME_SAMPLES } });
    // Pulled through a muted output so that the graph runs without echoing the microphone.
    const mute = ctx.createGain();
    mute.gain.value = 0;
    source.connect(node).connect(mute).connect(ctx.destination);
    let flushed = null;
    node.port.onmessage = (e) => {
      if (e.data === "flushed") flushed?.();
      else if (s.ws.readyState === WebSocket.OPEN) s.ws.send(e.data);
    };
    s.stop = async () => {
      await new Promise((resolve) => {
        flushed = resolve;
        node.port.postMessage("flush");
      });
      source.disconnect();
      release();
      if (s.ws.readyState === WebSocket.OPEN) s.ws.send(JSON.stringify({ is_speaking: false, is_end: true }));
    };
    setStatus("busy", "Listening… speak, then press Stop.");
  }, true);
  if (s === null) {
    release();
    return;
  }
  s.cleanup = release;
}

async function stopMic() {
  const s = current;
  if (s === null || s.stop === undefined || s.stopping) return;
  s.stopping = true;
  ui.micStop.disabled = true;
  setStatus("busy", "Finishing… waiting for the last results.");
  await s.stop();
}

async function startFile() {
  if (current !== null) return;
  const f = ui.file.files?.[0];
  if (f === undefined) {
    setStatus("error", "Choose an audio file first.");
    return;
  }
  const bytes = await f.arrayBuffer();
  const ext = (/\.([A-Za-z0-9]{1,8})$/.exec(f.name)?.[1] ?? "wav").toLowerCase();
  // Offline file mode: the gateway decodes the whole file (WAV itself, other containers with ffmpeg).
  openSession(configMessage({ mode: "offline", wav_name: f.name, wav_format: ext }), (s) => {
    for (let off = 0; off < bytes.byteLength; off += FILE_CHUNK_BYTES) s.ws.send(bytes.slice(off, off + FILE_CHUNK_BYTES));
    s.ws.send(JSON.stringify({ is_speaking: false, is_end: true }));
    setStatus("busy", `Sent ${f.name} (${Math.ceil(bytes.byteLength / 1024)} KiB); recognizing…`);
  }, false);
}

ui.server.value = defaultServer();
const pageToken = new URLSearchParams(window.location.search).get("token");
if (pageToken !== null) ui.token.value = pageToken;
ui.micStart.addEventListener("click", () => void startMic());
ui.micStop.addEventListener("click", () => void stopMic());
ui.fileStart.addEventListener("click", () => void startFile());
ui.clear.addEventListener("click", () => {
  ui.finals.replaceChildren();
  ui.partial.textContent = "";
});
setStatus("idle", "Ready. Start the microphone or choose a file.");
