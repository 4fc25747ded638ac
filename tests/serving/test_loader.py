"""``loader``: TARGET strings become DSPy modules, and artifacts are loaded strictly."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest

from dspy_serve.serving.loader import ArtifactError, TargetError, load_program, parse_target
from tests.support.programs import sample_programs as sp
from tests.support.saved_programs import save_user_program
from tests.support.settings import PROGRAMS

SAMPLES = PROGRAMS / "sample_programs.py"
SAMPLES_MODULE = "tests.support.programs.sample_programs"


def sample(name: str) -> str:
    return f"{SAMPLES}:{name}"


@pytest.fixture(autouse=True)
def isolated_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """File targets are imported into sys.modules (and their folder onto sys.path): undo it, so a
    module-level program instance never carries state from one test into the next."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        module_file = str(getattr(sys.modules[name], "__file__", "") or "")
        if name.startswith("dspy_serve_program_") or module_file.startswith(str(tmp_path)):
            del sys.modules[name]


def demo(question: str, answer: str) -> dspy.Example:
    return dspy.Example(question=question, answer=answer).with_inputs("question")


def saved_qa(path: Path, *demos: dspy.Example) -> Path:
    """State of a ``dspy.Predict(QA)`` with ``demos``, saved the usual way."""
    program = dspy.Predict(sp.QA)
    program.demos = list(demos)
    program.save(str(path))
    return path


def saved_rag(path: Path) -> Path:
    program = sp.RAG()
    program.respond.predict.demos = [dspy.Example(context=["c"], question="q", answer="a", confidence=0.9)]
    program.save(str(path))
    return path


def demo_questions(predictor: dspy.Predict) -> list[str]:
    return [dict(d)["question"] for d in predictor.demos]


# --- parse_target ---------------------------------------------------------------------------------


def test_parse_target_names_a_file_target_after_its_object() -> None:
    assert parse_target("examples/qa.py:program") == ("program", "examples/qa.py:program")


def test_parse_target_names_a_module_target_after_its_object() -> None:
    assert parse_target("my_pkg.programs:rag") == ("rag", "my_pkg.programs:rag")


def test_parse_target_alias_names_the_program() -> None:
    assert parse_target("qa-v2=examples/qa.py:program") == ("qa-v2", "examples/qa.py:program")


@pytest.mark.parametrize(
    "spec",
    [
        "examples/qa.py",  # no :NAME
        "my_pkg.programs:",  # empty NAME
        "",
        "my qa=examples/qa.py:program",  # alias is not a name
        "qa=",  # alias without a target
    ],
)
def test_parse_target_rejects_a_bad_spec(spec: str) -> None:
    with pytest.raises(TargetError):
        parse_target(spec)


# --- load_program: what NAME may be ---------------------------------------------------------------


def test_file_target_naming_a_module_instance_serves_it() -> None:
    loaded = load_program("qa", sample("qa"))

    assert isinstance(loaded.module, dspy.Predict)
    assert loaded.module.signature.equals(sp.QA)
    assert loaded.target == sample("qa")
    assert loaded.optimized is False
    assert loaded.artifact is None


def test_file_target_naming_a_module_class_serves_an_instance_of_it() -> None:
    loaded = load_program("rag", sample("RAG"))

    assert type(loaded.module).__name__ == "RAG"
    assert isinstance(loaded.module, dspy.Module)


def test_file_target_naming_a_factory_serves_what_it_returns() -> None:
    loaded = load_program("qa", sample("make_qa"))

    assert isinstance(loaded.module, dspy.Predict)
    assert loaded.module.signature.equals(sp.QA)


def test_file_target_naming_a_signature_class_serves_predict_of_it() -> None:
    loaded = load_program("qa", sample("QA"))

    assert type(loaded.module) is dspy.Predict
    assert loaded.module.signature.equals(sp.QA)


def test_file_target_naming_a_signature_string_serves_predict_of_it() -> None:
    loaded = load_program("qa", sample("string_signature"))

    assert type(loaded.module) is dspy.Predict
    assert list(loaded.module.signature.input_fields) == ["question"]
    assert loaded.module.signature.output_fields["answer"].annotation is int


def test_module_path_target_is_imported() -> None:
    loaded = load_program("qa", f"{SAMPLES_MODULE}:make_qa")

    assert loaded.module.signature.equals(sp.QA)


def test_module_instance_is_accepted_as_is() -> None:
    program = dspy.Predict(sp.QA)

    loaded = load_program("qa", program)

    assert loaded.module is program
    assert loaded.target == "<Predict instance>"


def test_factory_returning_a_non_module_is_a_target_error() -> None:
    with pytest.raises(TargetError, match=r"returned str, not a dspy\.Module"):
        load_program("x", sample("make_nothing"))


def test_factory_needing_arguments_is_a_target_error() -> None:
    with pytest.raises(TargetError, match="cannot be built without arguments"):
        load_program("x", sample("needs_argument"))


def test_object_that_is_not_a_program_is_a_target_error() -> None:
    with pytest.raises(TargetError, match=r"int is not a dspy\.Module"):
        load_program("x", sample("not_a_program"))


def test_missing_file_is_a_target_error(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="program file not found"):
        load_program("x", f"{tmp_path / 'nope.py'}:program")


def test_missing_module_is_a_target_error() -> None:
    with pytest.raises(TargetError, match="cannot import"):
        load_program("x", "tests.support.programs.no_such_module:program")


def test_missing_attribute_is_a_target_error() -> None:
    with pytest.raises(TargetError, match="has no 'nope'"):
        load_program("x", sample("nope"))


def test_program_file_can_import_its_sibling_modules(tmp_path: Path) -> None:
    (tmp_path / "helpers_for_loader_test.py").write_text("SIGNATURE = 'question -> answer'\n")
    (tmp_path / "app.py").write_text("from helpers_for_loader_test import SIGNATURE\nprogram = SIGNATURE\n")

    loaded = load_program("qa", f"{tmp_path / 'app.py'}:program")

    assert list(loaded.module.signature.output_fields) == ["answer"]


# --- artifacts: .json ------------------------------------------------------------------------------


def test_json_artifact_puts_its_demos_on_the_loaded_program(tmp_path: Path) -> None:
    artifact = saved_qa(tmp_path / "qa.json", demo("2+2?", "4"), demo("Capital of France?", "Paris"))

    loaded = load_program("qa", sample("make_qa"), artifact=artifact)

    assert demo_questions(loaded.module) == ["2+2?", "Capital of France?"]
    assert loaded.optimized is True


def test_json_artifact_is_identified_by_the_sha256_of_its_file(tmp_path: Path) -> None:
    artifact = saved_qa(tmp_path / "qa.json", demo("2+2?", "4"))

    loaded = load_program("qa", sample("make_qa"), artifact=artifact)

    assert loaded.artifact is not None
    assert loaded.artifact.path == str(artifact)
    assert loaded.artifact.sha256 == hashlib.sha256(artifact.read_bytes()).hexdigest()


def test_json_artifact_of_a_nested_program_loads_into_its_predictor(tmp_path: Path) -> None:
    artifact = saved_rag(tmp_path / "rag.json")

    loaded = load_program("rag", sample("RAG"), artifact=artifact)

    assert demo_questions(loaded.module.respond.predict) == ["q"]


def test_missing_artifact_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        load_program("qa", sample("make_qa"), artifact=tmp_path / "missing.json")


def test_missing_optional_artifact_serves_the_unoptimized_program(tmp_path: Path) -> None:
    loaded = load_program("qa", sample("make_qa"), artifact=tmp_path / "missing.json", artifact_optional=True)

    assert loaded.optimized is False
    assert loaded.module.demos == []


def test_artifact_from_a_program_with_other_predictors_names_them(tmp_path: Path) -> None:
    artifact = tmp_path / "step.json"
    sp.ReturnsStep().save(str(artifact))

    with pytest.raises(ArtifactError) as raised:
        load_program("rag", sample("RAG"), artifact=artifact)

    message = str(raised.value)
    assert "missing predictors ['respond.predict']" in message
    assert "unexpected predictors ['step.predict']" in message


def test_artifact_of_a_nested_program_does_not_fit_a_bare_predict(tmp_path: Path) -> None:
    artifact = saved_rag(tmp_path / "rag.json")

    with pytest.raises(ArtifactError, match="does not fit program 'qa'"):
        load_program("qa", sample("make_qa"), artifact=artifact)


def test_artifact_of_a_bare_predict_does_not_fit_a_nested_program(tmp_path: Path) -> None:
    artifact = saved_qa(tmp_path / "qa.json", demo("2+2?", "4"))

    with pytest.raises(ArtifactError, match=r"missing predictors \['respond.predict'\]"):
        load_program("rag", sample("RAG"), artifact=artifact)


def test_artifact_saved_with_other_fields_is_an_error(tmp_path: Path) -> None:
    artifact = tmp_path / "qa.json"
    dspy.Predict("question, context -> answer").save(str(artifact))

    with pytest.raises(ArtifactError, match="saved with 3 fields, the program has 2"):
        load_program("qa", sample("make_qa"), artifact=artifact)


def test_artifact_that_is_not_json_is_an_error(tmp_path: Path) -> None:
    artifact = tmp_path / "qa.json"
    artifact.write_text("{not json", encoding="utf-8")

    with pytest.raises(ArtifactError, match="not readable JSON"):
        load_program("qa", sample("make_qa"), artifact=artifact)


def test_artifact_with_an_unknown_suffix_is_an_error(tmp_path: Path) -> None:
    artifact = tmp_path / "qa.yaml"
    artifact.write_text("demos: []\n", encoding="utf-8")

    with pytest.raises(ArtifactError, match=r"must be a \.json or \.pkl"):
        load_program("qa", sample("make_qa"), artifact=artifact)


def test_one_target_served_twice_keeps_each_artifact(tmp_path: Path) -> None:
    first = load_program("v1", sample("qa"), artifact=saved_qa(tmp_path / "v1.json", demo("one?", "1")))
    second = load_program("v2", sample("qa"), artifact=saved_qa(tmp_path / "v2.json", demo("two?", "2")))

    assert demo_questions(second.module) == ["two?"]
    assert demo_questions(first.module) == ["one?"]


# --- artifacts: pickle ------------------------------------------------------------------------------


def test_pkl_artifact_needs_allow_pickle(tmp_path: Path) -> None:
    artifact = saved_qa(tmp_path / "qa.pkl", demo("2+2?", "4"))

    with pytest.raises(ArtifactError, match="allow-pickle"):
        load_program("qa", sample("make_qa"), artifact=artifact)


def test_pkl_artifact_loads_with_allow_pickle(tmp_path: Path) -> None:
    artifact = saved_qa(tmp_path / "qa.pkl", demo("2+2?", "4"))

    loaded = load_program("qa", sample("make_qa"), artifact=artifact, allow_pickle=True)

    assert demo_questions(loaded.module) == ["2+2?"]
    assert loaded.optimized is True
    assert loaded.artifact is not None
    assert loaded.artifact.sha256 == hashlib.sha256(artifact.read_bytes()).hexdigest()


def saved_whole_program(path: Path) -> Path:
    program = dspy.ChainOfThought("question -> answer")
    program.predict.demos = [dspy.Example(question="2+2?", reasoning="add", answer="4")]
    program.save(str(path), save_program=True)
    return path


def test_save_program_directory_needs_allow_pickle(tmp_path: Path) -> None:
    directory = saved_whole_program(tmp_path / "program")

    with pytest.raises(ArtifactError, match="allow-pickle"):
        load_program("qa", sample("qa"), artifact=directory)


def test_save_program_directory_loads_the_whole_program(tmp_path: Path) -> None:
    directory = saved_whole_program(tmp_path / "program")

    loaded = load_program("qa", sample("qa"), artifact=directory, allow_pickle=True)

    assert isinstance(loaded.module, dspy.ChainOfThought)
    assert demo_questions(loaded.module.predict) == ["2+2?"]
    assert loaded.optimized is True
    assert loaded.artifact is not None
    assert loaded.artifact.path == str(directory)


def test_save_program_directory_hash_changes_with_its_content(tmp_path: Path) -> None:
    directory = saved_whole_program(tmp_path / "program")
    before = load_program("qa", sample("qa"), artifact=directory, allow_pickle=True).artifact

    (directory / "notes.txt").write_text("tuned on 2024-05-01", encoding="utf-8")
    after = load_program("qa", sample("qa"), artifact=directory, allow_pickle=True).artifact

    assert before is not None
    assert after is not None
    assert before.sha256 != after.sha256


def test_directory_without_a_saved_program_is_an_artifact_error(tmp_path: Path) -> None:
    (tmp_path / "not_a_program").mkdir()

    with pytest.raises(ArtifactError):
        load_program("qa", sample("qa"), artifact=tmp_path / "not_a_program", allow_pickle=True)


def test_directory_with_a_truncated_program_pickle_is_an_artifact_error(tmp_path: Path) -> None:
    directory = saved_whole_program(tmp_path / "program")
    (directory / "program.pkl").write_bytes((directory / "program.pkl").read_bytes()[:20])

    with pytest.raises(ArtifactError):
        load_program("qa", sample("qa"), artifact=directory, allow_pickle=True)


def test_directory_with_foreign_metadata_is_an_artifact_error(tmp_path: Path) -> None:
    directory = saved_whole_program(tmp_path / "program")
    (directory / "metadata.json").write_text("{}", encoding="utf-8")

    with pytest.raises(ArtifactError):
        load_program("qa", sample("qa"), artifact=directory, allow_pickle=True)


def test_save_program_directory_needs_allow_pickle_with_an_instance_target(tmp_path: Path) -> None:
    directory = saved_whole_program(tmp_path / "program")

    with pytest.raises(ArtifactError, match="allow-pickle"):
        load_program("qa", dspy.ChainOfThought("question -> answer"), artifact=directory)


def test_save_program_directory_loads_with_an_instance_target(tmp_path: Path) -> None:
    directory = saved_whole_program(tmp_path / "program")

    loaded = load_program(
        "qa", dspy.ChainOfThought("question -> answer"), artifact=directory, allow_pickle=True
    )

    assert demo_questions(loaded.module.predict) == ["2+2?"]


# --- save_program directories of the user's own classes (saved in another process) ----------------


@pytest.mark.parametrize("by_value", [False, True], ids=["by-reference", "by-value"])
def test_save_program_directory_of_a_user_class_loads_from_the_targets_folder(
    tmp_path: Path, by_value: bool
) -> None:
    target, directory = save_user_program(tmp_path, by_value=by_value)

    loaded = load_program("rag", target, artifact=directory, allow_pickle=True)

    assert type(loaded.module).__name__ == "CompanyRAG"
    assert demo_questions(loaded.module.respond.predict) == ["2+2?"]
    assert loaded.module.forward.__globals__["search"]("q") == ["passage 0 about q", "passage 1 about q"]


@pytest.mark.parametrize("by_value", [False, True], ids=["by-reference", "by-value"])
def test_save_program_directory_whose_code_is_gone_names_the_missing_module(
    tmp_path: Path, by_value: bool
) -> None:
    _, directory = save_user_program(tmp_path, by_value=by_value)
    missing = "company_rag" if not by_value else "retrieval"  # by value, only its imports are needed
    (tmp_path / "project" / f"{missing}.py").rename(tmp_path / f"{missing}.py.moved")
    elsewhere = tmp_path / "elsewhere.py"
    elsewhere.write_text("import dspy\nprogram = dspy.Predict('question -> answer')\n", encoding="utf-8")

    with pytest.raises(ArtifactError) as caught:
        load_program("rag", f"{elsewhere}:program", artifact=directory, allow_pickle=True)

    message = str(caught.value)
    assert f"needs the module {missing!r}" in message
    assert str(tmp_path) in message  # where it looked
    assert "save_program" in message


# --- artifacts are data: they never choose where or how LM calls go ---------------------------------


def saved_with(path: Path, predictor_state: dict[str, object], *, nested: bool = False) -> Path:
    """A saved artifact whose predictor state carries extra keys, as a hostile author would write it."""
    import json

    program: dspy.Module = sp.RAG() if nested else dspy.Predict(sp.QA)
    program.save(str(path))
    state = json.loads(path.read_text())
    (state["respond.predict"] if nested else state).update(predictor_state)
    path.write_text(json.dumps(state))
    return path


@pytest.mark.parametrize(
    "predictor_state",
    [
        {"config": {"api_base": "http://attacker.example/v1"}},
        {"config": {"base_url": "http://attacker.example/v1"}},
        {"config": {"extra_headers": {"X-Steal": "1"}}},
        {"config": {"api_key": "sk-attacker"}},
        {"config": {"model": "openai/gpt-4o"}},
        {"lm": {"model": "openai/fake-model", "extra_headers": {"X-Steal": "1"}}},
        {"lm": {"model": "openai/fake-model", "api_key": "sk-attacker"}},
        {"callbacks": []},
    ],
    ids=lambda state: "/".join([next(iter(state)), *list(state[next(iter(state))] or {})[-1:]]),
)
@pytest.mark.parametrize("nested", [False, True], ids=["predict", "nested"])
def test_artifact_choosing_an_endpoint_credential_header_or_model_is_refused(
    tmp_path: Path, predictor_state: dict[str, dict[str, object]], nested: bool
) -> None:
    artifact = saved_with(tmp_path / "evil.json", predictor_state, nested=nested)
    ((where, keys),) = predictor_state.items()
    key = list(keys)[-1] if keys else where  # the offending key comes last

    with pytest.raises(ArtifactError) as raised:
        load_program("p", sample("RAG" if nested else "make_qa"), artifact=artifact)

    message = str(raised.value)
    assert str(artifact) in message and repr(key) in message
    assert "sampling parameters" in message


def test_artifact_sampling_parameters_load(tmp_path: Path) -> None:
    artifact = saved_with(
        tmp_path / "tuned.json",
        {
            "config": {"temperature": 0.2, "max_tokens": 64, "stop": ["\n\n"], "n": 1},
            "lm": {**dspy.LM("openai/fake-model", temperature=0.3).dump_state()},
        },
    )

    loaded = load_program("qa", sample("make_qa"), artifact=artifact)

    assert loaded.module.config == {"temperature": 0.2, "max_tokens": 64, "stop": ["\n\n"], "n": 1}
    assert loaded.module.lm.kwargs["temperature"] == 0.3
