"""Programs the server tests serve: the shapes users point dspy-serve at."""

from __future__ import annotations

from typing import Literal

import dspy
from pydantic import BaseModel


class Answer(dspy.Signature):
    """Answer the question in a few words."""

    question: str = dspy.InputField(desc="a factual question")
    answer: str = dspy.OutputField(desc="a short answer")


qa = dspy.Predict(Answer)


# Samples with its own LM's temperature, whatever the server's.
sampling_qa = dspy.Predict(Answer)
sampling_qa.lm = dspy.LM("openai/fake-small", temperature=0.7)


class Person(BaseModel):
    name: str
    age: int


class Kitchen(dspy.Signature):
    """Exercise every output type."""

    text: str = dspy.InputField()
    tags: list[str] = dspy.InputField()
    label: Literal["pos", "neg"] = dspy.OutputField()
    score: float = dspy.OutputField()
    count: int = dspy.OutputField()
    flag: bool = dspy.OutputField()
    person: Person = dspy.OutputField()


kitchen = dspy.Predict(Kitchen)


class TwoStepSync(dspy.Module):
    """A sync-only two-step program: runs in the worker pool."""

    def __init__(self) -> None:
        super().__init__()
        self.rewrite = dspy.Predict("question -> query")
        self.answer = dspy.Predict("query, question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        query = self.rewrite(question=question).query
        return dspy.Prediction(answer=self.answer(query=query, question=question).answer)


class TwoStepAsync(TwoStepSync):
    """The same steps with a native aforward: runs on the event loop."""

    async def aforward(self, question: str) -> dspy.Prediction:
        query = (await self.rewrite.acall(question=question)).query
        answer = (await self.answer.acall(query=query, question=question)).answer
        return dspy.Prediction(answer=answer)

    def forward(self, question: str) -> dspy.Prediction:
        return super().forward(question)
