"""``forward(**kwargs)`` modules: served by the ``self.signature`` they follow, as their source
shows (``forward_source``), and refused, naming what to declare, when it does not say."""

from __future__ import annotations

from typing import Any

import dspy
import pytest

from dspy_serve.serving.schema import SchemaError, derive_interface
from tests.support.programs import tutorial_programs as tp


def test_kwargs_forward_following_its_self_signature_is_served_by_it() -> None:
    interface = derive_interface("summarize", tp.Summarize())

    assert interface.signature == "document -> summary"
    assert interface.instructions == "Summarize a document in one sentence."


def test_kwargs_forward_of_a_user_module_without_a_signature_is_refused_naming_the_declaration() -> None:
    with pytest.raises(SchemaError, match=r"does not say which inputs.*serve_signature.*--signature"):
        derive_interface("rag", tp.KwargsRAG())


def test_kwargs_forward_computing_a_signature_input_itself_is_refused() -> None:
    with pytest.raises(SchemaError, match=r"it computes \['context'\] itself"):
        derive_interface("rag", tp.KwargsRAGWithSignature())


class ReadsUndeclared(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.signature = dspy.Signature("question -> answer")
        self.predict = dspy.Predict(self.signature)

    def forward(self, **kwargs: Any) -> Any:
        return self.predict(question=f"{kwargs['question']} ({kwargs.get('style', 'plain')})")


class ReturnsSomethingElse(ReadsUndeclared):
    def forward(self, **kwargs: Any) -> Any:
        return dspy.Prediction(text=self.predict(**kwargs).answer)


def test_kwargs_forward_reading_an_undeclared_input_is_refused() -> None:
    with pytest.raises(SchemaError, match=r"it reads \['style'\] from kwargs"):
        derive_interface("q", ReadsUndeclared())


def test_kwargs_forward_not_returning_its_signatures_outputs_is_refused() -> None:
    with pytest.raises(SchemaError, match=r"it does not return \['answer'\]"):
        derive_interface("q", ReturnsSomethingElse())


def test_kwargs_forward_refusal_is_lifted_by_a_declaration() -> None:
    interface = derive_interface("rag", tp.KwargsRAG(), "question -> answer")

    assert interface.signature == "question -> answer"
