"""Sentiment classification with a short rationale and a confidence score.

Serve it with: dspy-serve run examples/classify.py:program --artifact examples/classify.json
"""

from typing import Literal

import dspy


class ClassifySentiment(dspy.Signature):
    """Classify the sentiment of the text as positive, negative or neutral.
    Look at the words that express a feeling or an opinion; a plain statement of fact is neutral."""

    text: str = dspy.InputField(desc="the text to classify, e.g. a review or a message")
    sentiment: Literal["positive", "negative", "neutral"] = dspy.OutputField()
    confidence: float = dspy.OutputField(desc="how sure you are, from 0.0 to 1.0")


# ChainOfThought adds a `reasoning` output before the others.
program = dspy.ChainOfThought(ClassifySentiment)
