"""Every LM a program can reach on its own, past the LM the service gives each call.

DSPy calls whatever LM a program holds: a predictor's own (``predict.lm``), an attribute
called directly (``self.drafter(prompt)``) or entered with ``dspy.context(lm=self.strong)``,
or a module-level LM its code names. Each is found here, at startup, so that the service can
check it against the allow-list and replace it with its own client (pool, retries, cache
setting, metrics).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dspy

__all__ = ["HeldLM", "held_lms"]


@dataclass(frozen=True)
class HeldLM:
    """One place that holds an LM, and how to put another one there."""

    where: str  # for messages: "predictor 'respond.predict'", "attribute 'drafter'", ...
    lm: dspy.BaseLM
    replace: Callable[[dspy.BaseLM], None]


def held_lms(program: dspy.Module) -> list[HeldLM]:
    """The LMs held by ``program``'s modules (attributes, lists and dicts of them) and the
    module-level LMs named by the code of its own classes."""
    found: list[HeldLM] = []
    classes: dict[type, None] = {}
    for path, module in program.named_sub_modules(skip_compiled=False):
        name = "self" if path == "self" else path.removeprefix("self.")
        prefix = "" if path == "self" else f"{name}."
        for attr, value in list(vars(module).items()):
            if isinstance(module, dspy.Predict) and attr == "lm":
                if value is not None:
                    found.append(HeldLM(f"predictor {name!r}", value, _setter(module, attr)))
            else:
                found.extend(_in_value(f"{prefix}{attr}", value, _setter(module, attr)))
        classes.update(dict.fromkeys(type(module).__mro__))
    for cls in classes:
        if not _is_users(cls):
            continue
        for function in _functions(cls):
            namespace = function.__globals__
            for name in sorted(_names_in(function.__code__)):
                value = namespace.get(name)
                if isinstance(value, dspy.BaseLM):
                    where = f"module-level {name!r} (in {function.__module__})"
                    found.append(HeldLM(where, value, _global_setter(namespace, name)))
    return _unique(found)


def _in_value(path: str, value: Any, replace: Callable[[Any], None]) -> list[HeldLM]:
    if isinstance(value, dspy.BaseLM):
        return [HeldLM(f"attribute {path!r}", value, replace)]
    if isinstance(value, list):
        return [
            held
            for index, item in enumerate(value)
            for held in _in_value(f"{path}[{index}]", item, _item_setter(value, index))
        ]
    if isinstance(value, dict):
        return [
            held
            for key, item in list(value.items())
            for held in _in_value(f"{path}[{key!r}]", item, _item_setter(value, key))
        ]
    return []


def _setter(owner: Any, attr: str) -> Callable[[Any], None]:
    return lambda lm: setattr(owner, attr, lm)


def _item_setter(container: Any, key: Any) -> Callable[[Any], None]:
    return lambda lm: container.__setitem__(key, lm)


def _global_setter(namespace: dict[str, Any], name: str) -> Callable[[Any], None]:
    return lambda lm: namespace.__setitem__(name, lm)


def _is_users(cls: type) -> bool:
    """The user's own classes: DSPy's, the standard library's and builtins' code holds no LM."""
    module = cls.__module__ or ""
    return module.split(".")[0] not in ("dspy", "builtins", "abc", "typing", "pydantic")


def _functions(cls: type) -> Iterator[types.FunctionType]:
    for value in vars(cls).values():
        function = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        if isinstance(function, property):
            function = function.fget
        if inspect.isfunction(function):
            yield function


def _names_in(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_in(const)
    return names


def _unique(found: list[HeldLM]) -> list[HeldLM]:
    """One entry per place (a module reached twice is walked twice)."""
    seen: set[tuple[str, int]] = set()
    unique = []
    for held in found:
        key = (held.where, id(held.lm))
        if key not in seen:
            seen.add(key)
            unique.append(held)
    return unique
