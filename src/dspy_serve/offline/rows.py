"""Input rows, streamed from JSON lines, CSV or Parquet, whatever the file's size.

Each row is a JSON object of a program's inputs. Its key is the value of a named column, or the
row's number (from 0, as ``/batch`` numbers its items), so an output line always says which
input it answers.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FORMATS", "InputFileError", "Row", "count_rows", "input_format", "read_rows"]

FORMATS = ("jsonl", "csv", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_PARQUET_BATCH_ROWS = 1024


class InputFileError(ValueError):
    """The input file cannot be read as rows (the message names the file and the line)."""


@dataclass(frozen=True)
class Row:
    index: int  # the row's position in the file, from 0
    key: Any  # the --key column's value, else the index
    inputs: dict[str, Any] | None  # None when the line is not a JSON object
    problem: str | None = None  # why the row could not be read, when it could not
    previous: dict[str, Any] | None = None  # an earlier run's line that is kept as this row's answer


def input_format(path: Path) -> str:
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise InputFileError(
            f"{path}: unknown input format {path.suffix!r}; use .jsonl, .csv or .parquet"
        ) from None


def read_rows(path: Path, key: str | None = None) -> Iterator[Row]:
    """The file's rows in order. A row that cannot be read is still yielded (with ``problem``),
    so it gets an error line of its own and the rows after it keep their numbers."""
    match input_format(path):
        case "jsonl":
            records = _jsonl(path)
        case "csv":
            records = _csv(path)
        case _:
            records = _parquet(path)
    for index, (record, problem) in enumerate(records):
        if record is None:
            yield Row(index, index, None, problem)
            continue
        if key is None:
            yield Row(index, index, record)
        elif key not in record:
            yield Row(index, index, None, f"row {index} has no key column {key!r}")
        else:
            inputs = {name: value for name, value in record.items() if name != key}
            yield Row(index, record[key], inputs)


def count_rows(path: Path) -> int:
    """How many rows the file holds, read without keeping them (for progress and ETA)."""
    match input_format(path):
        case "parquet":
            return int(_parquet_file(path).metadata.num_rows)
        case "csv":
            return sum(1 for _ in _csv(path))
        case _:
            with path.open("rb") as lines:
                return sum(1 for line in lines if line.strip())


def _jsonl(path: Path) -> Iterator[tuple[dict[str, Any] | None, str | None]]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield None, f"{path.name} line {number}: not valid JSON ({exc.msg}, column {exc.colno})"
                continue
            if isinstance(record, dict):
                yield record, None
            else:
                yield None, f"{path.name} line {number}: a row must be a JSON object of inputs"


def _csv(path: Path) -> Iterator[tuple[dict[str, Any] | None, str | None]]:
    """CSV cells are text; the program's input schema converts them (``"3"`` to an int field)."""
    with path.open(encoding="utf-8", newline="") as lines:
        reader = csv.DictReader(lines)
        for record in reader:
            if None in record:  # more cells than the header has columns
                yield None, f"{path.name} line {reader.line_num}: more cells than the header has columns"
            else:
                yield dict(record), None


def _parquet_file(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputFileError(
            f"{path}: reading Parquet needs pyarrow: pip install 'dspy-serve[parquet]'"
        ) from None
    return pq.ParquetFile(path)


def _parquet(path: Path) -> Iterator[tuple[dict[str, Any] | None, str | None]]:
    for batch in _parquet_file(path).iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        for record in batch.to_pylist():
            yield record, None
