"""The docs are a contract: every test they cite exists, and every setting is documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"\[`?(test_[a-z0-9_]+)::(test_[A-Za-z0-9_]+)")


def cited_tests() -> set[tuple[str, str]]:
    texts = [path.read_text(encoding="utf-8") for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]]
    return {match.groups() for text in texts for match in CITATION.finditer(text)}


def defined_tests() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        for name in re.findall(
            r"^(?:async )?def (test_[A-Za-z0-9_]+)\(", path.read_text(encoding="utf-8"), re.M
        ):
            found.add((path.stem, name))
    return found


def test_every_test_the_docs_cite_exists() -> None:
    cited = cited_tests()
    assert len(cited) > 30, "the citation pattern no longer matches how the docs cite tests"
    assert sorted(cited - defined_tests()) == []


def test_the_settings_reference_is_generated_from_the_settings() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "settings_doc.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr


def test_every_setting_is_in_the_reference() -> None:
    from dspy_serve.settings import ENV_PREFIX, ServeSettings

    reference = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    missing = [
        name for name in ServeSettings.model_fields if f"`{ENV_PREFIX}{name.upper()}`" not in reference
    ]
    assert missing == []
