"""A program file that configures ``dspy.TwoStepAdapter`` as it is imported, as DSPy's docs
write it: the main LM answers in free text, a second LM extracts the fields.

Configuring DSPy is process-wide: a test serving it restores DSPy's settings afterwards. The
extraction LM talks to the fake LM whose address the test puts in the environment.
"""

from __future__ import annotations

import os

import dspy

extraction_lm = dspy.LM(
    "openai/fake-model", api_base=os.environ.get("FAKE_LM_BASE_URL"), api_key="fake", cache=False
)
dspy.configure(adapter=dspy.TwoStepAdapter(extraction_lm))


class Answer(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


two_step = dspy.Predict(Answer)
