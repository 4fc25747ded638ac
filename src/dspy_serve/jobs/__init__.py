"""Durable async jobs (#28): many items of one program, kept in the store, run in the
background by every worker process within a concurrency budget of their own, each item through
the one call path (``service.call(..., wire="job")``)."""

from dspy_serve.jobs.runner import JobRunner

__all__ = ["JobRunner"]
