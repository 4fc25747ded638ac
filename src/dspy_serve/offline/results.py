"""The output file: one JSON line per input row, in input order, never torn.

Lines are written in input order, each with one ``write`` to a file opened for appending, so a
kill or a crash leaves whole lines plus at most one partial last line. Reopening the file cuts
that partial line, checks that the lines it keeps answer the input's first rows (their keys
match), and says how many rows are done: a rerun of the same command skips exactly those,
without calling the LM for them, and without keeping a set of keys in memory.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from dspy_serve.offline.rows import Row

__all__ = ["ResultsFile", "ResumeMismatch"]

_FSYNC_EVERY_S = 1.0


class ResumeMismatch(ValueError):
    """The output file already holds results for another input (its keys do not match)."""


class ResultsFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._synced_at = 0.0

    def done_rows(self) -> int:
        """How many whole lines the file holds, after cutting a torn last line."""
        if not self.path.exists():
            return 0
        with self.path.open("rb+") as file:
            size = file.seek(0, os.SEEK_END)
            end = size
            while end > 0:  # find the last newline, reading backwards in blocks
                start = max(0, end - 65536)
                file.seek(start)
                block = file.read(end - start)
                cut = block.rfind(b"\n")
                if cut >= 0:
                    end = start + cut + 1
                    break
                end = start
            if end != size:
                file.truncate(end)
        with self.path.open("rb") as file:
            return sum(1 for _ in file)

    def answered(self, rows: Iterator[Row], done: int) -> Iterator[tuple[Row, dict[str, Any]]]:
        """The input's first ``done`` rows, each with the line that answers it, key for key."""
        if done == 0:
            return
        with self.path.open(encoding="utf-8") as lines:
            for number, (line, row) in enumerate(zip(lines, rows, strict=False), start=1):
                try:
                    answer = json.loads(line)
                except json.JSONDecodeError:
                    answer = None
                key = answer.get("key", object()) if isinstance(answer, dict) else object()
                if key != row.key or not isinstance(answer, dict):
                    raise ResumeMismatch(
                        f"{self.path} line {number} does not answer input row {row.index} (key "
                        f"{row.key!r}): it holds results of another input. Pass another --output, or "
                        "delete it to start over."
                    )
                yield row, answer
                if number == done:
                    return

    def __enter__(self) -> ResultsFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self

    def write(self, result: dict[str, Any]) -> None:
        line = json.dumps(result, ensure_ascii=False, separators=(",", ":")) + "\n"
        data = memoryview(line.encode("utf-8"))
        while data:  # a regular file takes it whole; a signal may split it, a rerun cuts the rest
            data = data[os.write(self._fd, data) :]
        now = time.monotonic()
        if now - self._synced_at > _FSYNC_EVERY_S:  # bounded loss on a power cut, none on a kill
            os.fsync(self._fd)
            self._synced_at = now

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
