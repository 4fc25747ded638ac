"""Input rows from JSON lines, CSV and Parquet, with their keys; unreadable rows keep their place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dspy_serve.offline.rows import InputFileError, count_rows, read_rows


def test_json_lines_are_rows_numbered_from_zero(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"question": "a"}\n\n{"question": "b"}\n', encoding="utf-8")
    rows = list(read_rows(path))
    assert [(row.index, row.key, row.inputs) for row in rows] == [
        (0, 0, {"question": "a"}),
        (1, 1, {"question": "b"}),
    ]
    assert count_rows(path) == 2


def test_a_key_column_names_the_row_and_is_not_an_input(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,question\nt-1,a\nt-2,b\n", encoding="utf-8")
    rows = list(read_rows(path, key="id"))
    assert [(row.key, row.inputs) for row in rows] == [("t-1", {"question": "a"}), ("t-2", {"question": "b"})]
    assert count_rows(path) == 2


def test_an_unreadable_line_is_a_row_with_its_problem_and_the_rest_keep_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"question": "a"}\n{"question": \n[1, 2]\n{"question": "d"}\n', encoding="utf-8")
    rows = list(read_rows(path))
    assert [row.index for row in rows] == [0, 1, 2, 3]
    assert rows[1].inputs is None and "line 2: not valid JSON" in (rows[1].problem or "")
    assert rows[2].inputs is None and "must be a JSON object" in (rows[2].problem or "")
    assert rows[3].inputs == {"question": "d"}


def test_a_row_without_its_key_column_says_so(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": 1, "question": "a"}\n{"question": "b"}\n', encoding="utf-8")
    rows = list(read_rows(path, key="id"))
    assert rows[0].key == 1
    assert rows[1].inputs is None and "no key column 'id'" in (rows[1].problem or "")


def test_parquet_rows_are_read_in_batches(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"question": [f"q{i}" for i in range(2500)], "n": list(range(2500))}), path)
    rows = read_rows(path, key="n")
    first = next(rows)
    assert (first.key, first.inputs) == (0, {"question": "q0"})
    assert sum(1 for _ in rows) == 2499
    assert count_rows(path) == 2500


def test_an_unknown_format_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "in.xlsx"
    path.write_text(json.dumps({}), encoding="utf-8")
    with pytest.raises(InputFileError, match=r"unknown input format '\.xlsx'"):
        count_rows(path)
