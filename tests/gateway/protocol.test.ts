/**
 * Schema tests: a valid corpus of configs exactly as real FunASR clients
 * send them, and an invalid corpus with the expected stable error codes.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { GatewayError, type ErrorCode } from "../../gateway/src/errors.js";
import {
  endAckMessage,
  errorMessage,
  joinedOfflineMessage,
  joinTexts,
  parseClientMessage,
  parseHotwords,
  resultMessage,
  ServerMessageSchema,
} from "../../gateway/src/protocol.js";

const LIMITS = { maxHotwords: 256, maxHotwordChars: 64, maxHotwordsBytes: 16384 };

/** Configs as the official clients send them (sources in each name). */
const VALID: Array<[string, string]> = [
  [
    "Python funasr_wss_client.py (classic, file, JSON hotwords)",
    JSON.stringify({
      mode: "2pass",
      chunk_size: [5, 10, 5],
      chunk_interval: 10,
      encoder_chunk_look_back: 4,
      decoder_chunk_look_back: 0,
      audio_fs: 16000,
      wav_name: "demo",
      wav_format: "pcm",
      is_speaking: true,
      hotwords: JSON.stringify({ 阿里巴巴: 20, 通义实验室: 30 }),
      itn: true,
    }),
  ],
  [
    "Python funasr_wss_client.py (2026 head, comma-joined hotwords)",
    '{"mode": "2pass", "chunk_size": [5, 10, 5], "chunk_interval": 10, "encoder_chunk_look_back": 4, "decoder_chunk_look_back": 0, "audio_fs": 16000, "wav_name": "demo", "wav_format": "pcm", "is_speaking": true, "hotwords": "阿里巴巴,达摩院", "itn": true}',
  ],
  [
    "Python client microphone mode",
    '{"mode": "online", "chunk_size": [5, 10, 5], "chunk_interval": 10, "encoder_chunk_look_back": 4, "decoder_chunk_look_back": 0, "wav_name": "microphone", "is_speaking": true, "hotwords": "", "itn": true}',
  ],
  ["Python client end with is_end", '{"is_speaking": false, "is_end": true}'],
  ["Python client non-pcm file", '{"mode": "offline", "chunk_size": [5, 10, 5], "chunk_interval": 10, "audio_fs": 16000, "wav_name": "demo", "wav_format": "others", "is_speaking": true, "hotwords": "", "itn": false}'],
  [
    "html5 main.js/wsconnecter.js microphone",
    JSON.stringify({ chunk_size: [5, 10, 5], wav_name: "h5", is_speaking: true, chunk_interval: 10, itn: false, mode: "2pass" }),
  ],
  [
    "html5 file mode (wav labelled PCM) with hotwords",
    JSON.stringify({
      chunk_size: [5, 10, 5],
      wav_name: "h5",
      is_speaking: true,
      chunk_interval: 10,
      itn: false,
      mode: "offline",
      wav_format: "PCM",
      audio_fs: 8000,
      hotwords: '{"阿里巴巴":20,"hello world":40}',
    }),
  ],
  ["html5 file mode mp3", JSON.stringify({ chunk_size: [5, 10, 5], wav_name: "h5", is_speaking: true, chunk_interval: 10, itn: false, mode: "offline", wav_format: "mp3" })],
  ["html5 stop", '{"chunk_size":[5,10,5],"wav_name":"h5","is_speaking":false,"chunk_interval":10,"mode":"2pass"}'],
  [
    "Java FunasrWsClient",
    '{"mode":"online","chunk_size":[5,10,5],"chunk_interval":10,"wav_name":"javatest","hotwords":"阿里巴巴 达摩院","wav_format":"pcm","is_speaking":true}',
  ],
  ["Java FunasrWsClient eof", '{"is_speaking":false}'],
  [
    "C++ funasr-wss-client-2pass (file)",
    '{"audio_fs":16000,"chunk_size":[5,10,5],"hotwords":"{\\"阿里巴巴\\":20}","is_speaking":true,"itn":true,"mode":"2pass","wav_format":"pcm","wav_name":"wav_default_id"}',
  ],
  ["C++ funasr-wss-client-2pass (record, float rate)", '{"audio_fs":16000.0,"chunk_size":[5,10,5],"is_speaking":true,"itn":true,"mode":"2pass","wav_format":"pcm","wav_name":"record"}'],
  [
    "C++ funasr-wss-client (offline, no mode, svs fields)",
    '{"audio_fs":16000,"is_speaking":true,"itn":true,"svs_itn":true,"svs_lang":"auto","wav_format":"pcm","wav_name":"wav_default_id"}',
  ],
  ["C++ client is_finished", '{"is_finished":true}'],
  ["C# online client (office alias)", '{"mode":"office","chunk_size":[5,10,5],"chunk_interval":10,"wav_name":"csharp","is_speaking":true,"hotwords":"","itn":true}'],
  ["chunk_size as a string", '{"mode":"2pass","chunk_size":"5,10,5","wav_name":"s"}'],
  ["chunk_size as a spaced string (Python argparse default)", '{"mode":"2pass","chunk_size":"5, 10, 5","wav_name":"s"}'],
  ["hotword lines with weights", JSON.stringify({ mode: "2pass", hotwords: "阿里巴巴 20\n达摩院 30\n" })],
  ["nulls count as absent", '{"mode":"2pass","hotwords":null,"wav_format":null,"audio_fs":null}'],
  ["extension fields", '{"mode":"2pass","is_final_mode":"cpp","full_hypothesis":true,"wav_name":"ext"}'],
  ["unknown extra fields are ignored", '{"mode":"2pass","spk_model":"x","some_future_field":[1,2]}'],
  ["SenseVoice-era language", '{"mode":"offline","svs_lang":"zh","svs_itn":false}'],
];

/** Malformed messages with the expected error code. */
const INVALID: Array<[string, string, ErrorCode]> = [
  ["not JSON", "hello", "INVALID_JSON"],
  ["truncated JSON", '{"mode": "2pass"', "INVALID_JSON"],
  ["empty text", "", "INVALID_JSON"],
  ["single quotes", "{'mode': '2pass'}", "INVALID_JSON"],
  ["JSON array", "[1,2,3]", "INVALID_MESSAGE"],
  ["JSON string", '"2pass"', "INVALID_MESSAGE"],
  ["JSON number", "42", "INVALID_MESSAGE"],
  ["JSON null", "null", "INVALID_MESSAGE"],
  ["unknown mode", '{"mode":"telepathy"}', "UNSUPPORTED_MODE"],
  ["mode in capitals", '{"mode":"2PASS"}', "UNSUPPORTED_MODE"],
  ["mode as number", '{"mode":2}', "UNSUPPORTED_MODE"],
  ["empty mode", '{"mode":""}', "UNSUPPORTED_MODE"],
  ["44.1 kHz", '{"audio_fs":44100}', "UNSUPPORTED_SAMPLE_RATE"],
  ["48 kHz", '{"audio_fs":48000}', "UNSUPPORTED_SAMPLE_RATE"],
  ["zero rate", '{"audio_fs":0}', "UNSUPPORTED_SAMPLE_RATE"],
  ["negative rate", '{"audio_fs":-16000}', "UNSUPPORTED_SAMPLE_RATE"],
  ["rate as words", '{"audio_fs":"sixteen thousand"}', "UNSUPPORTED_SAMPLE_RATE"],
  ["is_speaking as string", '{"is_speaking":"false"}', "INVALID_MESSAGE"],
  ["is_speaking as number", '{"is_speaking":0}', "INVALID_MESSAGE"],
  ["is_end as string", '{"is_speaking":false,"is_end":"yes"}', "INVALID_MESSAGE"],
  ["is_finished as number", '{"is_finished":1}', "INVALID_MESSAGE"],
  ["chunk_size of two", '{"chunk_size":[5,10]}', "INVALID_MESSAGE"],
  ["chunk_size of four", '{"chunk_size":[5,10,5,5]}', "INVALID_MESSAGE"],
  ["chunk_size with fractions", '{"chunk_size":[5,10.5,5]}', "INVALID_MESSAGE"],
  ["chunk_size negative", '{"chunk_size":[5,-10,5]}', "INVALID_MESSAGE"],
  ["chunk_size bad string", '{"chunk_size":"five,ten,five"}', "INVALID_MESSAGE"],
  ["chunk_size as number", '{"chunk_size":10}', "INVALID_MESSAGE"],
  ["chunk_interval negative", '{"chunk_interval":-1}', "INVALID_MESSAGE"],
  ["chunk_interval string", '{"chunk_interval":"10"}', "INVALID_MESSAGE"],
  ["look-back fraction", '{"encoder_chunk_look_back":0.5}', "INVALID_MESSAGE"],
  ["wav_name as number", '{"wav_name":123}', "INVALID_MESSAGE"],
  ["wav_name too long", JSON.stringify({ wav_name: "x".repeat(300) }), "INVALID_MESSAGE"],
  ["wav_format with a path", '{"wav_format":"../../etc/passwd"}', "INVALID_MESSAGE"],
  ["itn as string", '{"itn":"true"}', "INVALID_MESSAGE"],
  ["hotwords as array", '{"hotwords":["a","b"]}', "INVALID_HOTWORDS"],
  ["hotwords as number", '{"hotwords":7}', "INVALID_HOTWORDS"],
  ["svs_lang as number", '{"svs_lang":1}', "INVALID_MESSAGE"],
  ["is_final_mode unknown", '{"is_final_mode":"sometimes"}', "INVALID_MESSAGE"],
  ["full_hypothesis as string", '{"full_hypothesis":"yes"}', "INVALID_MESSAGE"],
];

/** Hotword strings that must be refused (parsed after the schema). */
const BAD_HOTWORDS: Array<[string, string]> = [
  ["too many", Array.from({ length: 257 }, (_, i) => `w${i}`).join(" ")],
  ["phrase too long", "字".repeat(65)],
  ["too many bytes", "阿".repeat(6000)],
  ["broken JSON object", '{"阿里巴巴": 20'],
  ["JSON object with non-numeric weights", '{"阿里巴巴": [20]}'],
  ["JSON object with NaN weight", '{"阿里巴巴": "heavy"}'],
];

describe("client message schema", () => {
  for (const [name, text] of VALID) {
    test(`accepts: ${name}`, () => {
      const m = parseClientMessage(text);
      if (m.hotwords != null) parseHotwords(m.hotwords, LIMITS);
    });
  }
  test(`invalid corpus has at least 30 cases (${INVALID.length + BAD_HOTWORDS.length})`, () => {
    assert.ok(INVALID.length + BAD_HOTWORDS.length >= 30, "INVALID.length + BAD_HOTWORDS.length >= 30");
  });
  for (const [name, text, code] of INVALID) {
    test(`rejects with ${code}: ${name}`, () => {
      assert.throws(
        () => parseClientMessage(text),
        (e: unknown) => e instanceof GatewayError && e.code === code,
      );
    });
  }
  for (const [name, hw] of BAD_HOTWORDS) {
    test(`rejects hotwords with INVALID_HOTWORDS: ${name}`, () => {
      const m = parseClientMessage(JSON.stringify({ hotwords: hw }));
      assert.throws(
        () => parseHotwords(m.hotwords!, LIMITS),
        (e: unknown) => e instanceof GatewayError && e.code === "INVALID_HOTWORDS",
      );
    });
  }
  test("chunk_size string and array normalize alike", () => {
    assert.deepEqual(parseClientMessage('{"chunk_size":"5, 10, 5"}').chunk_size, [5, 10, 5]);
    assert.deepEqual(parseClientMessage('{"chunk_size":[8,8,4]}').chunk_size, [8, 8, 4]);
  });
});

describe("hotwords in all three client forms", () => {
  test("JSON object inside a string", () => {
    assert.deepEqual(parseHotwords('{"阿里巴巴":20,"通义实验室":30}', LIMITS), [
      { phrase: "阿里巴巴", weight: 20 },
      { phrase: "通义实验室", weight: 30 },
    ]);
  });
  test("word weight lines (multi-word phrases keep their spaces)", () => {
    assert.deepEqual(parseHotwords("阿里巴巴 20\nhello world 40\n", LIMITS), [
      { phrase: "阿里巴巴", weight: 20 },
      { phrase: "hello world", weight: 40 },
    ]);
  });
  test("space and comma separated", () => {
    assert.deepEqual(
      parseHotwords("阿里巴巴 达摩院,通义，千问", LIMITS).map((h) => h.phrase),
      ["阿里巴巴", "达摩院", "通义", "千问"],
    );
  });
  test("a single word weight line", () => {
    assert.deepEqual(parseHotwords("阿里巴巴 20", LIMITS), [{ phrase: "阿里巴巴", weight: 20 }]);
  });
  test("empty and duplicates", () => {
    assert.deepEqual(parseHotwords("  ", LIMITS), []);
    assert.equal(parseHotwords("a a b", LIMITS).length, 2);
  });
});

describe("server messages", () => {
  test("every message has mode, text, wav_name and is_final", () => {
    const msgs = [
      resultMessage({ mode: "2pass-online", wavName: "w", text: "你", isFinal: false }),
      resultMessage({ mode: "2pass-offline", wavName: "w", text: "你好", isFinal: true, tokens: [{ text: "你", startMs: 0, endMs: 100 }, { text: "好", startMs: 100, endMs: 200 }, { text: "。", startMs: 200, endMs: 200 }] }),
      joinedOfflineMessage({ wavName: "w", segments: [{ text: "a", tokens: [] }, { text: "b", tokens: [] }] }),
      endAckMessage({ mode: "offline", wavName: "w" }),
      errorMessage({ mode: "2pass-offline", wavName: "w", code: "INVALID_JSON", message: "x" }),
    ];
    for (const m of msgs) {
      ServerMessageSchema.parse(m);
      for (const k of ["mode", "text", "wav_name", "is_final"]) assert.ok(k in m, k);
    }
  });
  test("timestamp is a JSON string and stamp_sents carry the sentence", () => {
    const m = resultMessage({
      mode: "2pass-offline",
      wavName: "w",
      text: "你好。",
      isFinal: true,
      tokens: [{ text: "你", startMs: 10, endMs: 100 }, { text: "好", startMs: 100, endMs: 200 }, { text: "。", startMs: 200, endMs: 200 }],
    });
    assert.equal(typeof m.timestamp, "string");
    assert.deepEqual(JSON.parse(m.timestamp!), [[10, 100], [100, 200], [200, 200]]);
    assert.deepEqual(m.stamp_sents, [{ text_seg: "你 好", punc: "。", start: 10, end: 200, ts_list: [[10, 100], [100, 200]] }]);
  });
  test("the is_end acknowledgement has exactly the documented shape", () => {
    assert.deepEqual(endAckMessage({ mode: "2pass-offline", wavName: "x" }), { mode: "2pass-offline", wav_name: "x", text: "", is_final: true, is_end: true });
    const failed = endAckMessage({ mode: "2pass-offline", wavName: "x", error: "WORKER_FAILED: y" });
    assert.equal(failed.is_final, false);
    assert.equal(failed.error, "WORKER_FAILED: y");
  });
  test("joining segment texts: no separator for CJK, a space between Latin words", () => {
    assert.equal(joinTexts(["今天天气很好。", "", "我们去散步"]), "今天天气很好。我们去散步");
    assert.equal(joinTexts(["hello", "world"]), "hello world");
  });
});
