"""Programs for the playground's browser tests: one input of every widget type, outputs of
every rendering, and an output that carries markup."""

from __future__ import annotations

from typing import Literal

import dspy
from pydantic import BaseModel, Field


class Address(BaseModel):
    street: str
    city: str = Field(description="the city's name")


class Finding(BaseModel):
    name: str
    score: float


class Everything(dspy.Signature):
    """Exercise every input widget of the playground."""

    text: str = dspy.InputField(desc="free text to judge")
    tone: Literal["formal", "casual", "pirate"] = dspy.InputField(desc="how to answer")
    strict: bool = dspy.InputField(default=True, desc="be strict")
    count: int = dspy.InputField(ge=1, le=5, desc="how many findings")
    weight: float = dspy.InputField(default=0.5, desc="a weight")
    tags: list[str] = dspy.InputField(desc="tags to consider")
    address: Address = dspy.InputField(desc="where it happened")
    history: dspy.History = dspy.InputField(desc="the conversation so far")
    photo: dspy.Image = dspy.InputField(desc="a picture")
    summary: str = dspy.OutputField(desc="one line")
    label: Literal["good", "bad"] = dspy.OutputField()
    findings: list[Finding] = dspy.OutputField()
    extra: dict[str, int] = dspy.OutputField()


everything = dspy.Predict(Everything)


class Echo(dspy.Signature):
    """Answer the question; the answer may contain <b>markup</b>."""

    question: str = dspy.InputField(desc="a question")
    answer: str = dspy.OutputField(desc="the answer")
    mood: Literal["calm", "loud"] = dspy.OutputField()


echo = dspy.Predict(Echo)
