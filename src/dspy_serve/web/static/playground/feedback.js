// Feedback on the last answer, through POST /NAME/feedback (only when the server captures this
// program): good / bad, a comment, and a correction made in a form generated from the output
// schema. The server keeps one current rating per (call, key) and replaces it on each send, so
// every send carries the whole current state: a second click changes the rating.

import { $, api, enc, h, hasKey, problemOf, problemView } from "./core.js";
import { buildForm, clearHighlights, FieldProblem, highlight } from "./form.js";

let program = null;
let editor = null; // the correction form
let answer = null; // { callId, token, served, score, comment, outputs }: what the server holds now

export function setUpFeedback(p) {
  if (!(p.endpoints && p.endpoints.feedback)) return; // no capture for it: no buttons
  program = p;
  editor = buildForm(p.output_schema, { defs: p.output_schema.$defs || {}, turnKeys: [] }, "outputs");
  const rate = (score, id, label, words) => {
    const button = h("button", { type: "button", class: "secondary", id, "aria-pressed": "false", "data-score": String(score) }, label);
    button.addEventListener("click", () => send({ score }, `Rated ${words}.`));
    return button;
  };
  const sendComment = h("button", { type: "button", class: "secondary", id: "feedback-send-comment" }, "Send comment");
  sendComment.addEventListener("click", () => send({}, "Comment sent."));
  const correction = h(
    "form",
    { id: "correction", novalidate: true, "aria-label": "Corrected outputs" },
    h("p", { class: "hint" }, "Change what was wrong; the fields you change are sent as the correct answer."),
    editor.elements,
    h("div", { class: "actions" }, h("button", { type: "submit", id: "correction-send" }, "Send correction")),
  );
  correction.addEventListener("submit", (event) => {
    event.preventDefault();
    sendCorrection();
  });
  $("feedback").append(
    h("h3", { id: "feedback-title" }, "Was this answer right?"),
    h("div", { class: "actions", role: "group", "aria-label": "Rating" }, rate(true, "rate-up", "👍 Good", "good"), rate(false, "rate-down", "👎 Bad", "bad")),
    h("div", { class: "field" }, h("label", { for: "feedback-comment" }, "Comment ", h("span", { class: "muted" }, "(optional)")), h("textarea", { id: "feedback-comment", rows: 2, maxlength: 10000 })),
    h("div", { class: "actions" }, sendComment),
    h("details", { id: "correct" }, h("summary", {}, "Correct it"), correction),
    h("p", { id: "feedback-state", role: "status", class: "hint" }),
    h("div", { id: "feedback-problem", role: "alert" }),
  );
}

// A new answer to rate: its call id, the feedback token its response carried (if any), its outputs.
export function showFeedback(callId, token, outputs) {
  if (!editor || !callId) return;
  answer = { callId, token, served: outputs || {}, score: null, comment: "", outputs: null };
  editor.set(answer.served);
  clearHighlights($("correction"));
  $("feedback-comment").value = "";
  $("feedback-state").textContent = "";
  $("feedback-problem").replaceChildren();
  pressed(null);
  $("feedback").hidden = false;
}

export function hideFeedback() {
  if (!editor) return;
  answer = null;
  $("feedback").hidden = true;
}

function pressed(score) {
  for (const button of $("feedback").querySelectorAll("[data-score]")) {
    button.setAttribute("aria-pressed", String(button.dataset.score === String(score)));
  }
}

// The fields of the correction form that differ from the served outputs.
function changedFields() {
  const values = editor.get();
  return Object.fromEntries(Object.entries(values).filter(([key, v]) => JSON.stringify(v) !== JSON.stringify(answer.served[key])));
}

function sendCorrection() {
  clearHighlights($("correction"));
  let changed;
  try {
    changed = changedFields();
  } catch (error) {
    if (!(error instanceof FieldProblem)) throw error;
    highlight($("correction"), [{ loc: error.path.split("."), msg: error.message }]);
    return;
  }
  if (!Object.keys(changed).length) {
    $("feedback-problem").replaceChildren();
    $("feedback-state").textContent = "Nothing changed: edit the fields that were wrong first.";
    return;
  }
  send({ outputs: changed }, "Correction sent.");
}

// Send the current state with `change` applied; the state changes only once the server took it.
async function send(change, done) {
  const sent = answer;
  if (!sent) return;
  const next = { score: sent.score, outputs: sent.outputs, comment: $("feedback-comment").value.trim(), ...change };
  const body = { call_id: sent.callId };
  if (next.score !== null) body.score = next.score;
  if (next.outputs) body.outputs = next.outputs;
  if (next.comment) body.comment = next.comment;
  if (Object.keys(body).length === 1) {
    $("feedback-state").textContent = "Rate the answer, write a comment or correct it first.";
    return;
  }
  $("feedback-state").textContent = "Sending…";
  $("feedback-problem").replaceChildren();
  for (const button of $("feedback").querySelectorAll("button")) button.disabled = true;
  try {
    const response = await post(sent.token, body);
    if (answer !== sent) return; // a new run started meanwhile: this answer is gone from the page
    if (!response.ok) {
      const problem = await problemOf(response);
      $("feedback-state").textContent = "Not saved.";
      $("feedback-problem").replaceChildren(problemView(problem));
      highlight($("correction"), problem.errors);
      return;
    }
    const saved = await response.json();
    Object.assign(sent, next);
    pressed(sent.score);
    $("feedback-state").textContent = saved.replaced ? `${done} It replaces your earlier feedback.` : done;
  } catch (error) {
    $("feedback-state").textContent = "Not saved.";
    $("feedback-problem").replaceChildren(problemView({ title: "The server could not be reached", detail: String(error.message || error) }));
  } finally {
    for (const button of $("feedback").querySelectorAll("button")) button.disabled = false;
  }
}

// A tab with a key rates with it (its own calls); one without uses the answer's feedback token,
// and once that has expired (401), the key path (which asks for a key if the server needs one).
async function post(token, body) {
  const path = `/${enc(program.name)}/feedback`;
  if (token && !hasKey()) {
    const response = await api(path, { method: "POST", body, headers: { "X-Feedback-Token": token }, askKey: false });
    if (response.status !== 401) return response;
  }
  return api(path, { method: "POST", body });
}
