"""Short factual question answering.

Serve it with: dspy-serve run examples/qa.py:program --artifact examples/qa.json
"""

import dspy


class QA(dspy.Signature):
    """Answer the question with a short factual answer.
    Give just the name, place, number or date asked for, in a few words, not a full sentence."""

    question: str = dspy.InputField(desc="a factual question")
    answer: str = dspy.OutputField(desc="short factual answer, a few words")


program = dspy.Predict(QA)
