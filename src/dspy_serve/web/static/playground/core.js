// Shared by every page: DOM building (text only, never HTML), the API key, calls to the API.
// Program data (names, descriptions, outputs) only ever reaches the page as text nodes or
// attribute values: nothing here parses a string as HTML.

const KEY_STORE = "dspy-serve:key";

// The server's root, also behind a proxy that mounts it under a prefix.
export const root = location.pathname.replace(/\/playground\/[^/]*$/, "").replace(/\/$/, "");
export const origin = location.origin + root;

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "text") el.textContent = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// A docstring's hard line breaks joined; its blank lines (paragraphs) kept.
export function unwrap(text) {
  return (text || "").replace(/([^\n])\n(?!\n)/g, "$1 ");
}

export const $ = (id) => document.getElementById(id);
export const enc = encodeURIComponent;

let waitingForKey = null;

function askForKey(message) {
  $("key-panel").hidden = false;
  // What the page waits for, in place of a "Loading…" that would never end.
  if ($("loading")) $("loading").textContent = "This server needs an API key: enter one above to see its programs.";
  if (message) $("key-message").textContent = message;
  const input = $("key-input");
  input.value = "";
  input.focus();
  if (!waitingForKey) {
    waitingForKey = new Promise((resolve) => {
      $("key-form").addEventListener("submit", function submitted(event) {
        event.preventDefault();
        sessionStorage.setItem(KEY_STORE, input.value.trim());
        $("key-form").removeEventListener("submit", submitted);
        $("key-panel").hidden = true;
        waitingForKey = null;
        resolve();
      });
    });
  }
  return waitingForKey;
}

// The API key panel, the same on every page: built here (hidden until needed), under the header.
function keyPanel() {
  return h(
    "section",
    { id: "key-panel", class: "panel", hidden: true, "aria-labelledby": "key-title" },
    h("h2", { id: "key-title" }, "API key"),
    h(
      "form",
      { id: "key-form" },
      h("p", { id: "key-message", class: "hint" }, "This server needs an API key. It is kept only in this tab (sessionStorage)."),
      h("label", { for: "key-input" }, "Key"),
      h("input", { id: "key-input", type: "password", autocomplete: "off", required: true, "aria-describedby": "key-message" }),
      h("button", { type: "submit" }, "Use key"),
      h("button", { type: "button", id: "key-forget", class: "secondary" }, "Forget key"),
    ),
  );
}

export function setUpKeyPanel() {
  document.querySelector("header.top").after(keyPanel());
  $("key-button").addEventListener("click", () => {
    const panel = $("key-panel");
    panel.hidden = !panel.hidden;
    if (!panel.hidden) $("key-input").focus();
  });
  $("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    $("key-message").textContent = "Key forgotten.";
  });
  $("key-form").addEventListener("submit", (event) => {
    // Submitted while nothing waited for it: keep the key, reload what the page shows.
    if (waitingForKey) return;
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("key-input").value.trim());
    location.reload();
  });
}

export function hasKey() {
  return Boolean(sessionStorage.getItem(KEY_STORE));
}

// fetch() against this server with the tab's key; a 401 asks for a key and tries again (unless
// askKey is false: the caller then handles the 401 itself).
export async function api(path, { method = "GET", body, signal, headers: extra = {}, askKey = true } = {}) {
  for (;;) {
    const headers = { ...extra };
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers.Authorization = "Bearer " + key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(root + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
    if (response.status !== 401 || !askKey) return response;
    await askForKey(key ? "That key was refused. Enter another one." : undefined);
  }
}

export async function problemOf(response) {
  const text = await response.text();
  try {
    const problem = JSON.parse(text);
    if (problem && typeof problem === "object") return problem;
  } catch {
    // not JSON: a proxy's page, say
  }
  return { status: response.status, title: response.statusText || "Error", detail: text.slice(0, 500) };
}

export function locText(loc) {
  return (loc || []).filter((part) => part !== "body").join(".");
}

export function problemView(problem) {
  const errors = Array.isArray(problem.errors) ? problem.errors : [];
  return h(
    "div",
    { class: "problem" },
    h("h3", {}, `${problem.status || ""} ${problem.title || "Error"}`.trim()),
    problem.detail ? h("p", { class: "text" }, problem.detail) : null,
    errors.length
      ? h("ul", {}, errors.map((e) => h("li", {}, h("code", {}, locText(e.loc)), ": ", e.msg || "")))
      : null,
    problem.code ? h("p", { class: "hint" }, "code: ", h("code", {}, problem.code)) : null,
    problem.request_id ? h("p", { class: "hint" }, "request id: ", h("code", {}, problem.request_id)) : null,
  );
}

export async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    if (button) flash(button, "Copied");
  } catch {
    if (button) flash(button, "Select and copy");
  }
}

function flash(button, label) {
  const before = button.textContent;
  button.textContent = label;
  setTimeout(() => (button.textContent = before), 1500);
}

// Follow a $ref (and a nullable anyOf) to the schema that says what the value is.
export function resolve(schema, defs) {
  let s = schema || {};
  let nullable = false;
  for (let guard = 0; guard < 10; guard += 1) {
    if (s.$ref) {
      const target = defs[s.$ref.split("/").pop()] || {};
      const { $ref, ...rest } = s;
      s = { ...target, ...rest };
      continue;
    }
    const options = s.anyOf || s.oneOf;
    if (options) {
      const concrete = options.filter((o) => o.type !== "null");
      nullable = nullable || concrete.length < options.length;
      if (concrete.length === 1) {
        const { anyOf, oneOf, ...rest } = s;
        s = { ...concrete[0], ...rest };
        continue;
      }
    }
    if (s.allOf && s.allOf.length === 1) {
      const { allOf, ...rest } = s;
      s = { ...s.allOf[0], ...rest };
      continue;
    }
    break;
  }
  return { s, nullable };
}

export function kindOf(s) {
  if (Array.isArray(s.enum) || "const" in s) return "enum";
  if (s.title === "History" && s.properties && s.properties.messages) return "history";
  if (s.title === "Image" && s.properties && s.properties.url) return "image";
  const type = Array.isArray(s.type) ? s.type.find((t) => t !== "null") : s.type;
  if (type === "object" && s.properties) return "object";
  if (["string", "boolean", "integer", "number", "array"].includes(type)) return type;
  return "json";
}
