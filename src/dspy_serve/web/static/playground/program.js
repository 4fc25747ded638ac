// "/playground/NAME": the form, a streamed run, its outputs, and ways to share and repeat it.

import { $, api, copyText, enc, h, hasKey, problemOf, problemView, setUpKeyPanel, unwrap } from "./core.js";
import { FieldProblem, buildForm, clearHighlights, highlight } from "./form.js";
import { costText, renderOutputs, totalTokens } from "./render.js";
import { chatField, requestBody, snippetViews, snippets } from "./snippets.js";
import { setUpBatch } from "./batch.js";
import { clearInspect, inspectSwitches, showPrompts, showTrace } from "./inspect.js";
import { refreshMetrics } from "./metrics.js";
import { hideFeedback, setUpFeedback, showFeedback } from "./feedback.js";

const name = decodeURIComponent(location.pathname.split("/").pop());
const RECENT = `dspy-serve:runs:${name}`;
const MAX_RECENT = 20;
let program = null;
let form = null;
let options = null;
let running = null; // the AbortController of the run in flight

function textFields(schema) {
  return Object.entries(schema.properties || {})
    .filter(([, s]) => s.type === "string")
    .map(([key]) => key);
}

function buildOptions(p) {
  const fields = [];
  const get = {};
  const set = {};
  const models = p.allowed_models || [];
  if (models.length) {
    const select = h("select", { id: "opt-model" }, models.map((m) => h("option", { value: m, selected: m === p.model }, m)));
    fields.push(h("div", { class: "field", "data-path": "options.model" }, h("label", { for: "opt-model" }, "Model"), select, h("p", { class: "field-error" })));
    get.model = () => (select.value === p.model ? undefined : select.value);
    set.model = (v) => (select.value = v || p.model);
  }
  const number = (key, label, attrs, hint) => {
    const input = h("input", { type: "number", id: `opt-${key}`, placeholder: "server default", "aria-describedby": `opt-${key}-hint`, ...attrs });
    fields.push(h("div", { class: "field", "data-path": `options.${key}` }, h("label", { for: `opt-${key}` }, label), h("p", { class: "hint", id: `opt-${key}-hint` }, hint), input, h("p", { class: "field-error" })));
    get[key] = () => (input.value === "" ? undefined : Number(input.value));
    set[key] = (v) => (input.value = v == null ? "" : String(v));
  };
  number("temperature", "Temperature", { min: 0, max: 2, step: 0.1 }, "0 to 2");
  const limit = (p.limits && p.limits.max_tokens) || 4096;
  number("max_tokens", "Max tokens", { min: 1, max: limit, step: 1 }, `1 to ${limit}`);
  $("options").append(...fields);
  inspectSwitches(p, get, set);
  return {
    get: () => Object.fromEntries(Object.entries(get).map(([k, f]) => [k, f()]).filter(([, v]) => v !== undefined)),
    set: (values) => Object.entries(set).forEach(([k, f]) => f((values || {})[k])),
  };
}

function collect() {
  clearHighlights($("run-form"));
  try {
    return { inputs: form.get(), options: options.get() };
  } catch (error) {
    if (error instanceof FieldProblem) {
      highlight($("run-form"), [{ loc: error.path.split("."), msg: error.message }]);
      return null;
    }
    throw error;
  }
}

function showSnippets(inputs, opts) {
  $("snippets").replaceChildren(
    ...snippetViews(snippets({ name, inputs, options: opts, chatField: chatField(program.input_schema), keys: hasKey() })),
  );
}

function liveField(predictor, field) {
  const key = `${predictor}.${field}`;
  let block = [...$("live").children].find((el) => el.dataset.key === key);
  if (!block) {
    const label = predictor === "" || predictor === "self" ? field : `${predictor} › ${field}`;
    block = h("div", { class: "live-field", "data-key": key }, h("span", { class: "name" }, label), h("div", { class: "text", "data-live": field }));
    $("live").append(block);
  }
  return block.querySelector(".text");
}

function parseEvent(raw) {
  let event = "message";
  const data = [];
  for (const line of raw.split("\n")) {
    if (line.startsWith(":")) continue;
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  return data.length ? { event, data: JSON.parse(data.join("\n")) } : null;
}

// The steps of a run: each starts "running" with its status event, and ends done (the next step
// started, or the run finished), failed or stopped, so nothing still says "Running" once it ends.
const STEP_WORDS = { running: "running…", done: "done", failed: "failed", stopped: "stopped" };

function setStep(li, state) {
  li.dataset.state = state;
  li.querySelector(".step-state").textContent = STEP_WORDS[state];
}

function startStep(message) {
  for (const li of $("steps").querySelectorAll('li[data-state="running"]')) setStep(li, "done");
  const step = String(message).replace(/^Running\s*/, "").replace(/(\.\.\.|…)$/, "") || "program";
  const li = h("li", {}, h("span", { class: "step-name" }, step), " ", h("span", { class: "step-state" }));
  setStep(li, "running");
  $("steps").append(li);
}

// The end of a run: the running step takes the outcome, and the live token boxes fold into
// Outputs (replaced by the outputs on success, kept there as partial text otherwise).
function endRun(outcome) {
  const state = outcome === "ok" ? "done" : outcome === "stopped" ? "stopped" : "failed";
  for (const li of $("steps").querySelectorAll('li[data-state="running"]')) setStep(li, state);
  const live = [...$("live").children];
  $("live").replaceChildren();
  if (outcome !== "ok" && live.some((block) => block.querySelector(".text").textContent)) {
    const title = outcome === "stopped" ? "Partial outputs (stopped)" : "Partial outputs (failed)";
    $("outputs").replaceChildren(h("h3", {}, title), ...live.map((block) => (block.classList.add("partial"), block)));
  }
}

function meta(entries) {
  $("meta").replaceChildren(...entries.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function setRunning(on) {
  $("run").disabled = on;
  $("stop").disabled = !on;
}

async function run(inputs, opts) {
  const body = requestBody(inputs, opts);
  for (const id of ["live", "outputs", "steps", "run-problem", "meta"]) $(id).replaceChildren();
  clearInspect();
  hideFeedback();
  $("run-state").textContent = "Running…";
  showSnippets(inputs, opts);
  location.hash = "run=" + encodeURIComponent(JSON.stringify(body));
  const controller = new AbortController();
  running = controller;
  setRunning(true);
  const started = performance.now();
  let requestId = "";
  let token = null;
  let outcome = "error";
  try {
    const response = await api(`/${enc(name)}/stream`, { method: "POST", body, signal: controller.signal });
    requestId = response.headers.get("X-Request-ID") || "";
    token = response.headers.get("X-Feedback-Token");
    if (!response.ok) {
      showProblem(await problemOf(response));
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (!event) continue;
        if (event.event === "token") {
          liveField(event.data.predictor, event.data.field).textContent += event.data.chunk;
        } else if (event.event === "status") {
          startStep(event.data.message);
        } else if (event.event === "prediction") {
          outcome = "ok";
          const elapsed = Math.round(performance.now() - started);
          $("outputs").replaceChildren(h("h3", {}, "Outputs"), ...renderOutputs(event.data.outputs, program.output_schema));
          meta([
            ["Latency", `${elapsed} ms`],
            ["Tokens", String(totalTokens(event.data.usage))],
            ["Cost", costText(event.data.cost)],
            ["Model", event.data.model || ""],
            ["Request id", h("code", {}, requestId)],
          ]);
          $("run-state").textContent = `Done in ${elapsed} ms.`;
          if (event.data.trace) showTrace(event.data.trace);
          if (event.data.prompts) showPrompts(event.data.prompts);
          showFeedback(event.data.call_id, token, event.data.outputs);
        } else if (event.event === "error") {
          showProblem(event.data);
        }
      }
    }
  } catch (error) {
    if (error.name === "AbortError") {
      outcome = "stopped";
      $("run-state").textContent = "Stopped: the call was cancelled.";
    } else {
      showProblem({ title: "The server could not be reached", detail: String(error.message || error) });
    }
  } finally {
    endRun(outcome);
    running = null;
    setRunning(false);
    remember(body, outcome, requestId);
    refreshMetrics(program);
  }
}

function showProblem(problem) {
  $("run-state").textContent = "Failed.";
  $("run-problem").replaceChildren(problemView(problem));
  const unplaced = highlight($("run-form"), problem.errors);
  if (problem.errors && unplaced.length < problem.errors.length) {
    $("run-problem").append(h("p", { class: "hint" }, "The fields named above are marked on the form."));
  }
}

// --- recent runs, kept in this browser ------------------------------------------------------

function recentRuns() {
  try {
    return JSON.parse(localStorage.getItem(RECENT) || "[]");
  } catch {
    return [];
  }
}

function remember(body, outcome, requestId) {
  const entry = { at: new Date().toISOString(), body, outcome, request_id: requestId };
  if (JSON.stringify(entry).length > 200_000) return; // an uploaded image: not worth the storage
  const runs = [entry, ...recentRuns()].slice(0, MAX_RECENT);
  try {
    localStorage.setItem(RECENT, JSON.stringify(runs));
  } catch {
    // storage full or disabled: the runs list is a convenience
  }
  showRecent();
}

function load(body) {
  form.set(body.inputs || {});
  options.set(body.options || {});
}

function showRecent() {
  const items = recentRuns().map((entry) => {
    const summary = JSON.stringify(entry.body.inputs);
    const loadButton = h("button", { type: "button", class: "secondary" }, "Load");
    loadButton.addEventListener("click", () => load(entry.body));
    const again = h("button", { type: "button", class: "secondary" }, "Run again");
    again.addEventListener("click", () => {
      load(entry.body);
      run(entry.body.inputs, entry.body.options || {});
    });
    return h(
      "li",
      {},
      h("span", { class: `badge ${entry.outcome === "ok" ? "ok" : "bad"}` }, entry.outcome),
      " ",
      h("time", { datetime: entry.at }, new Date(entry.at).toLocaleString()),
      " ",
      h("code", {}, summary.length > 80 ? summary.slice(0, 80) + "…" : summary),
      " ",
      loadButton,
      " ",
      again,
    );
  });
  $("recent-list").replaceChildren(...(items.length ? items : [h("li", { class: "muted" }, "No runs yet.")]));
}

// --- the page ---------------------------------------------------------------------------------

async function main() {
  setUpKeyPanel();
  document.title = `${name} · Playground · dspy-serve`;
  $("title").textContent = name;
  const response = await api(`/programs/${enc(name)}`);
  $("loading").remove();
  if (!response.ok) {
    $("problem").append(problemView(await problemOf(response)), h("p", {}, h("a", { href: "../" }, "See the programs served here")));
    return;
  }
  program = await response.json();
  $("description").textContent = unwrap(program.instructions);
  $("facts").replaceChildren(
    h("code", {}, program.signature),
    " · model ",
    program.model || "",
    " · ",
    program.optimized ? `optimized${program.artifact ? " (sha256 " + program.artifact.sha256.slice(0, 12) + "…)" : ""}` : "not optimized",
  );
  $("docs-link").setAttribute("href", `../docs#/${enc(name)}/${enc(name)}_invoke`);
  const turnKeys = [...textFields(program.input_schema), ...textFields(program.output_schema)];
  form = buildForm(program.input_schema, { defs: program.input_schema.$defs || {}, turnKeys });
  $("inputs").append(...form.elements);
  options = buildOptions(program);
  $("workbench").hidden = false;
  $("extras").hidden = false;

  const fromLink = location.hash.startsWith("#run=") ? location.hash.slice(5) : "";
  if (fromLink) {
    try {
      load(JSON.parse(decodeURIComponent(fromLink)));
    } catch {
      $("run-state").textContent = "The link's inputs could not be read.";
    }
  }
  const submit = () => {
    if (running) return;
    const values = collect();
    if (values) run(values.inputs, values.options);
  };
  $("run-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  $("run-form").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      submit();
    }
  });
  $("stop").addEventListener("click", () => running && running.abort());
  $("copy-link").addEventListener("click", (event) => {
    const values = collect();
    if (!values) return;
    const url = `${location.origin}${location.pathname}#run=${encodeURIComponent(JSON.stringify(requestBody(values.inputs, values.options)))}`;
    copyText(url, event.currentTarget);
  });
  $("recent-clear").addEventListener("click", () => {
    localStorage.removeItem(RECENT);
    showRecent();
  });
  const values = collect();
  if (values) showSnippets(values.inputs, values.options);
  showRecent();
  setUpBatch(program);
  setUpFeedback(program);
  refreshMetrics(program);
}

main();

