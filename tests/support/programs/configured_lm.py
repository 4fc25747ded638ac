"""A program file as DSPy's tutorials write one: it configures its LM as it is imported.

Only ever served through the real command in a subprocess (tests/test_cli.py): configuring DSPy
is process-wide, and the fake LM's address comes from the environment.
"""

from __future__ import annotations

import os

import dspy

dspy.configure(
    lm=dspy.LM("openai/fake-model", api_base=os.environ["FAKE_LM_BASE_URL"], temperature=0.3, max_tokens=77)
)

qa = dspy.Predict("question -> answer")
