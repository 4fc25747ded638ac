// Inspect: a run's trace (each predictor that ran) and, where the server lets this key see them,
// its prompts (each LM call's messages and raw response). Text nodes only: a prompt holding
// markup shows as that markup, never as HTML.

import { $, h } from "./core.js";
import { renderOutputs } from "./render.js";

const SWITCHES = [
  ["trace", "trace_available", "Inspect", "Show each step the program ran, with its inputs and outputs."],
  ["prompts", "prompts_available", "Prompts", "Show each LM call: the messages sent and the raw response."],
];

// The switches the server offers (GET /programs: trace_available, prompts_available), as options.
export function inspectSwitches(p, get, set) {
  for (const [key, offered, label, hint] of SWITCHES) {
    if (!p[offered]) continue;
    const box = h("input", { type: "checkbox", role: "switch", id: `opt-${key}`, "aria-describedby": `opt-${key}-hint` });
    $("inspect").append(
      h("div", { class: "field", "data-path": `options.${key}` }, h("label", { class: "switch", for: `opt-${key}` }, box, h("span", {}, label)),
        h("p", { class: "hint", id: `opt-${key}-hint` }, hint), h("p", { class: "field-error" })),
    );
    get[key] = () => (box.checked ? true : undefined);
    set[key] = (v) => (box.checked = v === true);
  }
}

export function clearInspect() {
  for (const id of ["trace", "prompts"]) {
    $(id).replaceChildren();
    $(id).hidden = true;
  }
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

// The trace of a run: each predictor that ran, in order, its inputs and outputs collapsible.
export function showTrace(steps) {
  const step = (s, i) =>
    h(
      "li",
      { class: "trace-step", "data-predictor": s.predictor ?? "" },
      h("span", { class: "name" }, s.predictor ?? "(unnamed step)"),
      h("details", { class: "trace-inputs" }, h("summary", {}, "Inputs"), ...renderOutputs(s.inputs, {})),
      h("details", { class: "trace-outputs", open: i === steps.length - 1 }, h("summary", {}, "Outputs"), ...renderOutputs(s.outputs, {})),
    );
  $("trace").replaceChildren(h("h3", {}, `Trace (${plural(steps.length, "step")})`), h("ol", { class: "trace" }, steps.map(step)));
  $("trace").hidden = false;
}

// A message's content: a string, or parts (text parts as their text, others as JSON).
function contentText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((part) => (part && part.type === "text" ? part.text : JSON.stringify(part))).join("\n");
  return JSON.stringify(content, null, 2);
}

// Each LM call of a run, in order, collapsible: the messages sent, then the raw response.
export function showPrompts(calls) {
  const call = (c, i) =>
    h(
      "li",
      { class: "lm-call" },
      h(
        "details",
        {},
        h("summary", {}, `LM call ${i + 1} · ${c.model}`),
        h("ol", { class: "messages" }, c.messages.map((m) => h("li", { "data-role": m.role ?? "" }, h("span", { class: "name" }, m.role ?? "message"), h("pre", { class: "text" }, contentText(m.content))))),
        h("div", { class: "response" }, h("span", { class: "name" }, "Response"), c.response.map((r) => h("pre", { class: "text" }, typeof r === "string" ? r : JSON.stringify(r, null, 2)))),
      ),
    );
  $("prompts").replaceChildren(h("h3", {}, `Prompts (${plural(calls.length, "LM call")})`), h("ol", { class: "trace" }, calls.map(call)));
  $("prompts").hidden = false;
}
