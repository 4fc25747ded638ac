// Outputs rendered by their type: text, badges for Literals and booleans, tables for lists of
// objects, a collapsible tree for the rest. Values only ever become text nodes.

import { h, kindOf, resolve } from "./core.js";

export function renderOutputs(outputs, schema) {
  const defs = schema.$defs || {};
  const props = schema.properties || {};
  const names = [...Object.keys(props), ...Object.keys(outputs || {}).filter((k) => !(k in props))];
  return names
    .filter((name) => outputs && name in outputs)
    .map((name) =>
      h("div", { class: "output", "data-field": name }, h("span", { class: "name" }, name), renderValue(outputs[name], props[name], defs)),
    );
}

export function renderValue(value, schema, defs) {
  const { s } = resolve(schema || {}, defs);
  const kind = kindOf(s);
  if (value === null || value === undefined) return h("span", { class: "muted" }, "null");
  if (kind === "enum" || typeof value === "boolean") return h("span", { class: "badge" }, String(value));
  if (typeof value === "string") return h("div", { class: "text" }, value);
  if (typeof value === "number") return h("span", {}, String(value));
  if (Array.isArray(value)) {
    const { s: item } = resolve(s.items || {}, defs);
    const rows = value.every((v) => v && typeof v === "object" && !Array.isArray(v));
    if (rows && value.length) return table(value, item, defs);
    if (value.every((v) => v === null || typeof v !== "object")) {
      return h("ul", {}, value.map((v) => h("li", {}, renderValue(v, item, defs))));
    }
  }
  return h("ul", { class: "tree" }, tree(value, null, 0));
}

function table(rows, item, defs) {
  const columns = [...new Set([...Object.keys(item.properties || {}), ...rows.flatMap((r) => Object.keys(r))])];
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h(
      "tbody",
      {},
      rows.map((row) =>
        h("tr", {}, columns.map((c) => h("td", {}, c in row ? renderValue(row[c], (item.properties || {})[c], defs) : ""))),
      ),
    ),
  );
}

function tree(value, key, depth) {
  const label = key === null ? [] : [h("span", { class: "key" }, key), ": "];
  if (value && typeof value === "object") {
    const entries = Array.isArray(value) ? value.map((v, i) => [String(i), v]) : Object.entries(value);
    const summary = Array.isArray(value) ? `[${entries.length}]` : `{${entries.length}}`;
    return h(
      "li",
      {},
      h(
        "details",
        { open: depth < 2 },
        h("summary", {}, ...label, summary),
        h("ul", {}, entries.map(([k, v]) => tree(v, k, depth + 1))),
      ),
    );
  }
  return h("li", {}, ...label, h("code", {}, JSON.stringify(value)));
}

export function totalTokens(usage) {
  let total = 0;
  for (const counts of Object.values(usage || {})) {
    total += counts.total_tokens || (counts.prompt_tokens || 0) + (counts.completion_tokens || 0);
  }
  return total;
}

export function costText(cost) {
  if (!cost) return "unknown";
  if (cost.total_usd === null || cost.total_usd === undefined) {
    const reasons = Object.values(cost.by_model || {}).map((m) => m.reason).filter(Boolean);
    return "unknown" + (reasons.length ? ` (${reasons.join("; ")})` : "");
  }
  return `$${Number(cost.total_usd).toFixed(6)}`;
}
