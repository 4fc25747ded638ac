// A large batch as a durable job (#28): POST /NAME/jobs, then GET /jobs/{id} for its progress
// and GET /jobs/{id}/results from the last offset for its rows, which come in input order (a page
// stops before the first item not finished yet), until every item is in.

import { api, enc, problemOf } from "./core.js";

const POLL_MS = 500;
const ENDED = new Set(["done", "failed", "cancelled"]);
// Once the job has ended, how many empty pages of results to wait for before giving up (a
// cancelled item's line is written by its worker within about a second).
const PATIENCE = 20;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Runs `items` as a job: ui.started(id), then ui.status(status) and ui.results(lines) as they come.
// Returns the job's last status, or { problem } when a request was refused.
export async function runJob(program, items, ui) {
  const submitted = await api(`/${enc(program.name)}/jobs`, { method: "POST", body: { items } });
  if (!submitted.ok) return { problem: await problemOf(submitted) };
  const { id } = await submitted.json();
  ui.started(id);
  let offset = 0;
  let waited = 0;
  for (;;) {
    const polled = await api(`/jobs/${enc(id)}`);
    if (!polled.ok) return { problem: await problemOf(polled) };
    const status = await polled.json();
    ui.status(status);
    const page = await api(`/jobs/${enc(id)}/results?offset=${offset}`);
    if (!page.ok) return { problem: await problemOf(page) };
    const lines = (await page.text()).split("\n").filter((line) => line.trim()).map((line) => JSON.parse(line));
    offset = Number(page.headers.get("X-Next-Offset") ?? offset + lines.length);
    if (lines.length) ui.results(lines);
    if (offset >= status.total) return ENDED.has(status.state) ? status : finalStatus(id, ui);
    if (ENDED.has(status.state) && !lines.length && (waited += 1) > PATIENCE) return status;
    await sleep(POLL_MS);
  }
}

// Every result is in: the job's counts once it says it has ended.
async function finalStatus(id, ui) {
  for (let tries = 0; ; tries += 1) {
    const polled = await api(`/jobs/${enc(id)}`);
    if (!polled.ok) return { problem: await problemOf(polled) };
    const status = await polled.json();
    ui.status(status);
    if (ENDED.has(status.state) || tries >= PATIENCE) return status;
    await sleep(POLL_MS);
  }
}

// Cancels the job: its queued items never run, its running calls are cancelled.
export async function cancelJob(id) {
  const response = await api(`/jobs/${enc(id)}`, { method: "DELETE" });
  return response.ok ? null : problemOf(response);
}

// "Job 1a2b…: running. 5 of 12 finished, 1 failed · 1234 tokens · cost $0.000120" (a cancelled
// job's items that never ran are counted neither done nor failed: they are said to be cancelled).
export function jobText(id, status) {
  const finished = status.done + status.failed;
  const cost = status.cost_usd === null || status.cost_usd === undefined ? "unknown" : `$${Number(status.cost_usd).toFixed(6)}`;
  const cancelled = status.state === "cancelled" ? `, ${status.total - finished} cancelled` : "";
  return `Job ${id.slice(0, 8)}…: ${status.state}. ${finished} of ${status.total} finished, ${status.failed} failed${cancelled} · ${status.tokens} tokens · cost ${cost}`;
}
