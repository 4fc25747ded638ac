// This program's numbers from the service's own /metrics (Prometheus text): calls, errors and
// latency percentiles per program; tokens and cost are counted per model, across programs.

import { $, api, h } from "./core.js";

const SAMPLE = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /(\w+)="((?:[^"\\]|\\.)*)"/g;

export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = SAMPLE.exec(line);
    if (!match) continue;
    const labels = {};
    for (const [, key, value] of (match[2] || "").matchAll(LABEL)) labels[key] = value.replace(/\\(.)/g, "$1");
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

// The q-quantile of a cumulative histogram (Prometheus' histogram_quantile: linear in a bucket).
export function quantile(q, buckets) {
  const sorted = [...buckets].sort((a, b) => a.le - b.le);
  const total = sorted.length ? sorted[sorted.length - 1].count : 0;
  if (!total) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const { le, count } of sorted) {
    if (count >= rank) {
      if (le === Infinity) return lower;
      return lower + ((le - lower) * (rank - below)) / Math.max(count - below, 1e-9);
    }
    lower = le;
    below = count;
  }
  return lower;
}

export function summarize(samples, program) {
  const name = program.name;
  let calls = 0;
  let errors = 0;
  const buckets = new Map();
  for (const s of samples) {
    if (s.labels.program !== name) continue;
    if (s.name === "dspy_serve_requests_total") {
      calls += s.value;
      if (Number(s.labels.status) >= 400) errors += s.value;
    } else if (s.name === "dspy_serve_request_duration_seconds_bucket") {
      const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      buckets.set(le, (buckets.get(le) || 0) + s.value);
    }
  }
  const histogram = [...buckets].map(([le, count]) => ({ le, count }));
  const model = program.model;
  const tokens = { in: 0, out: 0 };
  // No cost sample for the model: no call had a known price (the counter only counts priced ones).
  let cost = null;
  for (const s of samples) {
    if (s.labels.model !== model) continue;
    if (s.name === "dspy_serve_lm_tokens_total") tokens[s.labels.direction] = (tokens[s.labels.direction] || 0) + s.value;
    if (s.name === "dspy_serve_lm_cost_usd_total") cost = (cost || 0) + s.value;
  }
  return {
    calls,
    errors,
    p50: quantile(0.5, histogram),
    p95: quantile(0.95, histogram),
    p99: quantile(0.99, histogram),
    tokens,
    cost,
  };
}

const ms = (seconds) => (seconds === null ? "–" : `${Math.round(seconds * 1000)} ms`);

export async function refreshMetrics(program) {
  const body = $("metrics-body");
  if (!body) return;
  const response = await api("/metrics");
  if (!response.ok) {
    body.replaceChildren(h("p", { class: "hint" }, `Metrics are not available (${response.status}).`));
    return;
  }
  const m = summarize(parseMetrics(await response.text()), program);
  const row = (k, v) => [h("dt", {}, k), h("dd", { "data-metric": k }, v)];
  const refresh = h("button", { type: "button", class: "secondary" }, "Refresh");
  refresh.addEventListener("click", () => refreshMetrics(program));
  body.replaceChildren(
    h(
      "dl",
      { class: "meta" },
      row("Requests", String(m.calls)),
      row("Errors", String(m.errors)),
      row("Latency p50", ms(m.p50)),
      row("Latency p95", ms(m.p95)),
      row("Latency p99", ms(m.p99)),
      row("Tokens in / out", `${m.tokens.in} / ${m.tokens.out}`),
      row("Cost", m.cost !== null ? `$${m.cost.toFixed(6)}` : m.tokens.in + m.tokens.out ? "unknown (no price known for this model)" : "–"),
    ),
    h("p", { class: "hint" }, `Since this server started; latency from the histogram's buckets. Tokens and cost are for the model ${program.model}, across every program using it. With several workers, from every worker.`),
    refresh,
  );
}
