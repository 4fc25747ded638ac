"""Typed request and response models derived from a program's signatures.

The HTTP contract of a program is its DSPy interface: input fields become the request's
``inputs`` model and output fields the response's ``outputs`` model, with their types,
descriptions, defaults and constraints, so OpenAPI documents exactly what the program takes.

Where the interface comes from, first match wins:
1. an explicit declaration: ``serve_signature`` on the module (a Signature class or string),
   or a signature given in the settings;
2. a ``dspy.Predict`` (its signature); ``BestOfN``/``Refine`` (the module they run); a built-in
   wrapper whose ``forward(**kwargs)`` hides its fields (the inputs of its first predictor or its
   ``signature``, the outputs of its last predictor: ChainOfThought adds ``reasoning``; or its
   ``signature``'s, when no predictor produces them, as in ReActV2);
3. a user's ``forward(**kwargs)``: its ``self.signature``, only when its source follows it;
4. a custom ``forward``: its parameters (type hints, else the input field of the predictor that
   takes them) and what it returns (a ``dspy.Prediction(...)`` or a predictor's result), each
   returned field typed by forward's return annotation or a predictor's output field, else any JSON.

DSPy types are published in their wire form (see :mod:`dspy_serve.serving.dspy_json`), and a field
without a JSON schema is refused here, so one program never breaks the documents of the others.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import dspy
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PydanticUserError,
    ValidationError,
    create_model,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from dspy_serve.errors import InvalidInput
from dspy_serve.serving.dspy_json import wire_input_type, wire_output_type
from dspy_serve.serving.forward_source import (
    KwargsUse,
    entry_name,
    is_signature,
    kwargs_use,
    returned_dspy_types,
    returned_names,
    source_strings,
    step_outputs,
)

__all__ = ["ProgramInterface", "SchemaError", "derive_interface", "field_values"]

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
        {
            "model_config": config,
            "__module__": base.__module__,
            "__doc__": base.__doc__,
            "_cap_nested_strings": field_validator("*")(_nested_strings_capped(max_input_chars)),
        },
    )
    return ProgramInterface(interface.instructions, capped, interface.outputs, interface.signature)


def _nested_strings_capped(max_chars: int) -> Any:
    """A validator refusing any string longer than ``max_chars`` inside a value: in nested models,
    dicts (keys too), lists and ``dspy.History``, which ``str_max_length`` does not reach."""

    def check(cls: type[BaseModel], value: Any) -> Any:
        pending: list[tuple[str, Any]] = [("", value)]
        while pending:
            path, item = pending.pop()
            if isinstance(item, str):
                if len(item) > max_chars:
                    raise PydanticCustomError(
                        "string_too_long",
                        "String should have at most {max_length} characters (at {path})",
                        {"max_length": max_chars, "path": path.lstrip(".") or "."},
                    )
            elif isinstance(item, BaseModel):
                pending.extend((f"{path}.{name}", getattr(item, name)) for name in type(item).model_fields)
            elif isinstance(item, dict):
                for key, entry in item.items():
                    pending.extend(((f"{path}.{key!s:.40}", key), (f"{path}.{key!s:.40}", entry)))
            elif isinstance(item, (list, tuple, set, frozenset)):
                pending.extend((f"{path}.{index}", entry) for index, entry in enumerate(item))
        return value

    return classmethod(check)


def _derive(name: str, module: dspy.Module, declared: str | type[dspy.Signature] | None) -> ProgramInterface:
    declared = declared or getattr(module, "serve_signature", None)
    if declared is not None:
        return _from_signature(name, dspy.ensure_signature(declared))
    if isinstance(module, dspy.Predict):
        return _from_signature(name, module.signature)
    wrapped = _wrapped_program(module)
    if wrapped is not None:  # BestOfN / Refine: the module they run decides
        return _derive(name, wrapped, None)

    predictors = [predictor for _, predictor in module.named_predictors()]
    parameters = _forward_parameters(module)
    if parameters is None:
        return _from_kwargs_forward(name, module, predictors)

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


def _from_signature(name: str, signature: type[dspy.Signature]) -> ProgramInterface:
    return _build(
        name, signature.instructions, _fields(signature.input_fields), _fields(signature.output_fields)
    )


def _is_builtin(module: dspy.Module) -> bool:
    """The entry method is DSPy's own (ChainOfThought, ReAct, ...), not the user's."""
    owner = next(cls for cls in type(module).__mro__ if entry_name(module) in vars(cls))
    return owner.__module__.split(".")[0] == "dspy"


def _wrapped_program(module: dspy.Module) -> dspy.Module | None:
    inner = getattr(module, "module", None)
    return inner if _is_builtin(module) and isinstance(inner, dspy.Module) else None


def _from_kwargs_forward(name: str, module: dspy.Module, predictors: list[dspy.Predict]) -> ProgramInterface:
    """``forward(**kwargs)`` hides its fields. DSPy's wrappers follow their ``signature`` (or their
    first predictor's) in and their last predictor's out; a user's module is served only by what
    it declares in ``self.signature``, and only when its source shows that it follows it."""
    own = getattr(module, "signature", None)
    if isinstance(own, str):
        own = dspy.ensure_signature(own)
    use = None if _is_builtin(module) else kwargs_use(module)
    if _is_builtin(module) or (not is_signature(own) and _passes_kwargs_to_builtin(module, use)):
        outputs = step_outputs(module)
        if outputs is None:  # no predictors, and no signature of its own
            raise SchemaError(f"{name}: no predictors and no typed forward(); {_DECLARE}")
        # Flex has no predictors until its code runs: its signature is all there is.
        first = own if is_signature(own) else predictors[0].signature
        return _build(name, first.instructions, _fields(first.input_fields), _fields(outputs))
    cls = type(module).__name__
    if not is_signature(own):
        raise SchemaError(f"{name}: {cls}.forward(**kwargs) does not say which inputs it takes; {_DECLARE}")
    returned = returned_names(module)
    problems: list[str] = []
    if use is None or returned is None:
        problems.append("its source does not show what it takes and returns")
    else:
        if computed := sorted(use.computed & set(own.input_fields)):
            problems.append(f"it computes {computed} itself, which self.signature takes as inputs")
        if undeclared := sorted(use.read - set(own.input_fields)):
            problems.append(f"it reads {undeclared} from kwargs, which self.signature does not declare")
        if unreturned := [field for field in own.output_fields if field not in returned]:
            problems.append(f"it does not return {unreturned}, which self.signature declares as outputs")
    if problems:
        raise SchemaError(
            f"{name}: {cls}.forward(**kwargs) does not follow its self.signature "
            f"({'; '.join(problems)}); {_DECLARE}"
        )
    return _from_signature(name, own)


def _passes_kwargs_to_builtin(module: dspy.Module, use: KwargsUse | None) -> bool:
    """A thin subclass of a DSPy wrapper (``class Logged(dspy.ChainOfThought)``) whose forward
    hands its kwargs on untouched: the wrapper's own interface holds."""
    builtin_base = any(
        cls.__module__.split(".")[0] == "dspy" and cls is not dspy.Module and "forward" in vars(cls)
        for cls in type(module).__mro__[1:]
    )
    return builtin_base and use is not None and not use.read and not use.computed


_DECLARE = (
    "declare its interface with `serve_signature = 'question -> answer'` on the module "
    "or --signature NAME='question -> answer'"
)


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


def _forward_parameters(module: dspy.Module) -> list[inspect.Parameter] | None:
    """forward's named parameters, or None for a ``forward(**kwargs)``. A DSPy module's
    keyword-only parameters beside ``**kwargs`` are call options, not inputs (RLM's
    ``interpreter_factory``): its signature says what it takes."""
    forward = getattr(type(module), entry_name(module))
    params = list(inspect.signature(forward).parameters.values())[1:]
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        options = all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in named)
        if not named or (options and _is_builtin(module)):
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
        elif _is_builtin(module):
            raise SchemaError(_builtin_refusal(name, module, parameters, predictors, param.name))
        else:
            raise SchemaError(
                f"{name}: cannot tell the type of forward() parameter {param.name!r}: add a type hint, "
                "or declare `serve_signature` on the module"
            )
        if param.default is not inspect.Parameter.empty:
            field = FieldInfo.merge_field_infos(field, default=param.default)
        fields[param.name] = (annotation, field)
    return fields


def _builtin_refusal(
    name: str,
    module: dspy.Module,
    parameters: list[inspect.Parameter],
    predictors: list[dspy.Predict],
    untyped: str,
) -> str:
    """Serving a DSPy class directly whose forward has untyped parameters (MultiChainComparison):
    its code is not the user's to annotate, so the way out, with an example built from what was
    found, comes first."""
    inputs = [param.name for param in parameters]
    takes_kwargs = any(
        p.kind is p.VAR_KEYWORD
        for p in inspect.signature(getattr(type(module), entry_name(module))).parameters.values()
    )
    if takes_kwargs and predictors:
        # What forward hands on to its predictor, less the inputs it builds itself (named in its code).
        built = [text for text in source_strings(module) if len(text) >= 3]
        inputs += [
            field
            for field in predictors[0].signature.input_fields
            if field not in inputs and not any(field.startswith(text) for text in built)
        ]
    outputs = list(step_outputs(module) or {}) or ["answer"]
    example = f"{', '.join(inputs)} -> {', '.join(outputs)}"
    return (
        f'{name}: serve it with --signature {name}="{example}" (or set `serve_signature = "{example}"` '
        f"on the instance), giving each input its type (a bare name is read as str): DSPy's "
        f"{type(module).__name__}.forward() does not say what type {untyped!r} is, and DSPy's code "
        "is not yours to annotate"
    )


def _resolved_hints(name: str, module: dspy.Module) -> dict[str, Any]:
    """forward()'s type hints, resolved even under ``from __future__ import annotations``."""
    try:
        return typing.get_type_hints(getattr(type(module), entry_name(module)))
    except Exception as exc:
        raise SchemaError(
            f"{name}: cannot resolve the type hints of forward() ({exc}); "
            "declare `serve_signature` on the module"
        ) from exc


def _outputs_from_forward(
    name: str, module: dspy.Module, predictors: list[dspy.Predict]
) -> dict[str, FieldSpec]:
    """Returned fields, typed by what declares them: forward's return annotation (a Signature or
    a pydantic model), else a predictor's output field of that name, else the DSPy type forward
    builds for it (``dspy.Audio(...)``: a typed object, as a ``dspy.Image`` input is), else any
    JSON. Never an input field: a program passes its inputs' values on, not their types."""
    returned = _resolved_hints(name, module).get("return")
    if is_signature(returned):
        return _fields(returned.output_fields)
    if _is_plain_model(returned):
        return {field_name: (info.annotation, info) for field_name, info in returned.model_fields.items()}
    known: dict[str, FieldSpec] = {}
    for predictor in predictors:
        for field_name, info in predictor.signature.output_fields.items():
            known.setdefault(field_name, (info.annotation, _public_field(info)))
    for _, step in module.named_sub_modules():
        # A built-in step's outputs that no predictor produces (ReActV2's, from its submit tool).
        for field_name, info in (step_outputs(step) or {}).items():
            known.setdefault(field_name, (info.annotation, _public_field(info)))
    names = returned_names(module)
    if names is None:
        raise SchemaError(
            f"{name}: cannot tell which fields {type(module).__name__}.forward() returns; return "
            f"dspy.Prediction(field=...) or a predictor's result, or {_DECLARE}"
        )
    built = returned_dspy_types(module)
    for field_name, annotation in built.items():
        known.setdefault(field_name, (annotation, Field(description=None)))
    return {field_name: known.get(field_name) or _any_json() for field_name in names}


def _is_plain_model(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return (
        inspect.isclass(annotation)
        and issubclass(annotation, BaseModel)
        and not issubclass(annotation, (dspy.Type, dspy.Example))
    )


def _any_json() -> FieldSpec:
    return (JsonValue, Field(description="Any JSON: the program does not declare this field's type."))


def _build(
    name: str, instructions: str, inputs: dict[str, FieldSpec], outputs: dict[str, FieldSpec]
) -> ProgramInterface:
    if not outputs:
        raise SchemaError(f"{name}: the program has no output fields")
    model_name = "".join(part.capitalize() for part in name.replace("-", "_").split("_")) or "Program"
    strict = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    inputs = {key: (wire_input_type(annotation), info) for key, (annotation, info) in inputs.items()}
    outputs = {key: (wire_output_type(annotation), info) for key, (annotation, info) in outputs.items()}
    _check_json_schemas(name, "input", inputs)
    _check_json_schemas(name, "output", outputs)
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


def _check_json_schemas(name: str, kind: str, fields: dict[str, FieldSpec]) -> None:
    """A field without a JSON schema would break /openapi.json and /programs for every program
    in the process: refuse it here, at startup, by name. OpenAPI documents each model a field
    reaches on its own, so each is checked too."""
    for field_name, (annotation, info) in fields.items():
        field_model = create_model(  # type: ignore[call-overload]
            "Field", __config__=ConfigDict(arbitrary_types_allowed=True), **{field_name: (annotation, info)}
        )
        for model in [field_model, *_models_in(annotation)]:
            for mode in ("validation", "serialization"):
                try:
                    model.model_json_schema(mode=mode)
                except PydanticUserError as exc:
                    raise SchemaError(
                        f"{name}: {kind} field {field_name!r} of type {_type_name(annotation)} cannot be "
                        f"described as JSON ({type(exc).__name__}); give it a type that has a JSON schema, "
                        f"or {_DECLARE}"
                    ) from exc


def _models_in(annotation: Any, seen: set[type] | None = None) -> list[type[BaseModel]]:
    seen = set() if seen is None else seen
    found: list[type[BaseModel]] = []
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel) and annotation not in seen:
        seen.add(annotation)
        found.append(annotation)
        for info in annotation.model_fields.values():
            found.extend(_models_in(info.annotation, seen))
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg, seen))
    return found


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if inspect.isclass(annotation) else str(annotation)
