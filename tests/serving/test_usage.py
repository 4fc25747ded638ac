"""Usage sums: per model for a batch, over models for OpenAI's shape and the call records."""

from __future__ import annotations

from dspy_serve.serving.usage import flat_usage, sum_usage, total_tokens

A = {"m1": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
B = {"m1": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}, "m2": {"prompt_tokens": 4}}


def test_a_batch_sums_per_model_and_per_count() -> None:
    assert sum_usage([A, B, {}]) == {
        "m1": {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17},
        "m2": {"prompt_tokens": 4},
    }


def test_a_provider_without_a_total_counts_prompt_and_completion() -> None:
    assert total_tokens(B) == 6
    assert flat_usage(B) == {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    assert flat_usage({}) == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
