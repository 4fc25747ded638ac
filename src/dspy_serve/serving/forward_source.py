"""What a custom ``forward`` does with its arguments and what it returns, read from its source.

Only what is statically clear counts: when the source does not say, the answer is None and
the caller asks the user to declare the interface instead of guessing it.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import dspy
from pydantic.fields import FieldInfo

__all__ = [
    "KwargsUse",
    "entry_name",
    "is_signature",
    "kwargs_use",
    "returned_dspy_types",
    "returned_names",
    "source_strings",
    "step_outputs",
]


def entry_name(module: dspy.Module) -> str:
    """``forward``, or ``aforward`` for an async-only module (served through ``acall``)."""
    return "forward" if callable(getattr(type(module), "forward", None)) else "aforward"


def _entry_owner(module: dspy.Module) -> type:
    entry = entry_name(module)
    return next(cls for cls in type(module).__mro__ if entry in vars(cls))


def _function_tree(owner: type, entry: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(vars(owner)[entry])))
    except (OSError, TypeError, SyntaxError):
        return _function_in_module_file(owner, entry)
    function = tree.body[0]
    return function if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) else None


def _function_in_module_file(owner: type, entry: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """A class unpickled by value (``save_program`` with ``modules_to_serialize``) has no source of
    its own: read it from its module's file when that is importable, without importing it."""
    try:
        spec = importlib.util.find_spec(owner.__module__)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    try:
        body: list[ast.stmt] = ast.parse(Path(spec.origin).read_text(encoding="utf-8")).body
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    for part in [*owner.__qualname__.split("."), entry]:
        node = next((n for n in body if getattr(n, "name", None) == part), None)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and part == entry:
            return node
        if not isinstance(node, ast.ClassDef):
            return None
        body = node.body
    return None


def returned_names(module: dspy.Module, owner: type | None = None) -> list[str] | None:
    """The output fields ``forward`` returns; None when it is not statically clear."""
    mro, entry = type(module).__mro__, entry_name(module)
    owner = owner or _entry_owner(module)
    function = _function_tree(owner, entry)
    if function is None:
        return None
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
            found = returned_names(module, parent) if parent not in (None, dspy.Module) else None
        else:
            found = _names_of(module, value)
        if found is None:
            return None
        names.extend(n for n in found if n not in names)
    return names or None


def returned_dspy_types(module: dspy.Module) -> dict[str, type[dspy.Type]]:
    """The DSPy type (``dspy.Audio``, ``dspy.Image``, ...) of each returned field whose value
    forward builds itself: ``dspy.Prediction(audio=dspy.Audio(...))``, ``dspy.Audio.from_file(...)``,
    or a variable assigned (or annotated) so. A synthesizer's output is no predictor's field, yet
    its type is plain in the source."""
    owner = _entry_owner(module)
    function = _function_tree(owner, entry_name(module))
    if function is None:
        return {}
    scope = vars(sys.modules[owner.__module__]) if owner.__module__ in sys.modules else {}
    variables: dict[str, type[dspy.Type]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name, found = node.target.id, _dspy_type(_resolve(node.annotation, scope))
        elif (
            isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        ):
            name, found = node.targets[0].id, _built_type(node.value, scope)
        else:
            continue
        if found is not None:
            variables[name] = found
    types: dict[str, type[dspy.Type]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and _is_prediction(node.func):
            for keyword in node.keywords:
                value = keyword.value
                found = variables.get(value.id) if isinstance(value, ast.Name) else _built_type(value, scope)
                if keyword.arg and found is not None:
                    types.setdefault(keyword.arg, found)
    return types


def _is_prediction(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "Prediction") or (
        isinstance(func, ast.Name) and func.id == "Prediction"
    )


def _built_type(value: ast.expr, scope: dict[str, Any]) -> type[dspy.Type] | None:
    """The DSPy type a call builds: ``dspy.Audio(...)`` or a classmethod such as ``from_file``."""
    if isinstance(value, ast.Await):
        value = value.value
    if not isinstance(value, ast.Call):
        return None
    built = _dspy_type(_resolve(value.func, scope))
    if built is None and isinstance(value.func, ast.Attribute):
        built = _dspy_type(_resolve(value.func.value, scope))
    return built


def _resolve(node: ast.expr, scope: dict[str, Any]) -> Any:
    """The object a dotted name (``dspy.Audio``, ``Audio``) names in the module, else None."""
    if isinstance(node, ast.Name):
        return scope.get(node.id)
    if isinstance(node, ast.Attribute):
        return getattr(_resolve(node.value, scope), node.attr, None)
    return None


def _dspy_type(obj: Any) -> type[dspy.Type] | None:
    return obj if inspect.isclass(obj) and issubclass(obj, dspy.Type) else None


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
            outputs = step_outputs(step)
            if outputs is not None:
                return list(outputs)
    return None


def is_signature(obj: Any) -> TypeGuard[type[dspy.Signature]]:
    return inspect.isclass(obj) and issubclass(obj, dspy.Signature)


def step_outputs(step: dspy.Module) -> dict[str, FieldInfo] | None:
    """The output fields a DSPy step returns: its last predictor's (ChainOfThought adds
    ``reasoning``), or its own ``signature``'s when no predictor produces them (ReActV2's agent
    step only calls tools; its ``submit`` tool returns the outputs). None: it has no predictor."""
    predictors = [predictor for _, predictor in step.named_predictors()]
    own = getattr(step, "signature", None)
    declared = own.output_fields if is_signature(own) else None
    last = predictors[-1].signature.output_fields if predictors else None
    if declared is not None and (last is None or not declared.keys() <= last.keys()):
        return dict(declared)
    return dict(last) if last is not None else None


@dataclass
class KwargsUse:
    """What ``forward(**kwargs)`` does with ``kwargs``, as far as its source says."""

    read: set[str] = field(default_factory=set)  # kwargs["x"], kwargs.get("x"): inputs it needs
    computed: set[str] = field(default_factory=set)  # set by forward itself: not the caller's


def kwargs_use(module: dspy.Module) -> KwargsUse | None:
    """None when the source cannot be read."""
    function = _function_tree(_entry_owner(module), entry_name(module))
    if function is None or function.args.kwarg is None:
        return None
    name = function.args.kwarg.arg
    use = KwargsUse()
    for node in ast.walk(function):
        if isinstance(node, ast.Subscript) and _is_name(node.value, name):
            key = _constant_key(node.slice)
            if key is not None:
                (use.computed if isinstance(node.ctx, ast.Store) else use.read).add(key)
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and _is_name(func.value, name) and node.args:
                key = _constant_key(node.args[0])
                if key is not None and func.attr in ("get", "pop"):
                    use.read.add(key)
                elif key is not None and func.attr == "setdefault":
                    use.computed.add(key)
            if any(kw.arg is None and _is_name(kw.value, name) for kw in node.keywords):
                # step(context=..., **kwargs): forward supplies `context` itself.
                use.computed.update(kw.arg for kw in node.keywords if kw.arg is not None)
    return use


def source_strings(module: dspy.Module) -> list[str]:
    """The string literals of the entry method, and the literal parts of its f-strings
    (``f"reasoning_attempt_{i}"`` gives ``reasoning_attempt_``): names it builds itself."""
    function = _function_tree(_entry_owner(module), entry_name(module))
    if function is None:
        return []
    return [
        node.value
        for node in ast.walk(function)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def _is_name(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _constant_key(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
