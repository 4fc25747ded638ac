"""The provenance file beside an optimized artifact: what data, which optimizer, what scores,
and the call each demo came from (so deleting a user's data can name the artifacts it reached)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["artifacts_using", "provenance_path", "write_provenance"]

_SKIP = {".venv", "venv", "site-packages", "node_modules", ".git"}


def provenance_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.stem + ".provenance.json")


def write_provenance(artifact: Path, record: dict[str, Any]) -> Path:
    path = provenance_path(artifact)
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def artifacts_using(call_ids: set[str], root: Path) -> Iterator[tuple[Path, set[str]]]:
    """Each artifact under ``root`` whose demos came from some of ``call_ids``, with those ids."""
    if not call_ids:
        return
    for path in sorted(root.rglob("*.provenance.json")):
        if _SKIP.intersection(path.parts):
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        used = {demo.get("call_id") for demo in record.get("demos", [])} & call_ids
        if used:
            yield Path(record.get("artifact", path)), {str(call_id) for call_id in used}
