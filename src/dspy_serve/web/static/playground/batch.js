// Batch: JSONL or CSV of inputs, run through /NAME/batch one item per request, a few at a time (so
// the progress bar moves as each item finishes), results kept in input order and downloadable as
// JSONL or CSV. When the server runs jobs (--jobs), a file of more than batch_max_items items (or
// any file, when asked) runs as a durable job on the server instead (jobs.js).

import { $, api, enc, h, problemOf, problemView, resolve } from "./core.js";
import { exampleInputs } from "./snippets.js";
import { cancelJob, jobText, runJob } from "./jobs.js";

// Requests in flight at once: below the browser's 6 connections per server, so the page's own
// calls (metrics, Stop) are not queued behind the batch.
const IN_FLIGHT = 4;
let results = [];
// Rows the results table shows (a job may hold 100,000): the downloads hold every row.
const TABLE_ROWS = 1000;

// Run every item through /NAME/batch, IN_FLIGHT at a time; `done(result)` as each finishes. A
// refused request (no key, rate limited, ...) stops new ones and is returned as a problem.
async function runItems(program, items, done) {
  let next = 0;
  let refused = null;
  const worker = async () => {
    while (next < items.length && !refused) {
      const index = next++;
      const response = await api(`/${enc(program.name)}/batch`, { method: "POST", body: { items: [items[index]] } });
      if (!response.ok) {
        refused = refused || (await problemOf(response));
        return;
      }
      const [item] = (await response.json()).items;
      done({ ...item, index, item: index + 1, inputs: items[index] });
    }
  };
  await Promise.all(Array.from({ length: Math.min(IN_FLIGHT, items.length) }, worker));
  return refused;
}

export function setUpBatch(program) {
  // The placeholder is a line of this program's own inputs.
  const example = JSON.stringify(exampleInputs(program.input_schema));
  const text = h("textarea", { id: "batch-input", rows: 6, "aria-describedby": "batch-hint", placeholder: example });
  const file = h("input", { type: "file", id: "batch-file", accept: ".jsonl,.json,.csv,.txt,text/csv,application/json" });
  const runButton = h("button", { type: "button", id: "batch-run" }, "Run batch");
  const progress = h("progress", { id: "batch-progress", max: 1, value: 0, "aria-label": "Batch progress" });
  const state = h("p", { id: "batch-state", role: "status", class: "hint" });
  const problem = h("div", { id: "batch-problem", role: "alert" });
  const table = h("div", { id: "batch-results" });
  const jsonl = h("button", { type: "button", class: "secondary", id: "batch-jsonl", disabled: true }, "Download JSONL");
  const csv = h("button", { type: "button", class: "secondary", id: "batch-csv", disabled: true }, "Download CSV");
  const cancel = h("button", { type: "button", class: "secondary", id: "batch-cancel", hidden: true }, "Cancel job");
  const jobsOn = Boolean(program.endpoints && program.endpoints.jobs);
  const cap = (program.limits && program.limits.batch_max_items) || 64;
  const asJob = h("input", { type: "checkbox", role: "switch", id: "batch-as-job" });
  const jobNote = jobsOn
    ? `More than ${cap} items run as a durable job on the server: it goes on if you close this tab, and Cancel job stops it.`
    : `Items run from this tab, which must stay open. Large files (more than ${cap} items) need the server started with --jobs to run as a durable job.`;
  file.addEventListener("change", async () => {
    if (file.files && file.files[0]) text.value = await file.files[0].text();
  });
  runButton.addEventListener("click", async () => {
    problem.replaceChildren();
    let items;
    try {
      items = parseItems(text.value, program.input_schema);
    } catch (error) {
      problem.replaceChildren(problemView({ title: "The inputs could not be read", detail: error.message }));
      return;
    }
    if (!items.length) {
      problem.replaceChildren(problemView({ title: "No inputs", detail: "Paste or upload at least one line." }));
      return;
    }
    runButton.disabled = jsonl.disabled = csv.disabled = true;
    const finished = [];
    results = [];
    progress.max = items.length;
    progress.value = 0;
    table.replaceChildren();
    state.textContent = `Running ${items.length} item${items.length === 1 ? "" : "s"}…`;
    try {
      if (jobsOn && (items.length > cap || asJob.checked)) {
        await runAsJob(program, items, { progress, state, problem, table, cancel });
        return;
      }
      const refused = await runItems(program, items, (result) => {
        finished[result.index] = result;
        progress.value += 1;
        state.textContent = `Running: ${progress.value} of ${items.length} finished…`;
      });
      if (refused) problem.replaceChildren(problemView(refused));
      results = finished.filter(Boolean); // in input order, whatever order they finished in
      const failed = results.filter((r) => r.error).length;
      const large = !jobsOn && items.length > cap ? ` Large files run faster and survive this tab as a job: start the server with --jobs.` : "";
      state.textContent = `${results.length} of ${items.length} done, ${failed} failed.${large}`;
      const view = resultsTable(program, items);
      view.add(results);
      table.replaceChildren(view.table);
    } finally {
      runButton.disabled = false;
      jsonl.disabled = csv.disabled = results.length === 0;
    }
  });
  jsonl.addEventListener("click", () => download(`${program.name}-results.jsonl`, "application/x-ndjson", results.map((r) => JSON.stringify(record(r))).join("\n") + "\n"));
  csv.addEventListener("click", () => download(`${program.name}-results.csv`, "text/csv", toCsv(results, program)));
  $("batch-body").append(
    h("p", { class: "hint", id: "batch-hint" }, "One JSON object of inputs per line (JSONL), or CSV with a header row naming the input fields. Items run concurrently on the server."),
    h("p", { class: "hint", id: "batch-jobs-note" }, jobNote),
    h("div", { class: "field" }, h("label", { for: "batch-input" }, "Inputs"), text),
    h("div", { class: "field" }, h("label", { for: "batch-file" }, "or upload a file"), file),
    jobsOn ? h("div", { class: "field" }, h("label", { class: "switch", for: "batch-as-job" }, asJob, h("span", {}, "Run as a durable job, whatever its size"))) : null,
    h("div", { class: "actions" }, runButton, cancel, jsonl, csv),
    progress,
    state,
    problem,
    table,
  );
}

// Items are numbered from 1, as the lines of the input are, in the table, JSONL and CSV alike.
function record(r) {
  return r.error ? { item: r.item, inputs: r.inputs, error: r.error } : { item: r.item, inputs: r.inputs, outputs: r.outputs };
}

// An item's error in one line, with the field paths and messages the API gave.
function errorText(error) {
  if (!error) return "";
  const fields = (Array.isArray(error.errors) ? error.errors : []).map((e) => {
    const loc = (e.loc || []).map(String);
    while (loc.length && (loc[0] === "body" || loc[0] === "items" || loc[0] === "inputs" || /^\d+$/.test(loc[0]))) loc.shift();
    return `${loc.join(".") || "inputs"}: ${e.msg || "invalid"}`;
  });
  const title = error.title || "Error";
  if (fields.length) return `${title}: ${fields.join("; ")}`;
  return error.detail && error.detail !== title ? `${title}: ${error.detail}` : title;
}

export function parseItems(text, schema) {
  const trimmed = text.trim();
  if (!trimmed) return [];
  if (trimmed.startsWith("{") || trimmed.startsWith("[")) {
    if (trimmed.startsWith("[")) return JSON.parse(trimmed);
    return trimmed.split(/\r?\n/).filter((line) => line.trim()).map((line, i) => {
      try {
        return JSON.parse(line);
      } catch {
        throw new Error(`Line ${i + 1} is not a JSON object.`);
      }
    });
  }
  const rows = parseCsv(trimmed);
  const header = rows.shift() || [];
  const defs = schema.$defs || {};
  return rows.map((row) => Object.fromEntries(header.map((key, i) => [key, cell(row[i] ?? "", (schema.properties || {})[key], defs)])));
}

// A CSV cell as the field's type: numbers and booleans as such, objects and lists as JSON.
function cell(text, schema, defs) {
  const { s } = resolve(schema || {}, defs);
  const type = Array.isArray(s.type) ? s.type.find((t) => t !== "null") : s.type;
  if (type === "string" || (!type && s.enum && typeof s.enum[0] === "string")) return text;
  if (type === "integer" || type === "number") return text === "" ? null : Number(text);
  if (type === "boolean") return /^(true|1|yes)$/i.test(text);
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

// RFC 4180: quoted fields may hold commas, newlines and doubled quotes.
export function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i += 1;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") {
      row.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i += 1;
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
    } else field += c;
  }
  row.push(field);
  rows.push(row);
  return rows;
}

const csvCell = (value) => {
  const text = value === undefined || value === null ? "" : typeof value === "string" ? value : JSON.stringify(value);
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
};

function toCsv(rows, program) {
  const inputs = Object.keys(program.input_schema.properties || {});
  const outputs = Object.keys(program.output_schema.properties || {});
  const header = ["item", ...inputs, ...outputs, "error"];
  const lines = rows.map((r) => [
    r.item,
    ...inputs.map((k) => (r.inputs || {})[k]),
    ...outputs.map((k) => (r.outputs || {})[k]),
    errorText(r.error),
  ]);
  return [header, ...lines].map((line) => line.map(csvCell).join(",")).join("\r\n") + "\r\n";
}

// The results table, its rows added as results come (a job's arrive a page at a time).
function resultsTable(program, items) {
  const inputs = Object.keys(program.input_schema.properties || {});
  const outputs = Object.keys(program.output_schema.properties || {});
  const show = (v) => (v === undefined ? "" : typeof v === "string" ? v : JSON.stringify(v));
  // Inputs the program does not take (a misspelt field) get a column too: they are the error.
  const given = items.flatMap((inputs) => (inputs && typeof inputs === "object" ? Object.keys(inputs) : []));
  const inputColumns = [...inputs, ...new Set(given.filter((k) => !inputs.includes(k)))];
  const body = h("tbody");
  const row = (r) =>
    h(
      "tr",
      { "data-item": String(r.item) },
      h("td", {}, String(r.item)),
      inputColumns.map((k) => h("td", { "data-input": k }, show((r.inputs || {})[k]))),
      outputs.map((k) => h("td", { "data-output": k }, show((r.outputs || {})[k]))),
      h("td", { "data-error": "" }, errorText(r.error)),
    );
  const head = h("thead", {}, h("tr", {}, ["#", ...inputColumns.map((k) => `${k} (input)`), ...outputs, "error"].map((c) => h("th", { scope: "col" }, c))));
  const more = h("p", { class: "hint", hidden: true }, `The table shows the first ${TABLE_ROWS} rows; the downloads hold them all.`);
  const add = (rows) => {
    const room = rows.slice(0, Math.max(0, TABLE_ROWS - body.childElementCount));
    body.append(...room.map(row));
    if (room.length < rows.length) more.hidden = false;
  };
  return { table: h("div", {}, h("table", {}, head, body), more), add };
}

// The items as a job: progress and spending from the job's status, rows from its results.
async function runAsJob(program, items, { progress, state, problem, table, cancel }) {
  const view = resultsTable(program, items);
  table.replaceChildren(view.table);
  let id = null;
  const stop = async () => {
    cancel.disabled = true;
    const refused = await cancelJob(id);
    if (refused) problem.replaceChildren(problemView(refused));
  };
  cancel.addEventListener("click", stop);
  try {
    const ended = await runJob(program, items, {
      started(jobId) {
        id = jobId;
        cancel.hidden = false;
        cancel.disabled = false;
        state.textContent = `Job ${id.slice(0, 8)}… submitted: ${items.length} items.`;
      },
      status(status) {
        progress.max = status.total;
        progress.value = status.done + status.failed;
        state.textContent = jobText(id, status);
      },
      results(lines) {
        const rows = lines.map((line) => ({ ...line, item: line.index + 1, inputs: items[line.index] }));
        results.push(...rows);
        view.add(rows);
      },
    });
    if (ended.problem) {
      problem.replaceChildren(problemView(ended.problem));
      if (!id) state.textContent = "The job was not submitted.";
    }
  } catch (error) {
    // The job goes on without this tab: its id is in the state line above.
    problem.replaceChildren(problemView({ title: "The server could not be reached", detail: String(error.message || error) }));
  } finally {
    cancel.removeEventListener("click", stop);
    cancel.hidden = true;
  }
}

function download(filename, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = h("a", { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
