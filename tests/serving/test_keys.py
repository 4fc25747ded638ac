"""API key sources: a configured source that yields no key never turns authentication off."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspy_serve import ServeSettings
from dspy_serve.serving.keys import KeyConfigError, KeyRing, parse_key_line


@pytest.fixture(autouse=True)
def _no_keys_in_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DSPY_SERVE_API_KEYS", raising=False)
    monkeypatch.delenv("DSPY_SERVE_API_KEYS_FILE", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the repository


@pytest.mark.parametrize("text", ["", "\n\n", "# team keys\n", "  # indented:comment\n\t# tabbed\n"])
def test_a_key_file_without_keys_stops_startup(tmp_path: Path, text: str) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(text)
    with pytest.raises(KeyConfigError, match="holds no API key"):
        KeyRing.from_settings(ServeSettings(api_keys_file=keys))


@pytest.mark.parametrize("value", ["", ",", " , ", "[]"])
def test_a_key_list_that_parses_to_no_keys_stops_startup(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DSPY_SERVE_API_KEYS", value)
    with pytest.raises(KeyConfigError, match="DSPY_SERVE_API_KEYS holds no API key"):
        KeyRing.from_settings(ServeSettings())


def test_no_key_source_at_all_means_auth_off() -> None:
    assert KeyRing.from_settings(ServeSettings()) is None


def test_an_indented_comment_is_not_a_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("web:sk-live\n   #old:sk-retired\n\t#other:sk-gone\n")
    ring = KeyRing.from_settings(ServeSettings(api_keys_file=keys))
    assert ring is not None and len(ring) == 1
    assert ring.match("sk-live") is not None
    assert ring.match("sk-retired") is None and ring.match("sk-gone") is None


def test_a_missing_key_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError) as raised:
        KeyRing.from_settings(ServeSettings(api_keys_file=tmp_path / "nope.txt"))
    assert "nope.txt" in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("line", "sees_prompts"),
    [
        ("k:sk-1", True),
        ("k:sk-1 prompts=no", False),
        ("k:sk-1 programs=qa", False),
        ("k:sk-1 models=m prompts=yes", True),
        ("k:sk-1 programs=qa prompts=YES", True),
    ],
)
def test_only_an_unrestricted_key_sees_prompts_unless_its_line_says(line: str, sees_prompts: bool) -> None:
    assert parse_key_line(line, 1).may_see_prompts() is sees_prompts


def test_a_prompts_option_is_yes_or_no() -> None:
    with pytest.raises(ValueError, match="line 3: prompts= takes yes or no, not 'maybe'"):
        parse_key_line("k:sk-1 prompts=maybe", 3)
