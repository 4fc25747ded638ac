"""One format for every way importing a program can fail.

``file.py:3: SyntaxError: invalid syntax`` and the line with a caret, as a compiler would say
it: the operator sees where their program broke, not forty lines of importlib's frames.
"""

from __future__ import annotations

import linecache
import os
import sysconfig
import traceback
from pathlib import Path

__all__ = ["import_failure"]


def import_failure(exc: BaseException) -> str:
    """``path:line: Type: message`` and the code frame, for an exception raised by an import."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        where, line, column = exc.filename, exc.lineno, exc.offset
        message = exc.msg
    else:
        frame = _program_frame(exc)
        if frame is None:
            return f"{type(exc).__name__}: {exc}"
        where, line, column = frame.filename, frame.lineno or 0, None
        message = str(exc)
    head = f"{_shown(where)}:{line}: {type(exc).__name__}: {message}"
    return head + _code_frame(where, line, column)


def _program_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame in the user's code: not importlib's, not an installed package's."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    installed = {str(Path(sysconfig.get_paths()[key]).resolve()) for key in ("stdlib", "purelib", "platlib")}
    own = [f for f in frames if not any(f.filename.startswith(prefix) for prefix in installed)]
    candidates = own or frames
    return candidates[-1] if candidates else None


def _shown(filename: str) -> str:
    try:
        return os.path.relpath(filename)
    except ValueError:  # another drive (Windows)
        return filename


def _code_frame(filename: str, line: int, column: int | None) -> str:
    text = linecache.getline(filename, line).rstrip("\n")
    if not text.strip():
        return ""
    gutter = f"{line:>5} | "
    frame = f"\n{gutter}{text}"
    if column is not None and column > 0:
        frame += "\n" + " " * (len(gutter) - 2) + "| " + " " * (column - 1) + "^"
    return frame
