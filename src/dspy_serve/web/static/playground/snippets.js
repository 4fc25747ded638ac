// "Copy as": the same call as curl, the Python client, the OpenAI SDK and `dspy-serve call`.
// The key is never written into a snippet: each reads DSPY_SERVE_CLIENT_KEY from the environment.

import { copyText, h, origin } from "./core.js";

const shellQuote = (text) => `'${String(text).replace(/'/g, `'\\''`)}'`;
const pyString = (text) => JSON.stringify(text); // a JSON string is a valid Python str literal

export function requestBody(inputs, options) {
  return options && Object.keys(options).length ? { inputs, options } : { inputs };
}

export function snippets({ name, inputs, options, chatField, keys }) {
  const body = requestBody(inputs, options);
  const json = JSON.stringify(body);
  const auth = keys ? ` \\\n  -H "Authorization: Bearer $DSPY_SERVE_CLIENT_KEY"` : "";
  const out = {};
  out.curl = `curl -sS ${shellQuote(`${origin}/${name}/invoke`)} \\\n  -H 'Content-Type: application/json'${auth} \\\n  -d ${shellQuote(json)}`;

  const optionArgs = Object.entries(options || {}).map(([k, v]) => `, ${k}=${pyLiteral(v)}`).join("");
  const inputArgs = Object.entries(inputs).map(([k, v]) => `${k}=${pyLiteral(v)}`).join(", ");
  out.python = [
    "import os",
    "from dspy_serve import Client, RemoteProgram",
    "",
    `with Client(${pyString(origin)}, api_key=os.environ.get("DSPY_SERVE_CLIENT_KEY")) as client:`,
    `    program = RemoteProgram(client, ${pyString(name)}${optionArgs})`,
    `    prediction = program(${inputArgs})`,
    "    print(prediction)",
  ].join("\n");

  if (chatField && Object.keys(inputs).every((k) => k === chatField) && typeof inputs[chatField] === "string") {
    const extra = Object.entries(options || {})
      .filter(([k]) => !["model", "trace", "prompts"].includes(k)) // /v1 takes none of these
      .map(([k, v]) => `,\n    ${k}=${pyLiteral(v)}`)
      .join("");
    out.openai = [
      "import os",
      "from openai import OpenAI",
      "",
      `client = OpenAI(base_url=${pyString(origin + "/v1")}, api_key=os.environ.get("DSPY_SERVE_CLIENT_KEY") or "none")`,
      "reply = client.chat.completions.create(",
      `    model=${pyString(name)},`,
      `    messages=[{"role": "user", "content": ${pyString(inputs[chatField])}}]${extra},`,
      ")",
      "print(reply.choices[0].message.content)",
    ].join("\n");
  }

  // With options, the whole body (`--json`); else one FIELD=VALUE per input, text as written.
  const fields = options && Object.keys(options).length
    ? ["--json", shellQuote(json)]
    : Object.entries(inputs).map(([k, v]) => shellQuote(`${k}=${typeof v === "string" ? v : JSON.stringify(v)}`));
  out.cli = `dspy-serve call ${shellQuote(origin)} ${shellQuote(name)} ${fields.join(" ")}`.trim();
  return out;
}

// A JSON value as a Python literal (a JSON string is a valid Python str literal).
function pyLiteral(value) {
  if (value === true) return "True";
  if (value === false) return "False";
  if (value === null || value === undefined) return "None";
  if (Array.isArray(value)) return `[${value.map(pyLiteral).join(", ")}]`;
  if (typeof value === "object") return `{${Object.entries(value).map(([k, v]) => `${pyString(k)}: ${pyLiteral(v)}`).join(", ")}}`;
  return JSON.stringify(value);
}

const TITLES = { curl: "curl", python: "Python (dspy_serve.Client)", openai: "OpenAI SDK", cli: "dspy-serve call" };

export function snippetViews(all) {
  return Object.entries(all).map(([kind, text]) => {
    const pre = h("pre", { "data-snippet": kind, tabindex: 0 }, h("code", {}, text));
    const button = h("button", { type: "button", class: "secondary" }, "Copy");
    button.addEventListener("click", () => copyText(text, button));
    return h("div", { class: "snippet" }, h("h3", {}, TITLES[kind], button), pre);
  });
}

// An example value for a schema, for the landing page's snippets.
export function exampleInputs(schema) {
  const defs = schema.$defs || {};
  const example = (s, depth) => {
    if (s.$ref) return example(defs[s.$ref.split("/").pop()] || {}, depth);
    if (s.default !== undefined) return s.default;
    if (s.enum) return s.enum[0];
    if (s.anyOf) return example(s.anyOf.find((o) => o.type !== "null") || {}, depth);
    if (s.title === "Image") return { url: "https://example.com/image.png" };
    if (s.title === "History") return { messages: [] };
    switch (s.type) {
      case "string": return "...";
      case "integer": return Math.max(1, s.minimum ?? 1);
      case "number": return s.minimum ?? 0.5;
      case "boolean": return true;
      case "array": return depth > 3 ? [] : [example(s.items || {}, depth + 1)];
      case "object":
        return Object.fromEntries(
          Object.entries(s.properties || {})
            .filter(([k]) => depth < 4 && (s.required || []).includes(k))
            .map(([k, v]) => [k, example(v, depth + 1)]),
        );
      default: return null;
    }
  };
  const required = new Set(schema.required || []);
  return Object.fromEntries(
    Object.entries(schema.properties || {}).filter(([k]) => required.has(k)).map(([k, v]) => [k, example(v, 0)]),
  );
}

// The one required str input a chat message fills (/v1 maps the last user message onto it).
export function chatField(schema) {
  const required = schema.required || [];
  const props = schema.properties || {};
  if (required.length !== 1) return null;
  const s = props[required[0]] || {};
  return s.type === "string" ? required[0] : null;
}
