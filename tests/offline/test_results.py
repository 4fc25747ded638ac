"""The output file: whole lines only, and a resume that checks it answers the same input."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspy_serve.offline.results import ResultsFile, ResumeMismatch
from dspy_serve.offline.rows import read_rows


def test_a_torn_last_line_is_cut_and_not_counted(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"key":0}\n{"key":1}\n{"key":', encoding="utf-8")
    assert ResultsFile(path).done_rows() == 2
    assert path.read_text(encoding="utf-8") == '{"key":0}\n{"key":1}\n'


def test_no_file_means_nothing_done(tmp_path: Path) -> None:
    assert ResultsFile(tmp_path / "missing.jsonl").done_rows() == 0


def test_lines_are_appended_whole(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with ResultsFile(path) as results:
        results.write({"key": 0, "outputs": {"answer": "é"}})
        results.write({"key": 1, "outputs": {"answer": "b"}})
    assert path.read_text(encoding="utf-8").splitlines() == [
        '{"key":0,"outputs":{"answer":"é"}}',
        '{"key":1,"outputs":{"answer":"b"}}',
    ]


def test_results_of_another_input_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,question\na,1\nb,2\n", encoding="utf-8")
    path = tmp_path / "out.jsonl"
    path.write_text('{"key":"a"}\n{"key":"z"}\n', encoding="utf-8")
    results = ResultsFile(path)
    assert [row.key for row, _ in results.answered(read_rows(source, key="id"), 1)] == ["a"]
    with pytest.raises(ResumeMismatch, match=r"line 2 does not answer input row 1 \(key 'b'\)"):
        list(results.answered(read_rows(source, key="id"), 2))
