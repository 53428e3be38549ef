/**
 * Output policies on their own (a model-free core): each is_final behaviour
 * and mode, driven by hand-made results into a recording sink.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { outputPolicyFor, type OutputSink } from "../../gateway/src/output-policy.js";
import type { ServerMessage } from "../../gateway/src/protocol.js";
import { defaultSettings, type Settings } from "../../gateway/src/settings.js";

const BASE = defaultSettings({ isFinalMode: "seed", onlineMode: "upgrade", maxHotwords: 8, maxHotwordChars: 16, maxHotwordsBytes: 256 });

function sink(congested = () => false): OutputSink & { out: ServerMessage[] } {
  const out: ServerMessage[] = [];
  return { out, send: (m) => void out.push(m), congested };
}

function policy(over: Partial<Settings>) {
  const s = sink();
  return { s, p: outputPolicyFor({ ...BASE, wavName: "w", ...over }, s) };
}

const brief = (m: ServerMessage): string => `${m.mode}:${m.text}:${m.is_final}`;

describe("output policies", () => {
  test("seed 2pass: deltas as 2pass-online, every final is_final true at once", () => {
    const { s, p } = policy({ kind: "2pass", isFinalMode: "seed" });
    p.partial({ text: "ab", delta: "ab" });
    p.partial({ text: "abc", delta: "" });
    p.final({ text: "abcd", tokens: [] });
    p.inputEnded();
    p.final({ text: "x", tokens: [] });
    p.endOfInput();
    assert.deepEqual(s.out.map(brief), ["2pass-online:ab:false", "2pass-offline:abcd:true", "2pass-offline:x:true"]);
    assert.equal(p.finalMode, "2pass-offline");
  });

  test("cpp 2pass: segment finals false; the last final after end of input carries the one is_final true", () => {
    const { s, p } = policy({ kind: "2pass", isFinalMode: "cpp" });
    p.final({ text: "one", tokens: [] });
    p.inputEnded();
    p.final({ text: "two", tokens: [] });
    p.final({ text: "three", tokens: [] });
    assert.deepEqual(s.out.map(brief), ["2pass-offline:one:false", "2pass-offline:two:false"]);
    p.endOfInput();
    assert.deepEqual(s.out.map(brief).slice(2), ["2pass-offline:three:true"]);
  });

  test("cpp 2pass with nothing held: an empty final carries is_final true", () => {
    const { s, p } = policy({ kind: "2pass", isFinalMode: "cpp" });
    p.final({ text: "one", tokens: [] });
    p.inputEnded();
    p.endOfInput();
    assert.deepEqual(s.out.map(brief), ["2pass-offline:one:false", "2pass-offline::true"]);
  });

  test("strict online: a final adds only what the deltas did not cover; empty remainders are not sent", () => {
    const { s, p } = policy({ kind: "online" });
    p.partial({ text: "ab", delta: "ab" });
    p.final({ text: "abc", tokens: [] });
    p.partial({ text: "de", delta: "de" });
    p.final({ text: "de", tokens: [] });
    p.inputEnded();
    p.endOfInput();
    assert.deepEqual(s.out.map(brief), ["online:ab:false", "online:c:false", "online:de:false", "online::true"]);
  });

  test("offline: no partials; one message joining the round's finals at end of input", () => {
    const { s, p } = policy({ kind: "offline" });
    p.partial({ text: "a", delta: "a" });
    p.final({ text: "hello", tokens: [{ text: "hello", startMs: 0, endMs: 100 }] });
    p.final({ text: "world", tokens: [{ text: "world", startMs: 200, endMs: 300 }] });
    assert.equal(s.out.length, 0);
    p.inputEnded();
    p.endOfInput();
    assert.deepEqual(s.out.map(brief), ["offline:hello world:true"]);
    assert.equal(s.out[0]!.timestamp, "[[0,100],[200,300]]");
  });

  test("a congested client gets merged deltas instead of a backlog, and a full hypothesis replaces", () => {
    let slow = true;
    const s = sink(() => slow);
    const p = outputPolicyFor({ ...BASE, kind: "2pass" }, s);
    p.partial({ text: "a", delta: "a" });
    p.partial({ text: "ab", delta: "b" });
    assert.equal(s.out.length, 0);
    slow = false;
    p.partial({ text: "abc", delta: "c" });
    assert.deepEqual(s.out.map(brief), ["2pass-online:abc:false"]);

    const f = sink(() => slow);
    const full = outputPolicyFor({ ...BASE, kind: "2pass", fullHypothesis: true }, f);
    slow = true;
    full.partial({ text: "x", delta: "x" });
    full.partial({ text: "xy", delta: "" });
    slow = false;
    full.partial({ text: "xyz", delta: "" });
    assert.deepEqual(f.out.map(brief), ["2pass-online:xyz:false"]);
  });
});
