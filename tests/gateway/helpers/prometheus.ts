/**
 * Scrapes a /metrics endpoint over a real socket and reads it with the
 * reference Prometheus text parser (prometheus_client.parser, from the worker
 * venv), so the tests check what Prometheus itself would ingest, not what the
 * gateway meant to print. (npm's parse-prometheus-text-format drops the labels
 * of labelled histograms, so it cannot judge these.)
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const PYTHON = path.join(ROOT, "worker-py", ".venv", "bin", "python");

/** Why metrics tests skip (no worker venv with prometheus_client), or false. */
export const PARSER_SKIP_REASON: string | false = existsSync(PYTHON) ? false : "worker-py/.venv is absent (run scripts/setup.sh): no Prometheus text parser";

// NaN and ±Inf are valid sample values (prom-client's event-loop lag mean is NaN when a scrape
// follows the last one before any lag was sampled); JSON has no such numbers, so they travel as text.
const PARSE = `
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
out = [{"name": f.name, "type": f.type,
         "samples": [{"name": s.name, "labels": s.labels,
                      "value": s.value if math.isfinite(s.value) else repr(s.value)} for s in f.samples]}
       for f in text_string_to_metric_families(sys.stdin.read())]
print(json.dumps(out))
`;
const NON_FINITE: Record<string, number> = { nan: NaN, inf: Infinity, "-inf": -Infinity };

/** One parsed sample. */
export interface Sample {
  /** Sample name (a counter's ends in _total, a histogram's in _bucket/_sum/_count). */
  name: string;
  /** Labels. */
  labels: Record<string, string>;
  /** Value. */
  value: number;
}

/** A scrape: every sample, and the type of every metric family. */
export interface Scrape {
  /** Family name -> type (counter, gauge, histogram, ...). */
  types: Map<string, string>;
  /** All samples. */
  samples: Sample[];
}

/** Parses Prometheus text exposition with prometheus_client; a malformed text fails the test. */
export function parseMetrics(text: string): Scrape {
  const r = spawnSync(PYTHON, ["-c", PARSE], { input: text, encoding: "utf8", timeout: 30_000 });
  assert.equal(r.status, 0, `prometheus_client could not parse the scrape: ${r.stderr}`);
  const families = JSON.parse(r.stdout) as Array<{ name: string; type: string; samples: Array<Omit<Sample, "value"> & { value: number | string }> }>;
  const samples = families.flatMap((f) => f.samples.map((x) => ({ ...x, value: typeof x.value === "number" ? x.value : NON_FINITE[x.value]! })));
  return { types: new Map(families.map((f) => [f.name, f.type])), samples };
}

/** GET `${base}/metrics`; asserts 200 and the text format's content type; returns the parsed scrape. */
export async function scrape(base: string): Promise<Scrape> {
  const res = await fetch(`${base}/metrics`);
  assert.equal(res.status, 200, `GET /metrics: ${res.status}`);
  assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  return parseMetrics(await res.text());
}

function sum(s: Scrape, sampleName: string, labels: Record<string, string>): number {
  return s.samples
    .filter((x) => x.name === sampleName && Object.entries(labels).every(([k, v]) => x.labels[k] === v))
    .reduce((acc, x) => acc + x.value, 0);
}

/** The value of gauge or counter sample `name` (a counter's full name, with _total) over the series matching `labels`. */
export function value(s: Scrape, name: string, labels: Record<string, string> = {}): number {
  return sum(s, name, labels);
}

/** How many observations histogram `name` has over the series matching `labels`. */
export function histogramCount(s: Scrape, name: string, labels: Record<string, string> = {}): number {
  assert.equal(s.types.get(name), "histogram", `${name} is not a histogram`);
  return sum(s, `${name}_count`, labels);
}

/** Whether metric family `name` (counters without _total) is exposed. */
export function hasFamily(s: Scrape, name: string): boolean {
  return s.types.has(name.replace(/_total$/, ""));
}
