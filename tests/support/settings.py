"""Where the test programs live, and settings that serve them on the fake LM."""

from __future__ import annotations

from pathlib import Path

from dspy_serve import ServeSettings
from tests.support.fake_lm import FakeLM

PROGRAMS = Path(__file__).parent / "programs"


EXAMPLES = Path(__file__).parent.parent.parent / "examples"


FAKE_KEY = "sk-test-FAKE-KEY-must-never-leak"


def fake_settings(fake: FakeLM, **overrides: object) -> ServeSettings:
    """Settings that serve on the fake LM through the real dspy.LM HTTP path."""
    values: dict[str, object] = {
        "model": "openai/fake-model",
        "api_base": fake.base_url,
        "timeout": 10.0,
        "lm_retries": 0,
    }
    values.update(overrides)
    return ServeSettings(**values)  # type: ignore[arg-type]
