"""A program file that configures ``dspy.JSONAdapter`` itself as it is imported (not through
``--adapter``). Configuring DSPy is process-wide: a test serving it restores DSPy's settings."""

from __future__ import annotations

import dspy

dspy.configure(adapter=dspy.JSONAdapter())


class Describe(dspy.Signature):
    """Describe the place, then say whether it is a capital."""

    place: str = dspy.InputField()
    description: str = dspy.OutputField()
    capital: bool = dspy.OutputField()
    motto: str = dspy.OutputField()


json_configured = dspy.Predict(Describe)
