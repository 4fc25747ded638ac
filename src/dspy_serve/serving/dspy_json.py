"""DSPy's own types as the JSON a client sends and receives.

DSPy types (``dspy.Type`` subclasses) serialize themselves for prompts, not for clients:
``dspy.Audio().model_dump()`` is a prompt-encoding string and ``dspy.Code`` dumps to a bare
string while its schema says object. Here each gets a wire form whose JSON schema is exactly
what is sent: ``Code`` and ``Reasoning`` are strings, media and other types are objects of
their fields. Values the program returns (nested ``Prediction``\\ s included) are turned into
that form before they are validated, so the published schema and the bytes always agree.

A ``dspy.Tool`` input cannot come from JSON (it wraps a Python function): callers describe
it by name, description and argument schema, which is all a prompt needs (DSPy's
``ToolCalls`` pattern, where the program proposes calls and the caller runs them).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import typing
from collections.abc import Mapping
from typing import Annotated, Any

import dspy
from pydantic import BaseModel, ConfigDict, Field, ValidatorFunctionWrapHandler, WrapValidator, create_model
from pydantic.fields import FieldInfo

from dspy_serve.serving.media_inputs import MEDIA_TYPES, media_input

__all__ = ["ToolDescription", "to_wire", "wire_input_type", "wire_output_type"]

_StringTypes = (dspy.Code, dspy.Reasoning)


class ToolDescription(BaseModel):
    """A tool the program may propose calls to; the caller runs it, never the server."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str | None = None
    args: dict[str, Any] = Field(default_factory=dict, description="JSON schema of each argument, by name.")


def _described_tool(described: ToolDescription) -> dspy.Tool:

    def not_run_here(**kwargs: Any) -> Any:
        raise RuntimeError(f"tool {described.name!r} was described by the caller; the server cannot run it")

    return dspy.Tool(not_run_here, name=described.name, desc=described.description or "", args=described.args)


def _tool_from_description(value: Any, handler: ValidatorFunctionWrapHandler) -> dspy.Tool:
    return value if isinstance(value, dspy.Tool) else _described_tool(handler(value))


# Documented (and flattened into OpenAPI) as a ToolDescription: dspy.Tool has no JSON schema.
_TOOL_INPUT = Annotated[ToolDescription, WrapValidator(_tool_from_description)]


def wire_input_type(annotation: Any) -> Any:
    """The annotation a request field validates with: DSPy's own, except for tools."""
    return _map_annotation(annotation, _input_leaf)


def _input_leaf(annotation: Any) -> Any:
    if inspect.isclass(annotation) and issubclass(annotation, dspy.Tool):
        return _TOOL_INPUT
    if inspect.isclass(annotation) and issubclass(annotation, MEDIA_TYPES):
        return media_input(annotation)  # never a local file, never a download by the server
    return annotation


def wire_output_type(annotation: Any) -> Any:
    """The annotation a response field is validated and documented with."""
    return _map_annotation(annotation, _output_leaf)


def _output_leaf(annotation: Any) -> Any:
    if not inspect.isclass(annotation) or not issubclass(annotation, dspy.Type):
        return annotation
    if issubclass(annotation, _StringTypes):
        return str
    if _keeps_own_serializer(annotation):
        return annotation
    return _mirror(annotation)


def _keeps_own_serializer(cls: type[dspy.Type]) -> bool:
    """Decision types (Score, Choice, ...) already serialize to plain JSON objects."""
    return any(base.__name__ == "_Decision" for base in cls.__mro__)


_MIRRORS: dict[type[dspy.Type], type[BaseModel]] = {}


def _mirror(cls: type[dspy.Type]) -> type[BaseModel]:
    """A plain model with ``cls``'s data fields: what its value looks like as JSON (one per
    class, so the OpenAPI document defines it once)."""
    if cls in _MIRRORS:
        return _MIRRORS[cls]
    fields: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        if _is_callable(info.annotation):
            continue
        kwargs: dict[str, Any] = {"description": info.description}
        if info.default_factory is not None:
            kwargs["default_factory"] = info.default_factory
        elif not info.is_required():
            kwargs["default"] = info.default
        fields[name] = (wire_output_type(info.annotation), Field(**kwargs))
    model: type[BaseModel] = create_model(
        cls.__name__, __doc__=_first_paragraph(cls.__doc__), __module__=__name__, **fields
    )
    return _MIRRORS.setdefault(cls, model)


def _first_paragraph(doc: str | None) -> str | None:
    return inspect.cleandoc(doc).split("\n\n", 1)[0] if doc else None


def _is_callable(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    return origin is typing.Callable or getattr(origin, "__name__", "") == "Callable"


def _map_annotation(annotation: Any, leaf: Any) -> Any:
    """Apply ``leaf`` to every type inside ``annotation`` (list[...], dict[...], unions, ...)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is None or not args:
        return leaf(annotation)
    if origin is Annotated:
        return Annotated[(_map_annotation(args[0], leaf), *annotation.__metadata__)]
    if origin is typing.Literal:
        return annotation
    mapped: tuple[Any, ...] = tuple(arg if arg is Ellipsis else _map_annotation(arg, leaf) for arg in args)
    if mapped == args:
        return annotation
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        return functools.reduce(lambda a, b: a | b, mapped)
    try:
        return origin[mapped] if len(mapped) > 1 else origin[mapped[0]]
    except TypeError:
        return annotation


def to_wire(value: Any) -> Any:
    """A program's returned value as JSON-ready data in the shape :func:`wire_output_type`
    documents. Values it does not know are left for the output model to judge."""
    if isinstance(value, dspy.Example):  # Prediction included
        return {key: to_wire(item) for key, item in value.items()}
    if isinstance(value, dspy.Type):
        return _type_to_wire(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)  # the program's own model, as it dumps itself
    if isinstance(value, Mapping):
        return {key: to_wire(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_wire(item) for item in value]
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _type_to_wire(value: dspy.Type) -> Any:
    if isinstance(value, dspy.Code):
        return value.code
    if isinstance(value, dspy.Reasoning):
        return value.content
    if _keeps_own_serializer(type(value)):
        return value.model_dump(mode="json")
    fields: dict[str, FieldInfo] = type(value).model_fields
    return {
        name: to_wire(getattr(value, name))
        for name, info in fields.items()
        if not _is_callable(info.annotation)
    }
