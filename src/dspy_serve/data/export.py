"""``dspy-serve data export``: a dataset written once as JSON lines or Parquet, with a manifest
beside it naming the query, the row count and the file's sha256 (an immutable snapshot)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

from dspy_serve.data.dataset import DataQuery, dataset_rows
from dspy_serve.store import Store

__all__ = ["Snapshot", "export_dataset", "manifest_path"]

PARQUET_ROWS = 1000  # rows per Parquet row group: the most held in memory at once


class Snapshot(dict[str, Any]):
    """The manifest of one export: path, format, rows, sha256, query, when."""


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".manifest.json")


async def export_dataset(store: Store, query: DataQuery, out: Path, fmt: str = "jsonl") -> Snapshot:
    """Write the rows of ``query`` to ``out`` and its manifest; the file is made read-only."""
    if fmt not in ("jsonl", "parquet"):
        raise ValueError(f"format {fmt!r}: use jsonl or parquet")
    partial = out.with_name(out.name + ".partial")
    rows = dataset_rows(store, query)
    with _open_partial(partial) as handle:
        count = await (_write_jsonl(rows, handle) if fmt == "jsonl" else _write_parquet(rows, handle))
    digest = _publish(partial, out)
    snapshot = Snapshot(
        path=str(out),
        format=fmt,
        rows=count,
        sha256=digest,
        query=query.describe(),
        exported_at=time.time(),
    )
    manifest_path(out).write_text(json.dumps(snapshot, indent=2) + "\n", encoding="utf-8")
    return snapshot


def _open_partial(partial: Path) -> BinaryIO:
    partial.parent.mkdir(parents=True, exist_ok=True)
    return partial.open("wb")


def _publish(partial: Path, out: Path) -> str:
    """Move the finished file into place, read-only (a snapshot is never rewritten in place); its sha256."""
    digest = _sha256(partial)
    if out.exists():
        out.chmod(0o644)
    os.replace(partial, out)
    out.chmod(0o444)
    return digest


def _line(row: dict[str, Any]) -> bytes:
    return (json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


async def _write_jsonl(rows: AsyncIterator[dict[str, Any]], handle: BinaryIO) -> int:
    count = 0
    async for row in rows:
        handle.write(_line(row))
        count += 1
    return count


async def _write_parquet(rows: AsyncIterator[dict[str, Any]], handle: BinaryIO) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            "--format parquet needs pyarrow: pip install 'dspy-serve[parquet]' (or use --format jsonl)"
        ) from None
    nested = ("inputs", "outputs", "correction", "trace")
    schema = pa.schema(
        [
            ("call_id", pa.string()),
            ("created_at", pa.float64()),
            ("version", pa.string()),
            ("key_name", pa.string()),
            *((name, pa.string()) for name in nested),  # JSON text: one schema for every program
            ("score", pa.float64()),
            ("comment", pa.string()),
        ]
    )
    count, batch = 0, []
    with pq.ParquetWriter(handle, schema) as writer:
        async for row in rows:
            batch.append({**row, **{name: _json_or_none(row[name]) for name in nested}})
            if len(batch) == PARQUET_ROWS:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count, batch = count + len(batch), []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
    return count


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
