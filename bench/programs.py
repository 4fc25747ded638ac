"""The programs measured, importable as a module and loadable by ``dspy-serve run`` as a file.

- ``predict``: ``dspy.Predict("question -> answer")``, one LM call.
- ``TwoStep``: draft then refine, two LM calls, with ``aforward`` (dspy-serve awaits it natively).
- ``TwoStepSync``: the same steps with ``forward`` only (dspy-serve runs it in its thread pool).
"""

from __future__ import annotations

from typing import Any

import dspy

__all__ = ["PROGRAMS", "QUESTION", "TwoStep", "TwoStepSync", "build", "predict"]

QUESTION = "What is the capital of France?"


class TwoStepSync(dspy.Module):  # type: ignore[misc]  # DSPy ships no type information
    """Draft an answer, then refine it: two dependent LM calls, sync only."""

    serve_signature = "question -> answer"

    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict("question -> draft")
        self.refine = dspy.Predict("question, draft -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        draft = self.draft(question=question).draft
        return dspy.Prediction(answer=self.refine(question=question, draft=draft).answer)


class TwoStep(TwoStepSync):
    """The same two steps, with a native ``aforward``."""

    async def aforward(self, question: str) -> dspy.Prediction:
        draft = (await self.draft.acall(question=question)).draft
        refined = await self.refine.acall(question=question, draft=draft)
        return dspy.Prediction(answer=refined.answer)


predict = dspy.Predict("question -> answer")

# benchmark name -> the attribute `dspy-serve run bench/programs.py:ATTR` serves
PROGRAMS: dict[str, str] = {"predict": "predict", "two_step": "TwoStep", "two_step_sync": "TwoStepSync"}


def build(name: str) -> Any:
    """A fresh instance of the program ``name`` (a key of :data:`PROGRAMS`)."""
    if name == "predict":
        return dspy.Predict("question -> answer")
    return {"two_step": TwoStep, "two_step_sync": TwoStepSync}[name]()
