"""A program written with postponed annotations: forward()'s hints are strings until resolved."""

from __future__ import annotations

import dspy


class Summarize(dspy.Signature):
    """Summarize the text."""

    text: str = dspy.InputField()
    summary: str = dspy.OutputField()
    keywords: list[str] = dspy.OutputField()


class FutureModule(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.summarize = dspy.Predict(Summarize)

    def forward(self, text: str, max_words: int | None = None) -> dspy.Prediction:
        prediction = self.summarize(text=text)
        return dspy.Prediction(summary=prediction.summary, keywords=prediction.keywords)
