// "/": every program this key may call, with what it is and how to call it.

import { $, api, enc, h, hasKey, problemOf, problemView, setUpKeyPanel, unwrap } from "./core.js";
import { chatField, exampleInputs, snippetViews, snippets } from "./snippets.js";

function card(program) {
  const name = program.name;
  const sha = program.artifact && program.artifact.sha256;
  const state = program.optimized
    ? h("span", {}, h("span", { class: "badge ok" }, "optimized"), sha ? [" ", h("code", { title: sha }, "sha256 " + sha.slice(0, 12) + "…")] : "",
        program.artifact ? [" ", h("span", { class: "muted" }, program.artifact.name)] : "")
    : h("span", { class: "badge" }, "not optimized");
  const example = exampleInputs(program.input_schema);
  return h(
    "article",
    { class: "card", "data-program": name },
    h("h2", {}, h("a", { href: `playground/${enc(name)}` }, name)),
    h("p", { class: "description" }, unwrap(program.instructions) || "(no description)"),
    h(
      "dl",
      {},
      h("dt", {}, "Signature"),
      h("dd", {}, h("code", {}, program.signature)),
      h("dt", {}, "Model"),
      h("dd", {}, program.model || "", program.allowed_models && program.allowed_models.length > 1 ? h("span", { class: "muted" }, ` (+${program.allowed_models.length - 1} allowed)`) : ""),
      h("dt", {}, "State"),
      h("dd", {}, state),
    ),
    h(
      "p",
      { class: "links" },
      h("a", { href: `playground/${enc(name)}` }, "Open playground"),
      h("a", { href: `docs#/${enc(name)}/${enc(name)}_invoke` }, "OpenAPI operation"),
      h("a", { href: `programs/${enc(name)}` }, "Description (JSON)"),
    ),
    h(
      "details",
      {},
      h("summary", {}, "Call it"),
      snippetViews(snippets({ name, inputs: example, options: {}, chatField: chatField(program.input_schema), keys: hasKey() })),
    ),
  );
}

async function main() {
  setUpKeyPanel();
  const response = await api("/programs");
  $("loading").remove();
  if (!response.ok) {
    $("problem").append(problemView(await problemOf(response)));
    return;
  }
  const programs = await response.json();
  if (!programs.length) $("programs").append(h("p", {}, "No programs are served to this key."));
  for (const program of programs) $("programs").append(card(program));
}

main();
