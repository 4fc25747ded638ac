"""Programs of every shape dspy-serve derives an interface from (read with inspect.getsource).

Also a loader target: ``tests/programs/sample_programs.py:NAME``. Objects here are shared by
every test that imports them, so tests never load state into them: they build fresh copies.
"""

import enum
from typing import Literal, Optional

import dspy
import pydantic


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(pydantic.BaseModel):
    city: str
    zip_code: int


class AllTypes(dspy.Signature):
    """Exercise every field type."""

    text: str = dspy.InputField(desc="Some text.")
    count: int = dspy.InputField()
    ratio: float = dspy.InputField()
    flag: bool = dspy.InputField()
    tags: list[str] = dspy.InputField()
    scores: dict[str, int] = dspy.InputField()
    choice: Literal["a", "b"] = dspy.InputField()
    maybe: Optional[int] = dspy.InputField()  # noqa: UP045 - the typing spelling is what we test
    maybe_too: int | None = dspy.InputField()
    address: Address = dspy.InputField()
    color: Color = dspy.InputField()
    summary: str = dspy.OutputField(desc="A one-line summary.")


class AllTypesOut(dspy.Signature):
    """Return every field type."""

    prompt: str = dspy.InputField()
    text: str = dspy.OutputField(desc="Some text.")
    count: int = dspy.OutputField()
    ratio: float = dspy.OutputField()
    flag: bool = dspy.OutputField()
    tags: list[str] = dspy.OutputField()
    scores: dict[str, int] = dspy.OutputField()
    choice: Literal["a", "b"] = dspy.OutputField()
    maybe: Optional[int] = dspy.OutputField()  # noqa: UP045 - the typing spelling is what we test
    maybe_too: int | None = dspy.OutputField()
    address: Address = dspy.OutputField()
    color: Color = dspy.OutputField()


class WithDefaults(dspy.Signature):
    """Inputs the caller may leave out."""

    question: str = dspy.InputField()
    top_k: int = dspy.InputField(default=5)
    tags: list[str] = dspy.InputField(default_factory=list)
    answer: str = dspy.OutputField()


class Constrained(dspy.Signature):
    """Fields with pydantic constraints."""

    rating: int = dspy.InputField(ge=1, le=5)
    words: list[str] = dspy.InputField(min_length=1)
    verdict: str = dspy.OutputField()


class QA(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField(desc="The user's question.")
    answer: str = dspy.OutputField(desc="A short answer.")


class ContextQA(dspy.Signature):
    """Answer from the context."""

    context: list[str] = dspy.InputField(desc="Passages to answer from.")
    question: str = dspy.InputField(desc="The user's question.")
    answer: str = dspy.OutputField(desc="A short answer.")
    confidence: float = dspy.OutputField()


def retrieve(question: str, k: int) -> list[str]:
    return [f"passage {i} about {question}" for i in range(k)]


class RAG(dspy.Module):
    """Retrieve passages, then answer."""

    def __init__(self) -> None:
        super().__init__()
        self.respond = dspy.ChainOfThought(ContextQA)

    def forward(self, question: str, k: int = 3) -> dspy.Prediction:
        context = retrieve(question, k)
        prediction = self.respond(context=context, question=question)
        return dspy.Prediction(answer=prediction.answer, context=context)


class ChildOfRAG(RAG):
    """RAG with a different default."""

    def forward(self, question: str, k: int = 5) -> dspy.Prediction:
        return super().forward(question, k)


class UntypedParam(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.respond = dspy.Predict(ContextQA)

    def forward(self, question, context):  # type: ignore[no-untyped-def]
        return self.respond(context=context, question=question)


class UntypedUnused(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.respond = dspy.Predict(QA)

    def forward(self, question, style):  # type: ignore[no-untyped-def]
        return self.respond(question=f"{question} ({style})")


class AsyncOnly(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.respond = dspy.Predict(QA)

    async def aforward(self, question: str) -> dspy.Prediction:
        return await self.respond.acall(question=question)


class ReturnsStep(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.step = dspy.ChainOfThought(QA)

    def forward(self, question: str) -> dspy.Prediction:
        return self.step(question=question)


class ReturnsAssignedStep(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.step = dspy.Predict(QA)

    def forward(self, question: str) -> dspy.Prediction:
        result = self.step(question=question)
        return result


class AnnotatedReturn(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.step = dspy.Predict(QA)

    def forward(self, question: str) -> QA:
        return postprocess(self.step(question=question))


def postprocess(prediction: dspy.Prediction) -> dspy.Prediction:
    return prediction


class Underivable(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.step = dspy.Predict(QA)

    def forward(self, question: str) -> dspy.Prediction:
        result = postprocess(self.step(question=question))
        return result


class Declared(Underivable):
    serve_signature = "question: str -> answer: str, sources: list[str]"


class NoPredictors(dspy.Module):
    def forward(self, **kwargs: str) -> dspy.Prediction:
        return dspy.Prediction(**kwargs)


def make_qa() -> dspy.Module:
    return dspy.Predict(QA)


def make_nothing() -> str:
    return "not a module"


def needs_argument(model: str) -> dspy.Module:
    return dspy.Predict(QA)


qa = dspy.Predict(QA)
cot = dspy.ChainOfThought(QA)
string_signature = "question -> answer: int"
not_a_program = 42
