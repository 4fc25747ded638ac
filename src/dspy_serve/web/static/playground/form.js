// A form generated from a program's input JSON schema: one widget per field, each with
// get() (the JSON value, or undefined to leave the field out) and set(value).

import { h, kindOf, resolve } from "./core.js";

let ids = 0;
const nextId = (path) => `f-${path.replace(/[^\w-]/g, "-")}-${(ids += 1)}`;

function shell(path, label, s, control, id, { required } = {}) {
  const hintId = id + "-hint";
  const notes = [];
  if (s.description) notes.push(s.description);
  const bounds = boundsText(s);
  if (bounds) notes.push(bounds);
  const error = h("p", { class: "field-error", id: id + "-error" });
  const describedBy = [notes.length ? hintId : "", id + "-error"].filter(Boolean).join(" ");
  // The field's own control only (a fieldset's inner fields describe themselves).
  const own = control.matches("input,select,textarea") ? control : control.querySelector(":scope > input");
  if (own) own.setAttribute("aria-describedby", describedBy);
  return h(
    "div",
    { class: "field", "data-path": path },
    label === null ? null : h("label", { for: id }, label, required ? "" : h("span", { class: "muted" }, " (optional)")),
    notes.length ? h("p", { class: "hint", id: hintId }, notes.join(" · ")) : null,
    control,
    error,
  );
}

function boundsText(s) {
  const low = s.minimum ?? s.exclusiveMinimum;
  const high = s.maximum ?? s.exclusiveMaximum;
  if (low === undefined && high === undefined) return "";
  const left = low === undefined ? "" : `${low} ${s.exclusiveMinimum !== undefined ? "<" : "≤"} `;
  const right = high === undefined ? "" : ` ${s.exclusiveMaximum !== undefined ? "<" : "≤"} ${high}`;
  return `${left}value${right}`;
}

// ctx: { defs, turnKeys }
export function buildField(name, schema, path, required, ctx, label = name) {
  const { s, nullable } = resolve(schema, ctx.defs);
  const optional = !required || nullable;
  const kind = kindOf(s);
  const widget = builders[kind](name, s, path, optional, ctx, label);
  if (s.default !== undefined && s.default !== null) widget.set(s.default);
  return widget;
}

const builders = {
  enum(name, s, path, optional, ctx, label) {
    const values = Array.isArray(s.enum) ? s.enum : [s.const];
    const id = nextId(path);
    const select = h("select", { id, name: path });
    if (optional) select.append(h("option", { value: "" }, "(not set)"));
    values.forEach((v, i) => select.append(h("option", { value: String(i) }, String(v))));
    return {
      element: shell(path, label, s, select, id, { required: !optional }),
      get: () => (select.value === "" ? undefined : values[Number(select.value)]),
      set: (v) => {
        const i = values.findIndex((x) => x === v);
        select.value = i < 0 ? "" : String(i);
      },
    };
  },

  boolean(name, s, path, optional, ctx, label) {
    const id = nextId(path);
    const box = h("input", { type: "checkbox", role: "switch", id, name: path });
    const control = h("label", { class: "switch", for: id }, box, h("span", {}, label));
    const element = shell(path, null, s, control, id);
    return { element, get: () => box.checked, set: (v) => (box.checked = Boolean(v)) };
  },

  integer(name, s, path, optional, ctx, label) {
    return number(s, path, optional, label, true);
  },

  number(name, s, path, optional, ctx, label) {
    return number(s, path, optional, label, false);
  },

  string(name, s, path, optional, ctx, label) {
    const id = nextId(path);
    // A top-level text is a text area; a text inside a list or an object is one line.
    const short = s.format || path.split(".").length > 2 || (s.maxLength !== undefined && s.maxLength <= 200);
    const input = short
      ? h("input", { type: "text", id, name: path })
      : h("textarea", { id, name: path, rows: 3 });
    return {
      element: shell(path, label, s, input, id, { required: !optional }),
      get: () => (input.value === "" && optional ? undefined : input.value),
      set: (v) => (input.value = v == null ? "" : String(v)),
    };
  },

  array(name, s, path, optional, ctx, label) {
    const rows = h("div", { class: "rows" });
    const items = [];
    const add = (value) => {
      const index = items.length;
      const item = buildField(name, s.items || {}, `${path}.${index}`, true, ctx, `${label} ${index + 1}`);
      if (value !== undefined) item.set(value);
      const remove = h("button", { type: "button", class: "secondary", "aria-label": `Remove ${label} ${index + 1}` }, "Remove");
      const row = h("div", { class: "row" }, item.element, remove);
      const entry = { item, row };
      remove.addEventListener("click", () => {
        items.splice(items.indexOf(entry), 1);
        row.remove();
      });
      items.push(entry);
      rows.append(row);
      return item;
    };
    const addButton = h("button", { type: "button", class: "secondary" }, `Add ${label}`);
    addButton.addEventListener("click", () => {
      add();
      const last = items[items.length - 1].row.querySelector("input,select,textarea");
      if (last) last.focus();
    });
    const fieldset = h("fieldset", {}, h("legend", {}, label, optional ? h("span", { class: "muted" }, " (optional)") : ""), rows, addButton);
    const id = nextId(path);
    const element = shell(path, null, s, fieldset, id);
    const clear = () => {
      items.splice(0).forEach((entry) => entry.row.remove());
    };
    add();
    return {
      element,
      get: () => {
        // An empty row is no item (a row is added ready to type in).
        const values = items.map((entry) => entry.item.get()).filter((v) => v !== undefined && v !== "" && v !== null);
        return values.length === 0 && optional ? undefined : values;
      },
      set: (v) => {
        clear();
        (Array.isArray(v) ? v : []).forEach((x) => add(x));
      },
    };
  },

  object(name, s, path, optional, ctx, label) {
    const required = new Set(s.required || []);
    const children = Object.entries(s.properties).map(([key, sub]) => [
      key,
      buildField(key, sub, `${path}.${key}`, required.has(key), ctx),
    ]);
    const fieldset = h(
      "fieldset",
      {},
      h("legend", {}, label, optional ? h("span", { class: "muted" }, " (optional)") : ""),
      children.map(([, w]) => w.element),
    );
    const id = nextId(path);
    return {
      element: shell(path, null, s, fieldset, id),
      get: () => {
        const value = {};
        for (const [key, w] of children) {
          const v = w.get();
          if (v !== undefined) value[key] = v;
        }
        return optional && Object.keys(value).length === 0 ? undefined : value;
      },
      set: (v) => children.forEach(([key, w]) => w.set(v && typeof v === "object" ? v[key] : undefined)),
    };
  },

  // dspy.History: chat turns, each with the signature's text fields (question, answer, ...).
  history(name, s, path, optional, ctx, label) {
    const keys = ctx.turnKeys.length ? ctx.turnKeys : ["user", "assistant"];
    const turns = h("div", { class: "rows" });
    const list = [];
    const add = (message = {}) => {
      const n = list.length + 1;
      const inputs = keys.map((key) => {
        const id = nextId(`${path}.messages.${n}.${key}`);
        const area = h("textarea", { id, rows: 2 });
        area.value = message[key] == null ? "" : String(message[key]);
        return [key, area, h("div", { class: "field" }, h("label", { for: id }, key), area)];
      });
      const remove = h("button", { type: "button", class: "secondary", "aria-label": `Remove turn ${n}` }, "Remove turn");
      const fieldset = h("fieldset", { class: "turn" }, h("legend", {}, `Turn ${n}`), inputs.map((x) => x[2]), remove);
      const entry = { inputs, fieldset };
      remove.addEventListener("click", () => {
        list.splice(list.indexOf(entry), 1);
        fieldset.remove();
      });
      list.push(entry);
      turns.append(fieldset);
    };
    const addButton = h("button", { type: "button", class: "secondary" }, "Add turn");
    addButton.addEventListener("click", () => {
      add();
      list[list.length - 1].inputs[0][1].focus();
    });
    const fieldset = h("fieldset", {}, h("legend", {}, label, " (chat history)"), turns, addButton);
    const id = nextId(path);
    return {
      element: shell(path, null, s, fieldset, id),
      get: () => ({
        messages: list
          .map((entry) => Object.fromEntries(entry.inputs.filter(([, area]) => area.value !== "").map(([key, area]) => [key, area.value])))
          .filter((m) => Object.keys(m).length),
      }),
      set: (v) => {
        list.splice(0).forEach((entry) => entry.fieldset.remove());
        ((v && v.messages) || []).forEach((m) => add(m));
      },
    };
  },

  // dspy.Image: a URL, or a file read into a data: URL.
  image(name, s, path, optional, ctx, label) {
    const urlId = nextId(path + "-url");
    const fileId = nextId(path + "-file");
    const url = h("input", { type: "url", id: urlId, placeholder: "https://… or data:image/…" });
    const file = h("input", { type: "file", id: fileId, accept: "image/*" });
    const preview = h("img", { class: "preview", alt: `${label} preview`, hidden: true });
    const showPreview = () => {
      const data = url.value.startsWith("data:image/");
      preview.hidden = !data;
      if (data) preview.src = url.value;
    };
    file.addEventListener("change", () => {
      const chosen = file.files && file.files[0];
      if (!chosen) return;
      const reader = new FileReader();
      reader.onload = () => {
        url.value = String(reader.result);
        showPreview();
      };
      reader.readAsDataURL(chosen);
    });
    url.addEventListener("input", showPreview);
    const fieldset = h(
      "fieldset",
      {},
      h("legend", {}, label, " (image)"),
      h("div", { class: "field" }, h("label", { for: urlId }, "Image URL"), url),
      h("div", { class: "field" }, h("label", { for: fileId }, "or a file"), file),
      preview,
    );
    const id = nextId(path);
    return {
      element: shell(path, null, s, fieldset, id),
      get: () => (url.value ? { url: url.value } : optional ? undefined : { url: "" }),
      set: (v) => {
        url.value = v && typeof v === "object" && v.url ? v.url : typeof v === "string" ? v : "";
        showPreview();
      },
    };
  },

  // Anything else (dicts, unions, untyped): JSON typed by hand.
  json(name, s, path, optional, ctx, label) {
    const id = nextId(path);
    const area = h("textarea", { id, name: path, rows: 3, placeholder: "JSON" });
    const widget = {
      element: shell(path, `${label} (JSON)`, s, area, id, { required: !optional }),
      get: () => {
        if (area.value.trim() === "") return optional ? undefined : null;
        try {
          return JSON.parse(area.value);
        } catch {
          throw new FieldProblem(path, "This is not valid JSON.");
        }
      },
      set: (v) => (area.value = v === undefined ? "" : JSON.stringify(v, null, 2)),
    };
    return widget;
  },
};

function number(s, path, optional, label, integer) {
  const id = nextId(path);
  const attrs = { type: "number", id, name: path, step: integer ? "1" : "any", inputmode: integer ? "numeric" : "decimal" };
  if (s.minimum !== undefined) attrs.min = s.minimum;
  if (s.maximum !== undefined) attrs.max = s.maximum;
  const input = h("input", attrs);
  return {
    element: shell(path, label, s, input, id, { required: !optional }),
    get: () => {
      if (input.value === "") {
        if (input.validity && input.validity.badInput) throw new FieldProblem(path, "This is not a number.");
        return optional ? undefined : null;
      }
      return Number(input.value);
    },
    set: (v) => (input.value = v == null ? "" : String(v)),
  };
}

export class FieldProblem extends Error {
  constructor(path, message) {
    super(message);
    this.path = path;
  }
}

// The form for a whole schema: the program's inputs, or (prefix "outputs") a correction of its outputs.
export function buildForm(schema, ctx, prefix = "inputs") {
  const required = new Set(schema.required || []);
  const fields = Object.entries(schema.properties || {}).map(([key, sub]) => [
    key,
    buildField(key, sub, `${prefix}.${key}`, required.has(key), ctx),
  ]);
  return {
    elements: fields.map(([, w]) => w.element),
    get() {
      const value = {};
      for (const [key, w] of fields) {
        const v = w.get();
        if (v !== undefined) value[key] = v;
      }
      return value;
    },
    set(values) {
      for (const [key, w] of fields) if (values && key in values) w.set(values[key]);
    },
  };
}

// Mark the fields a problem names (its errors' loc, e.g. ["body", "inputs", "address", "city"]).
export function highlight(container, errors) {
  clearHighlights(container);
  let first = null;
  const unplaced = [];
  for (const error of errors || []) {
    const loc = (error.loc || []).filter((part) => part !== "body").map(String);
    let field = null;
    for (let n = loc.length; n > 0 && !field; n -= 1) {
      field = container.querySelector(`[data-path="${CSS.escape(loc.slice(0, n).join("."))}"]`);
    }
    if (!field) {
      unplaced.push(error);
      continue;
    }
    field.classList.add("invalid");
    const slot = field.querySelector(":scope > .field-error");
    slot.textContent = slot.textContent ? `${slot.textContent} ${error.msg}` : error.msg;
    for (const control of field.querySelectorAll("input,select,textarea")) control.setAttribute("aria-invalid", "true");
    first = first || field;
  }
  if (first) {
    const control = first.querySelector("input,select,textarea");
    if (control) control.focus();
  }
  return unplaced;
}

export function clearHighlights(container) {
  for (const field of container.querySelectorAll(".field.invalid")) {
    field.classList.remove("invalid");
    field.querySelector(":scope > .field-error").textContent = "";
  }
  for (const control of container.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
}
