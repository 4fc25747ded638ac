"""Reading the prompts DSPy's adapters write, and inventing answers that match them.

The fake LM (:mod:`tests.support.fake_lm`) answers with :func:`compose_answer`; tests read what
a program sent with :func:`prompt_text`, and script agents' turns with :func:`react_agent` and
:func:`react_v2_agent`.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

Body = dict[str, Any]
Schema = Mapping[str, Any]


_OUTPUT_SECTION = re.compile(r"Your output fields are:\n(.*?)(?:\nAll interactions will be|\Z)", re.S)
_FIELD_LINE = re.compile(r"^\d+\. `(\w+)` \((.*?)\):", re.M)
_NOTE_LINE = re.compile(r"\{(\w+)\}\s+# note: the value you produce (.*)")
_JSON_OUTPUTS = "Outputs will be a JSON object with the following fields."
_SCHEMA_NOTE = "must adhere to the JSON schema: "
_ONE_OF_NOTE = re.compile(r"must (?:exactly match \(no extra characters\) |be )one of: (.*)")
_STRING_FORMATS = {"date-time": "2024-01-01T00:00:00Z", "date": "2024-01-01", "time": "00:00:00"}


def message_text(message: Mapping[str, Any]) -> str:
    """The text of one chat message, whether ``content`` is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text") or "") for part in content if isinstance(part, dict))
    return ""


def prompt_text(body: Mapping[str, Any]) -> str:
    """All message texts of a request body, for substring assertions in tests."""
    return "\n".join(message_text(m) for m in body.get("messages") or [] if isinstance(m, dict))


def _field_notes(system: str) -> dict[str, str]:
    """Per-field ``# note: ...`` text. JSONAdapter nests these in JSON strings, so decode that block first."""
    lines = system.splitlines()
    start = system.find(_JSON_OUTPUTS)
    brace = system.find("{", start) if start >= 0 else -1
    if brace >= 0:
        try:
            block, _ = json.JSONDecoder().raw_decode(system, brace)
            lines = [v for v in block.values() if isinstance(v, str)]
        except (ValueError, AttributeError):
            pass
    return {m[1]: m[2] for line in lines if (m := _NOTE_LINE.search(line))}


def value_from_schema(schema: Schema, name: str = "value", root: Schema | None = None) -> Any:
    """A minimal deterministic instance of a JSON schema (first option of every choice)."""
    root = schema if root is None else root
    if isinstance(ref := schema.get("$ref"), str):
        target: Any = root
        for part in ref.removeprefix("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        return value_from_schema(target, name, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if options := schema.get(key):
            concrete = [o for o in options if o.get("type") != "null"] or options
            return value_from_schema(concrete[0], name, root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        return {key: value_from_schema(sub, key, root) for key, sub in properties.items()}
    if kind == "array":
        if prefix := schema.get("prefixItems"):
            return [value_from_schema(sub, name, root) for sub in prefix]
        return [value_from_schema(schema.get("items") or {}, name, root)] * max(1, schema.get("minItems", 1))
    if kind == "integer":
        return max(1, math.ceil(schema.get("minimum", 1)))
    if kind == "number":
        return max(1.5, schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _STRING_FORMATS.get(schema.get("format", ""), f"fake {name}")


def _default_value(name: str, type_name: str, note: str) -> Any:
    """A value DSPy will parse for a field, from its schema note, else its displayed type name."""
    if _SCHEMA_NOTE in note:
        try:
            schema, _ = json.JSONDecoder().raw_decode(note, note.index(_SCHEMA_NOTE) + len(_SCHEMA_NOTE))
            return value_from_schema(schema, name)
        except ValueError:
            pass
    if type_name.startswith("Literal[") and type_name.endswith("]"):
        try:
            return ast.literal_eval(f"[{type_name[8:-1]}]")[0]
        except (ValueError, SyntaxError, IndexError):
            pass
    if one_of := _ONE_OF_NOTE.search(note):
        return one_of[1].split("; ")[0]
    return {"int": 1, "float": 1.5, "bool": True, "dict": {}}.get(type_name, f"fake {name}")


def output_fields(system: str) -> dict[str, Any]:
    """Output field names of a DSPy system message, mapped to default values of their types."""
    section = _OUTPUT_SECTION.search(system)
    if not section:
        return {}
    notes = _field_notes(system)
    return {m[1]: _default_value(m[1], m[2], notes.get(m[1], "")) for m in _FIELD_LINE.finditer(section[1])}


def compose_answer(body: Body, overrides: Mapping[str, Any]) -> str:
    """The assistant content for a request: JSON-schema, JSON, XML, or ChatAdapter field format."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    system = "\n".join(message_text(m) for m in messages if m.get("role") in ("system", "developer"))
    last_user = next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        value = value_from_schema(schema, "response")
        if isinstance(value, dict):
            value.update({k: v for k, v in overrides.items() if k in value})
        return json.dumps(value)
    defaults = output_fields(system)
    values = {name: overrides.get(name, default) for name, default in defaults.items()} or dict(overrides)
    if not values:
        return "fake response"
    json_prompt = _JSON_OUTPUTS in system or "Respond with a JSON object" in last_user
    if response_format.get("type") == "json_object" or json_prompt:
        return json.dumps(values)
    if _XML_OUTPUTS in last_user:
        return "\n\n".join(f"<{k}>\n{_xml_text(v)}\n</{k}>" for k, v in values.items())
    sections = [f"[[ ## {k} ## ]]\n{v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()]
    return "\n\n".join([*sections, "[[ ## completed ## ]]"])


_XML_OUTPUTS = "Respond with the corresponding output fields wrapped in XML tags"


def _xml_text(value: Any) -> str:
    """A value as XMLAdapter asks for it: text escaped, anything else as JSON (which it parses)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("&", "&amp;").replace("<", "&lt;")


_OBSERVATION = re.compile(r"\[\[ ## observation_(\d+) ## \]\]")


def react_agent(*steps: tuple[str, Mapping[str, Any]], **final: Any) -> Callable[[Body], dict[str, Any]]:
    """Answers (for ``FakeLM.answers``) that drive a ``dspy.ReAct`` agent: call each
    ``(tool_name, tool_args)`` of ``steps`` in turn, then ``finish``; ``final`` gives the
    extract step's fields (say ``answer="Paris"``). The step is read from the trajectory in the
    prompt (how many ``observation_N`` it holds), so concurrent agents do not interfere.
    """

    def answer(body: Body) -> dict[str, Any]:
        done = len(set(_OBSERVATION.findall(prompt_text(body))))
        tool, args = steps[done] if done < len(steps) else ("finish", {})
        return {
            "next_thought": f"Step {done + 1}: I should call {tool}.",
            "next_tool_name": tool,
            "next_tool_args": dict(args),
            **final,
        }

    return answer


def react_v2_agent(*steps: tuple[str, Mapping[str, Any]], **final: Any) -> Callable[[Body], dict[str, Any]]:
    """Answers that drive a ``dspy.ReActV2`` agent: one turn per ``(tool_name, tool_args)`` of
    ``steps``, then ``submit`` with ``final`` (its outputs). The turn is read from the tool results
    the prompt's history holds, so concurrent agents do not interfere."""

    def answer(body: Body) -> dict[str, Any]:
        done = prompt_text(body).count("[[ ## tool_call_results ## ]]")
        tool, args = steps[done] if done < len(steps) else ("submit", final)
        calls = {"tool_calls": [{"name": tool, "args": dict(args)}]}
        return {"next_thought": f"Turn {done + 1}: I should call {tool}.", "tool_calls": json.dumps(calls)}

    return answer
