"""Running the commands that write deployment files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent


def write_files(command: str, out: Path, *args: str) -> None:
    """Run ``dspy-serve COMMAND ... --out OUT`` from the project, with secrets in its environment
    that must never reach the files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPY_SERVE_")}
    env.update(OPENAI_API_KEY="sk-must-not-appear", DSPY_SERVE_API_KEYS="ops:key-must-not-appear")
    subprocess.run(
        [sys.executable, "-m", "dspy_serve", command, *args, "--out", str(out)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
