"""Regenerate the saved state (`*.json`) of the example programs.

Each artifact holds hand-written demos (few-shot examples) plus the signature's instructions,
the same file `program.save()` writes after an optimizer run. Demos matter most for a small
local model: they show the exact output format and length wanted. Deterministic; run with

    .venv/bin/python examples/make_artifacts.py
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import dspy

HERE = Path(__file__).resolve().parent


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py by path (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"dspy_serve_example_{name}", HERE / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import examples/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def qa() -> dspy.Module:
    program = load_example("qa").program
    program.demos = [
        dspy.Example(question=question, answer=answer).with_inputs("question")
        for question, answer in [
            ("What is the capital of Japan?", "Tokyo"),
            ("What is the longest river in Africa?", "The Nile"),
            ("Who wrote Pride and Prejudice?", "Jane Austen"),
        ]
    ]
    return program


def classify() -> dspy.Module:
    program = load_example("classify").program
    # One sentence of the same shape each time, naming the label last: a small model copies the
    # pattern, then picks the label it has just written (7-8/10 vs 4-5/10 on SmolLM2-135M).
    demos = [
        (
            "The battery lasts all day and the screen is gorgeous. Best phone I've owned.",
            "The words 'gorgeous' and 'best' are praise, so it is positive.",
            "positive",
            0.95,
        ),
        (
            "The package arrived two days late and the box was crushed.",
            "The words 'late' and 'crushed' are complaints, so it is negative.",
            "negative",
            0.9,
        ),
        (
            "The meeting has been moved to 3 pm on Thursday.",
            "No words express a feeling, it only states a fact, so it is neutral.",
            "neutral",
            0.9,
        ),
    ]
    # ChainOfThought keeps its state on the inner Predict; its demos include `reasoning`.
    program.predict.demos = [
        dspy.Example(text=text, reasoning=reasoning, sentiment=sentiment, confidence=confidence).with_inputs(
            "text"
        )
        for text, reasoning, sentiment, confidence in demos
    ]
    return program


def extract() -> dspy.Module:
    example = load_example("extract")
    program, Contact = example.program, example.Contact
    program.demos = [
        dspy.Example(
            text="Thanks for your time today! -- Maria Gonzalez, Head of Sales, Northwind Traders "
            "(maria.gonzalez@northwind.com)",
            contact=Contact(
                name="Maria Gonzalez", email="maria.gonzalez@northwind.com", company="Northwind Traders"
            ),
        ).with_inputs("text"),
        # A missing field is null (the tiny model otherwise invents or repeats one).
        dspy.Example(
            text="Ask David Okafor from Stark Industries to review the draft.",
            contact=Contact(name="David Okafor", email=None, company="Stark Industries"),
        ).with_inputs("text"),
    ]
    return program


def rag() -> dspy.Module:
    program = load_example("rag").program
    demos = [  # question, search query, answer
        ("Which planet is closest to the Sun?", "closest planet Sun", "Mercury"),
        ("How much of the Solar System's mass is in the Sun?", "Sun mass Solar System", "About 99.8 percent"),
    ]
    program.write_query.demos = [
        dspy.Example(question=question, query=query).with_inputs("question") for question, query, _ in demos
    ]
    program.generate.predict.demos = []
    for question, query, answer in demos:
        context = program.search(query, question)  # exactly what forward() retrieves
        program.generate.predict.demos.append(
            dspy.Example(
                context=context,
                question=question,
                # Quoting the supporting fact is a pattern even a small model can copy.
                reasoning=f"The first fact answers it: '{context[0]}'",
                answer=answer,
            ).with_inputs("context", "question")
        )
    return program


PROGRAMS = {"qa": qa, "classify": classify, "extract": extract, "rag": rag}


def main(out_dir: Path = HERE) -> list[Path]:
    paths = []
    for name, build in PROGRAMS.items():
        path = Path(out_dir) / f"{name}.json"
        build().save(str(path))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for path in main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(f"wrote {path}")
