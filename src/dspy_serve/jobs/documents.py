"""What a job looks like from outside: its status document (``GET /jobs/ID``, the webhook's
body) and one result line (``GET /jobs/ID/results``)."""

from __future__ import annotations

from typing import Any

__all__ = ["result_line", "status_of"]


def status_of(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": job["id"],
        "program": job["program"],
        "state": job["state"],
        "total": job["total"],
        "done": job["done"],
        "failed": job["failed"],
        "created_at": job["created_at"],
        "started_at": job["started_at"],
        "finished_at": job["finished_at"],
        "expires_at": job["expires_at"],
        "tokens": job["tokens"],
        "cost_usd": job["cost_usd"],
    }


def result_line(row: dict[str, Any]) -> dict[str, Any]:
    """``index``, ``call_id``, then ``outputs`` or ``error`` (problem+json), ``usage``, ``cost``."""
    return {"index": row["position"], "call_id": row["call_id"], **(row["result"] or {})}
