"""``save_program=True`` directories of a user's own class, saved as a user saves them: from their
project folder, in another process, so the test process has never imported their code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

RETRIEVAL = """
def search(question, k=2):
    return [f"passage {i} about {question}" for i in range(k)]
"""

PROGRAM = """
import dspy

from retrieval import search


class CompanyRAG(dspy.Module):
    def __init__(self):
        super().__init__()
        self.respond = dspy.ChainOfThought("context, question -> answer")

    def forward(self, question: str):
        context = search(question)
        answer = self.respond(context=context, question=question).answer
        return dspy.Prediction(context=context, answer=answer)
"""

SAVE = """
import sys
import dspy
import company_rag

program = company_rag.CompanyRAG()
program.respond.predict.demos = [dspy.Example(context=["c"], question="2+2?", reasoning="add", answer="4")]
by_value = sys.argv[2] == "by-value"
program.save(sys.argv[1], save_program=True, modules_to_serialize=[company_rag] if by_value else None)
"""


def save_user_program(root: Path, *, by_value: bool) -> tuple[str, Path]:
    """A project folder with ``company_rag.py`` (importing its sibling ``retrieval.py``), and its
    program saved with ``save_program=True``: by reference, or by value (``modules_to_serialize``).
    Returns the TARGET naming the class and the saved directory."""
    project = root / "project"
    project.mkdir(parents=True, exist_ok=True)
    (project / "retrieval.py").write_text(textwrap.dedent(RETRIEVAL), encoding="utf-8")
    (project / "company_rag.py").write_text(textwrap.dedent(PROGRAM), encoding="utf-8")
    saved = root / ("saved_by_value" if by_value else "saved_by_reference")
    mode = "by-value" if by_value else "by-reference"
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SAVE), str(saved), mode],
        cwd=project,
        check=True,
        capture_output=True,
        timeout=120,
        env=None,
    )
    return f"{project / 'company_rag.py'}:CompanyRAG", saved
