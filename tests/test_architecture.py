"""The layers stay layers: checked over the imports of every module, as written in the source.

``serving`` (the call pipeline) and ``lm`` know nothing of HTTP, so every front end (program
routes, OpenAI-compatible, MCP, whatever comes next) can drive them; ``web`` knows nothing of
the other protocols or of deployment; the client depends on the error tree alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dspy_serve"

WEB_FRAMEWORKS = ("fastapi", "starlette", "uvicorn")

# Which of our own layers each layer may not import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "serving": ("web", "interop", "deploy", "app", "cli", "client"),
    # The LMs sit below the pipeline; they read the request's deadline from call_scope.py, a root
    # module both own.
    "lm": ("serving", "web", "interop", "deploy", "app", "cli", "client"),
    "web": ("interop", "deploy", "app", "cli", "client"),
    # The store knows tables and SQL, nothing of calls or HTTP; the data loop sits on the pipeline.
    "store": ("serving", "lm", "data", "web", "interop", "deploy", "app", "cli", "client"),
    "data": ("web", "interop", "deploy", "app", "cli", "client", "optimize"),
    # Durable jobs (#28) run items through the pipeline and keep them in the store; HTTP sits above.
    "jobs": ("web", "interop", "deploy", "app", "cli", "client", "optimize", "data"),
    "optimize": ("web", "interop", "deploy", "app", "cli", "client"),
    # Offline batch is a front end without HTTP: the pipeline, or the client for --url.
    "offline": ("web", "interop", "deploy", "app", "cli", "commands", "data", "optimize"),
    "interop": ("deploy", "app", "cli", "client"),
    # Comparing versions (#27) reads the store; the admin API and the CLI sit above it.
    "compare": ("web", "interop", "deploy", "app", "cli", "client", "commands", "jobs", "offline"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, absolute, at any depth (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            assert node.level == 0, f"{path}: relative import of {node.module}"
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def layer_modules(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


def within(imported: str, layer: str) -> bool:
    return imported == f"dspy_serve.{layer}" or imported.startswith(f"dspy_serve.{layer}.")


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_never_imports_the_layers_above_it(layer: str) -> None:
    assert layer_modules(layer), f"no modules in {layer}/"
    breaches = [
        f"{module_name(path)} imports {imported}"
        for path in layer_modules(layer)
        for imported in imports_of(path)
        if any(within(imported, above) for above in FORBIDDEN[layer])
    ]
    assert breaches == []


@pytest.mark.parametrize("layer", ["serving", "lm"])
def test_the_pipeline_and_the_lms_import_no_web_framework(layer: str) -> None:
    breaches = [
        f"{module_name(path)} imports {imported}"
        for path in layer_modules(layer)
        for imported in imports_of(path)
        if imported.split(".")[0] in WEB_FRAMEWORKS
    ]
    assert breaches == []


def test_the_client_depends_on_the_error_tree_alone() -> None:
    ours = {name for name in imports_of(PACKAGE / "client.py") if name.startswith("dspy_serve")}
    assert ours <= {"dspy_serve", "dspy_serve.errors"}


def test_every_module_belongs_to_a_layer_or_is_a_known_root() -> None:
    """A new top-level module is a decision about layers: make it here, not by accident."""
    roots = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py"}
    assert roots == {
        "__init__.py", "__main__.py", "_version.py", "app.py", "call_scope.py", "cli.py", "client.py",
        "errors.py", "logs.py", "ray_serve.py", "redaction.py", "settings.py",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("module", "may_import"),
    [("redaction", set()), ("errors", {"dspy_serve.redaction"}), ("logs", {"dspy_serve.redaction"})],
)
def test_the_shared_modules_stand_below_every_layer(module: str, may_import: set[str]) -> None:
    """Every layer reports errors and logs, so these import no layer: redacting secrets lives
    below them (redaction.py), and what the secrets are is found above (serving/secrets.py)."""
    ours = {name for name in imports_of(PACKAGE / f"{module}.py") if name.startswith("dspy_serve")}
    assert {name.rpartition(".")[0] if name.count(".") > 1 else name for name in ours} <= may_import


def test_the_checker_sees_a_breach() -> None:
    """The checks above can fail: an upward import is found, relative imports are refused."""
    fake = PACKAGE.parent.parent / "build" / "architecture-probe.py"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text("def f():\n    from dspy_serve.web.sse import sse_event\n")
    try:
        assert "dspy_serve.web.sse" in imports_of(fake)
        assert within("dspy_serve.web.sse", "web") and not within("dspy_serve.webhooks", "web")
    finally:
        fake.unlink()


def _calls_of(path: Path, receiver_suffix: str, methods: set[str]) -> list[str]:
    """``<...receiver_suffix>.<method>(...)`` calls in a module, by receiver name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in methods:
            receiver = node.func.value
            name = receiver.attr if isinstance(receiver, ast.Attribute) else getattr(receiver, "id", "")
            if name.endswith(receiver_suffix):
                found.append(f"{module_name(path)}: {name}.{node.func.attr}")
    return found


def test_one_run_loop_and_one_admission() -> None:
    """#21: a program runs (``runner.call``/``runner.stream``) and a caller is admitted
    (``front_door.admit``) in serving/call.py only, so no front end can skip either."""
    modules = sorted(PACKAGE.rglob("*.py"))
    runs = [hit for path in modules for hit in _calls_of(path, "runner", {"call", "stream"})]
    admissions = [hit for path in modules for hit in _calls_of(path, "door", {"admit"})]
    assert sorted(runs) == ["dspy_serve.serving.call: runner.call", "dspy_serve.serving.call: runner.stream"]
    assert admissions == ["dspy_serve.serving.call: door.admit"]


def test_errors_are_noted_by_the_one_renderer_of_each_wire() -> None:
    """#21: nothing notes an error on the caller by hand; each wire's renderer does (problem+json,
    OpenAI's error body, MCP's tool error), and a call's record does for its own error."""
    modules = sorted(PACKAGE.rglob("*.py"))
    reports = sorted(
        {hit.partition(":")[0] for path in modules for hit in _calls_of(path, "caller", {"report"})}
    )
    reports += sorted(
        {hit.partition(":")[0] for path in modules for hit in _calls_of(path, "self", {"report"})}
    )
    assert reports == [
        "dspy_serve.interop.mcp",
        "dspy_serve.interop.openai",
        "dspy_serve.web.problems",
        "dspy_serve.serving.caller",
    ]
