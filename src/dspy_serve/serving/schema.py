"""Typed request and response models derived from a program's signatures.

The HTTP contract of a program is its DSPy interface: input fields become the request's
``inputs`` model and output fields the response's ``outputs`` model, with their types,
descriptions, defaults and constraints, so OpenAPI documents exactly what the program takes.

Where the interface comes from, first match wins:
1. an explicit declaration: ``serve_signature`` on the module (a Signature class or string),
   or a signature given in the settings;
2. a ``dspy.Predict`` (its signature), or a built-in wrapper whose ``forward(**kwargs)``
   hides its fields (the inputs of its first predictor or its ``signature``, the outputs of its
   last predictor: ChainOfThought adds ``reasoning``);
3. a custom ``forward``: its parameters (type hints, else the input field of the predictor that
   takes them) and what it returns (a ``dspy.Prediction(...)`` or a predictor's result).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import dspy
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from dspy_serve.errors import InvalidInput

__all__ = ["ProgramInterface", "SchemaError", "derive_interface", "example_inputs", "field_values"]

FieldSpec = tuple[Any, FieldInfo]


class SchemaError(TypeError):
    """The interface of a program cannot be derived; the message says how to declare it."""


@dataclass(frozen=True)
class ProgramInterface:
    """A program's inputs and outputs as pydantic models."""

    instructions: str
    inputs: type[BaseModel]
    outputs: type[BaseModel]
    signature: str

    def input_schema(self) -> dict[str, Any]:
        return self.inputs.model_json_schema()

    def output_schema(self) -> dict[str, Any]:
        return self.outputs.model_json_schema()

    def validate_inputs(self, data: Any, detail: str, *, at: Sequence[str | int] = ()) -> dict[str, Any]:
        """Validate raw inputs (MCP arguments, chat messages) into the values a call takes;
        errors are :class:`InvalidInput` with field paths under ``at``."""
        try:
            return field_values(self.inputs.model_validate(data))
        except ValidationError as exc:
            raise InvalidInput.from_validation(exc, detail, at=at) from None


def field_values(inputs: BaseModel) -> dict[str, Any]:
    """The validated fields, as objects (nested models stay models, as DSPy expects)."""
    return {name: getattr(inputs, name) for name in type(inputs).model_fields}


def derive_interface(
    name: str,
    module: dspy.Module,
    declared: str | type[dspy.Signature] | None = None,
    *,
    max_input_chars: int | None = None,
) -> ProgramInterface:
    """The program's interface; ``max_input_chars`` caps every string of the inputs."""
    interface = _derive(name, module, declared)
    if max_input_chars is None:
        return interface
    base = interface.inputs
    config = ConfigDict(**{**base.model_config, "str_max_length": max_input_chars})
    capped = type(
        base.__name__,
        (base,),
        {"model_config": config, "__module__": base.__module__, "__doc__": base.__doc__},
    )
    return ProgramInterface(interface.instructions, capped, interface.outputs, interface.signature)


def _derive(name: str, module: dspy.Module, declared: str | type[dspy.Signature] | None) -> ProgramInterface:
    declared = declared or getattr(module, "serve_signature", None)
    if declared is not None:
        signature = dspy.ensure_signature(declared)
        return _build(
            name, signature.instructions, _fields(signature.input_fields), _fields(signature.output_fields)
        )
    if isinstance(module, dspy.Predict):
        signature = module.signature
        return _build(
            name, signature.instructions, _fields(signature.input_fields), _fields(signature.output_fields)
        )

    predictors = [predictor for _, predictor in module.named_predictors()]
    parameters = _forward_parameters(module)
    if parameters is None:  # forward(**kwargs): a built-in wrapper
        if not predictors:
            raise SchemaError(f"{name}: no predictors and no typed forward(); declare `serve_signature`")
        own = getattr(module, "signature", None)
        first = own if _is_signature(own) else predictors[0].signature
        last = predictors[-1].signature
        instructions = first.instructions
        return _build(name, instructions, _fields(first.input_fields), _fields(last.output_fields))

    inputs = _inputs_from_parameters(name, module, parameters, predictors)
    outputs = _outputs_from_forward(name, module, predictors)
    return _build(name, _module_doc(module), inputs, outputs)


def _module_doc(module: dspy.Module) -> str:
    """The docstring of the program's class (or of a user-defined base): what the module does as
    a whole. Never a predictor's instructions, which describe one step; none is ``""``."""
    for cls in type(module).__mro__:
        if cls is dspy.Module or not issubclass(cls, dspy.Module):
            break
        doc = cls.__dict__.get("__doc__")
        if doc:
            return inspect.cleandoc(doc)
    return ""


def _is_signature(obj: Any) -> TypeGuard[type[dspy.Signature]]:
    return inspect.isclass(obj) and issubclass(obj, dspy.Signature)


def _fields(fields: dict[str, FieldInfo]) -> dict[str, FieldSpec]:
    return {field_name: (info.annotation, _public_field(info)) for field_name, info in fields.items()}


def _public_field(info: FieldInfo) -> FieldInfo:
    """Keep what describes the value (description, default, constraints), drop DSPy's prompt extras."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    desc = extra.get("desc")
    description = None if not isinstance(desc, str) or desc.startswith("${") else desc
    kwargs: dict[str, Any] = {"description": description}
    if info.default_factory is not None:
        kwargs["default_factory"] = info.default_factory
    elif not info.is_required():
        kwargs["default"] = info.default
    elif _is_optional(info.annotation):
        kwargs["default"] = None
    field: FieldInfo = Field(**kwargs)
    field.metadata = list(info.metadata)  # min_length, ge, ... from the signature
    return field


def _is_optional(annotation: Any) -> bool:
    return type(None) in getattr(annotation, "__args__", ())


def _entry_name(module: dspy.Module) -> str:
    """``forward``, or ``aforward`` for an async-only module (served through ``acall``)."""
    return "forward" if callable(getattr(type(module), "forward", None)) else "aforward"


def _forward_parameters(module: dspy.Module) -> list[inspect.Parameter] | None:
    forward = getattr(type(module), _entry_name(module))
    params = list(inspect.signature(forward).parameters.values())[1:]
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not named and any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return named


def _inputs_from_parameters(
    name: str, module: dspy.Module, parameters: list[inspect.Parameter], predictors: list[dspy.Predict]
) -> dict[str, FieldSpec]:
    hints = _resolved_hints(name, module)
    fields: dict[str, FieldSpec] = {}
    for param in parameters:
        consumer = next(
            (
                p.signature.input_fields[param.name]
                for p in predictors
                if param.name in p.signature.input_fields
            ),
            None,
        )
        if param.name in hints:
            annotation = hints[param.name]
            field = _public_field(consumer) if consumer is not None else Field()
        elif consumer is not None:
            annotation, field = consumer.annotation, _public_field(consumer)
        else:
            raise SchemaError(
                f"{name}: cannot tell the type of forward() parameter {param.name!r}: add a type hint, "
                "or declare `serve_signature` on the module"
            )
        if param.default is not inspect.Parameter.empty:
            field = FieldInfo.merge_field_infos(field, default=param.default)
        fields[param.name] = (annotation, field)
    return fields


def _resolved_hints(name: str, module: dspy.Module) -> dict[str, Any]:
    """forward()'s type hints, resolved even under ``from __future__ import annotations``."""
    try:
        return typing.get_type_hints(getattr(type(module), _entry_name(module)))
    except Exception as exc:
        raise SchemaError(
            f"{name}: cannot resolve the type hints of forward() ({exc}); "
            "declare `serve_signature` on the module"
        ) from exc


def _outputs_from_forward(
    name: str, module: dspy.Module, predictors: list[dspy.Predict]
) -> dict[str, FieldSpec]:
    returned = _resolved_hints(name, module).get("return")
    if _is_signature(returned):
        return _fields(returned.output_fields)
    known: dict[str, FieldSpec] = {}
    for predictor in predictors:
        for field_name, info in {
            **predictor.signature.input_fields,
            **predictor.signature.output_fields,
        }.items():
            known.setdefault(field_name, (info.annotation, _public_field(info)))
    names = _returned_names(module)
    if names is None:
        raise SchemaError(
            f"{name}: cannot tell which fields {type(module).__name__}.forward() returns; return "
            "dspy.Prediction(field=...) or a predictor's result, or declare `serve_signature` "
            "(e.g. serve_signature = 'question -> answer') on the module"
        )
    return {field_name: known.get(field_name, (Any, Field())) for field_name in names}


def _returned_names(module: dspy.Module, owner: type | None = None) -> list[str] | None:
    """Read forward()'s source for what it returns; None when it is not statically clear."""
    mro, entry = type(module).__mro__, _entry_name(module)
    owner = owner or next(cls for cls in mro if entry in vars(cls))
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(vars(owner)[entry])))
    except (OSError, TypeError, SyntaxError):
        return None
    function = tree.body[0]
    assigned = {
        target.id: node.value
        for node in ast.walk(function)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    names: list[str] = []
    for node in ast.walk(function):
        if not isinstance(node, ast.Return) or node.value is None:
            continue
        value = node.value
        if isinstance(value, ast.Await):
            value = value.value
        if isinstance(value, ast.Name) and value.id in assigned:
            value = assigned[value.id]
        if isinstance(value, ast.Await):
            value = value.value
        if _is_super_forward(value):
            parent = next((cls for cls in mro[mro.index(owner) + 1 :] if "forward" in vars(cls)), None)
            found = _returned_names(module, parent) if parent not in (None, dspy.Module) else None
        else:
            found = _names_of(module, value)
        if found is None:
            return None
        names.extend(n for n in found if n not in names)
    return names or None


def _is_super_forward(value: ast.expr) -> bool:
    """``super().forward(...)``: the parent's return statements decide."""
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr == "forward"
        and isinstance(value.func.value, ast.Call)
        and isinstance(value.func.value.func, ast.Name)
        and value.func.value.func.id == "super"
    )


def _names_of(module: dspy.Module, value: ast.expr) -> list[str] | None:
    if not isinstance(value, ast.Call):
        return None
    func = value.func
    if (isinstance(func, ast.Attribute) and func.attr == "Prediction") or (
        isinstance(func, ast.Name) and func.id == "Prediction"
    ):
        if any(keyword.arg is None for keyword in value.keywords):
            return None
        return [keyword.arg for keyword in value.keywords if keyword.arg]
    # self.step(...) or self.step.acall(...) where step is a predictor or a built-in wrapper.
    if isinstance(func, ast.Attribute) and func.attr in ("acall", "__call__"):
        func = func.value
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self":
        step = getattr(module, func.attr, None)
        if isinstance(step, dspy.Module):
            steps = [p for _, p in step.named_predictors()]
            if steps:
                return list(steps[-1].signature.output_fields)
    return None


def _build(
    name: str, instructions: str, inputs: dict[str, FieldSpec], outputs: dict[str, FieldSpec]
) -> ProgramInterface:
    if not outputs:
        raise SchemaError(f"{name}: the program has no output fields")
    model_name = "".join(part.capitalize() for part in name.replace("-", "_").split("_")) or "Program"
    strict = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    input_model = create_model(
        f"{model_name}Inputs", __config__=strict, __doc__=instructions or None, **inputs
    )  # type: ignore[call-overload]
    output_model = create_model(
        f"{model_name}Outputs", __config__=ConfigDict(arbitrary_types_allowed=True), **outputs
    )  # type: ignore[call-overload]
    signature = ", ".join(inputs) + " -> " + ", ".join(outputs)
    return ProgramInterface(
        instructions=instructions or "", inputs=input_model, outputs=output_model, signature=signature
    )


def example_inputs(interface: ProgramInterface, module: dspy.Module) -> dict[str, Any] | None:
    """An example request for the docs: a demo from the optimized state when there is one."""
    fields = interface.inputs.model_fields
    for _, predictor in module.named_predictors():
        for demo in getattr(predictor, "demos", []) or []:
            values = dict(demo) if not isinstance(demo, dict) else demo
            if all(name in values for name, info in fields.items() if info.is_required()):
                example = {name: values[name] for name in fields if name in values}
                try:
                    interface.inputs.model_validate(example)
                except Exception:
                    continue
                return example
    return None
