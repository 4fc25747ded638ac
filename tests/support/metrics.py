"""Reading Prometheus expositions in tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def requests_counted(text: str, endpoint: str) -> float:
    """``dspy_serve_requests_total`` of one endpoint, over every program and status."""
    return sum(
        value
        for (name, labels), value in samples(text).items()
        if name == "dspy_serve_requests_total" and ("endpoint", endpoint) in labels
    )
