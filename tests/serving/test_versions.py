"""Versions as configured: NAME[@VERSION]=PATH specs, the configured rollout, the TOML config,
and a version whose interface differs from the program's."""

from __future__ import annotations

from pathlib import Path

import dspy
import pytest

from dspy_serve.serving.programs import load_programs
from dspy_serve.serving.versions import load_version, parse_version_spec
from dspy_serve.settings import ServeSettings, load_settings
from tests.support.versions import QA, write_artifact


@pytest.mark.parametrize(
    ("spec", "program", "name", "path"),
    [
        ("qa=runs/v2.json", "qa", "v2", "runs/v2.json"),
        ("qa@fast=runs/v2.json", "qa", "fast", "runs/v2.json"),
        ("runs/v2.json", "qa", "v2", "runs/v2.json"),
        ("qa=saved/program-2/", "qa", "program-2", "saved/program-2/"),
    ],
)
def test_a_version_spec_names_its_program_version_and_file(
    spec: str, program: str, name: str, path: str
) -> None:
    parsed = parse_version_spec(spec, ["qa"], flag="--candidate")
    assert (parsed.program, parsed.name, parsed.artifact) == (program, name, path)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("rag=v2.json", "no program named 'rag'"),
        ("qa@=v2.json", "version name ''"),
        ("qa@a/b=v2.json", "version name 'a/b'"),
        ("qa=", "path is missing"),
    ],
)
def test_a_bad_version_spec_says_what_is_wrong(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_version_spec(spec, ["qa", "triage"], flag="--candidate")


def test_the_toml_config_gives_a_program_its_versions_split_and_shadow(tmp_path: Path) -> None:
    v1, v2 = write_artifact(tmp_path / "v1.json", "V1"), write_artifact(tmp_path / "v2.json", "V2")
    config = tmp_path / "serve.toml"
    config.write_text(
        f'programs = ["{QA}"]\nartifacts = ["qa@prod={v1}"]\ncandidates = ["qa={v2}"]\n'
        'splits = ["qa=10"]\nsticky = ["qa=input:question"]\nshadows = ["qa=0.5"]\n',
        encoding="utf-8",
    )
    _, programs = load_programs(load_settings(config))
    qa = programs["qa"]
    assert list(qa.versions) == ["prod", "v2"]
    rollout = qa.rollout
    assert (rollout.stable, rollout.candidate) == ("prod", "v2")
    assert rollout.split is not None and (rollout.split.weight, rollout.split.sticky) == (
        10,
        "input:question",
    )
    assert rollout.shadow is not None and rollout.shadow.rate == 0.5
    assert qa.versions["v2"].sha256 != qa.versions["prod"].sha256


def test_a_split_without_a_candidate_is_refused_at_start(tmp_path: Path) -> None:
    v1 = write_artifact(tmp_path / "v1.json", "V1")
    with pytest.raises(ValueError, match="no candidate version; add one with --candidate qa=PATH"):
        load_programs(ServeSettings(programs=[QA], artifacts=[f"qa={v1}"], splits=["qa=10"]))
    with pytest.raises(ValueError, match="must be from 0 to 100"):
        load_programs(
            ServeSettings(
                programs=[QA], artifacts=[f"qa={v1}"], candidates=[f"qa@v2={v1}"], splits=["qa=200"]
            )
        )


def test_a_version_with_other_outputs_is_refused(tmp_path: Path) -> None:
    class Other(dspy.Signature):
        """Answer."""

        question: str = dspy.InputField()
        answer: str = dspy.OutputField()
        confidence: float = dspy.OutputField()

    artifact = tmp_path / "other.json"
    dspy.Predict(Other).save(str(artifact))
    _, programs = load_programs(ServeSettings(programs=[QA]))
    qa = programs["qa"]
    with pytest.raises(ValueError, match="other outputs than the program serves"):
        load_version(
            "other",
            "qa",
            dspy.Predict(Other),
            artifact,
            qa.interface,
            allow_pickle=False,
            max_input_chars=ServeSettings().max_input_chars,
        )


def test_a_reworded_description_is_the_same_interface_but_a_field_named_title_still_counts() -> None:
    from dspy_serve.serving.versions import _fields

    def schema(description: str, field: str) -> dict[str, object]:
        return {"properties": {field: {"type": "string", "description": description, "title": field.title()}}}

    assert _fields(schema("a question", "question")) == _fields(schema("the user's question", "question"))
    assert _fields(schema("x", "title")) != _fields(schema("x", "description"))
