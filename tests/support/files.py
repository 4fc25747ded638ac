"""Running the commands that write deployment files, in a project of one's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent
# Secrets in the command's environment that must never reach the files.
SECRETS = {"OPENAI_API_KEY": "sk-must-not-appear", "DSPY_SERVE_API_KEYS": "ops:key-must-not-appear"}


def make_project(root: Path, *examples: str) -> Path:
    """A project directory holding copies of ``examples/`` files (a user's programs, elsewhere)."""
    (root / "examples").mkdir(parents=True, exist_ok=True)
    for name in examples or ("qa.py", "qa.json"):
        shutil.copy(ROOT / "examples" / name, root / "examples" / name)
    return root


def deploy_command(
    command: str, project: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``dspy-serve COMMAND ARGS`` run from ``project``, with secrets in its environment."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DSPY_SERVE_")}
    full_env.update(SECRETS, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "dspy_serve", command, *args],
        cwd=project,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_files(command: str, out: Path, *args: str, project: Path = ROOT) -> str:
    """Run ``dspy-serve COMMAND ... --out OUT`` from ``project``; its stderr."""
    result = deploy_command(command, project, *args, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return result.stderr
