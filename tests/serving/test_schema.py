"""``derive_interface``: a program's DSPy fields become the pydantic models (and JSON schema) of
its HTTP contract, from whichever source describes them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import dspy
import pytest
from pydantic import BaseModel, ValidationError

from dspy_serve.serving.dspy_json import to_wire
from dspy_serve.serving.schema import ProgramInterface, SchemaError, derive_interface
from tests.support.programs import future_programs as fp
from tests.support.programs import sample_programs as sp
from tests.support.programs import tutorial_programs as tp

VALID_INPUTS: dict[str, Any] = {
    "text": "hello",
    "count": 3,
    "ratio": 0.5,
    "flag": True,
    "tags": ["a", "b"],
    "scores": {"x": 1},
    "choice": "a",
    "maybe": 4,
    "maybe_too": None,
    "address": {"city": "Paris", "zip_code": 75001},
    "color": "red",
}


class FieldCase(NamedTuple):
    field: str
    schema: dict[str, Any]  # a fragment of the field's JSON schema
    valid: Any  # a JSON value that fits
    invalid: Any  # a JSON value that does not


OPTIONAL_INT = {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}
FIELD_TYPES = [
    pytest.param(FieldCase("text", {"type": "string"}, "hi", 5), id="str"),
    pytest.param(FieldCase("count", {"type": "integer"}, 7, "seven"), id="int"),
    pytest.param(FieldCase("ratio", {"type": "number"}, 0.25, "a quarter"), id="float"),
    pytest.param(FieldCase("flag", {"type": "boolean"}, False, "maybe"), id="bool"),
    pytest.param(
        FieldCase("tags", {"type": "array", "items": {"type": "string"}}, ["x"], "x"), id="list[str]"
    ),
    pytest.param(
        FieldCase(
            "scores", {"type": "object", "additionalProperties": {"type": "integer"}}, {"k": 2}, {"k": "two"}
        ),
        id="dict[str,int]",
    ),
    pytest.param(FieldCase("choice", {"enum": ["a", "b"], "type": "string"}, "b", "c"), id="Literal"),
    pytest.param(FieldCase("maybe", OPTIONAL_INT, 9, "nine"), id="Optional[int]"),
    pytest.param(FieldCase("maybe_too", OPTIONAL_INT, 9, "nine"), id="int|None"),
    pytest.param(
        FieldCase(
            "address", {"$ref": "#/$defs/Address"}, {"city": "Oslo", "zip_code": 150}, {"city": "Oslo"}
        ),
        id="pydantic-model",
    ),
    pytest.param(FieldCase("color", {"$ref": "#/$defs/Color"}, "blue", "green"), id="Enum"),
]


def properties(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()["properties"]


def required(model: type[BaseModel]) -> set[str]:
    return set(model.model_json_schema().get("required", []))


def json_round_trip(model: type[BaseModel], payload: dict[str, Any]) -> dict[str, Any]:
    return model.model_validate_json(json.dumps(payload)).model_dump(mode="json")


@pytest.fixture(scope="module")
def all_types() -> ProgramInterface:
    return derive_interface("all_types", dspy.Predict(sp.AllTypes))


@pytest.fixture(scope="module")
def all_types_out() -> ProgramInterface:
    return derive_interface("all_types_out", dspy.Predict(sp.AllTypesOut))


# --- field types ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", FIELD_TYPES)
def test_input_type_is_in_the_json_schema(all_types: ProgramInterface, case: FieldCase) -> None:
    assert case.schema.items() <= properties(all_types.inputs)[case.field].items()


@pytest.mark.parametrize("case", FIELD_TYPES)
def test_input_value_round_trips_through_json(all_types: ProgramInterface, case: FieldCase) -> None:
    payload = {**VALID_INPUTS, case.field: case.valid}

    assert json_round_trip(all_types.inputs, payload) == payload


@pytest.mark.parametrize("case", FIELD_TYPES)
def test_input_value_of_the_wrong_type_is_rejected(all_types: ProgramInterface, case: FieldCase) -> None:
    with pytest.raises(ValidationError) as raised:
        all_types.inputs.model_validate({**VALID_INPUTS, case.field: case.invalid})

    assert {error["loc"][0] for error in raised.value.errors()} == {case.field}


@pytest.mark.parametrize("case", FIELD_TYPES)
def test_output_type_is_in_the_json_schema(all_types_out: ProgramInterface, case: FieldCase) -> None:
    assert case.schema.items() <= properties(all_types_out.outputs)[case.field].items()


@pytest.mark.parametrize("case", FIELD_TYPES)
def test_output_value_round_trips_through_json(all_types_out: ProgramInterface, case: FieldCase) -> None:
    payload = {**VALID_INPUTS, case.field: case.valid}

    assert json_round_trip(all_types_out.outputs, payload) == payload


def test_inputs_validate_into_the_signatures_python_types(all_types: ProgramInterface) -> None:
    validated = all_types.inputs.model_validate(VALID_INPUTS)

    assert validated.address == sp.Address(city="Paris", zip_code=75001)  # type: ignore[attr-defined]
    assert validated.color is sp.Color.RED  # type: ignore[attr-defined]
    assert validated.scores == {"x": 1}  # type: ignore[attr-defined]


def test_nested_model_and_enum_are_defined_in_the_schema(all_types: ProgramInterface) -> None:
    definitions = all_types.input_schema()["$defs"]

    assert definitions["Address"]["required"] == ["city", "zip_code"]
    assert definitions["Color"]["enum"] == ["red", "blue"]


def test_optional_fields_are_not_required_and_default_to_none(all_types: ProgramInterface) -> None:
    payload = {k: v for k, v in VALID_INPUTS.items() if k not in ("maybe", "maybe_too")}

    validated = all_types.inputs.model_validate(payload)

    assert (validated.maybe, validated.maybe_too) == (None, None)  # type: ignore[attr-defined]
    assert required(all_types.inputs) == set(VALID_INPUTS) - {"maybe", "maybe_too"}


def test_missing_required_input_is_rejected(all_types: ProgramInterface) -> None:
    payload = {k: v for k, v in VALID_INPUTS.items() if k != "text"}

    with pytest.raises(ValidationError, match="text"):
        all_types.inputs.model_validate(payload)


def test_input_with_a_default_is_optional_and_uses_it() -> None:
    interface = derive_interface("with_defaults", dspy.Predict(sp.WithDefaults))

    assert properties(interface.inputs)["top_k"]["default"] == 5
    assert interface.inputs.model_validate({"question": "q", "tags": []}).top_k == 5  # type: ignore[attr-defined]


def test_input_with_a_default_factory_is_optional() -> None:
    interface = derive_interface("with_defaults", dspy.Predict(sp.WithDefaults))

    assert interface.inputs.model_validate({"question": "q"}).tags == []  # type: ignore[attr-defined]


def test_desc_becomes_the_json_schema_description(all_types: ProgramInterface) -> None:
    assert properties(all_types.inputs)["text"]["description"] == "Some text."
    assert properties(all_types.outputs)["summary"]["description"] == "A one-line summary."


def test_field_without_desc_has_no_placeholder_description(all_types: ProgramInterface) -> None:
    assert "description" not in properties(all_types.inputs)["count"]


def test_signature_docstring_becomes_the_instructions(all_types: ProgramInterface) -> None:
    assert all_types.instructions == "Exercise every field type."
    assert all_types.input_schema()["description"] == "Exercise every field type."


def test_constraints_on_signature_fields_reach_the_json_schema() -> None:
    interface = derive_interface("constrained", dspy.Predict(sp.Constrained))

    assert {"minimum": 1, "maximum": 5}.items() <= properties(interface.inputs)["rating"].items()
    assert properties(interface.inputs)["words"]["minItems"] == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [({"rating": 6, "words": ["ok"]}, "rating"), ({"rating": 3, "words": []}, "words")],
)
def test_constraints_on_signature_fields_are_enforced(payload: dict[str, Any], field: str) -> None:
    interface = derive_interface("constrained", dspy.Predict(sp.Constrained))

    with pytest.raises(ValidationError) as raised:
        interface.inputs.model_validate(payload)

    assert raised.value.errors()[0]["loc"] == (field,)


def test_inputs_model_forbids_extra_keys(all_types: ProgramInterface) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        all_types.inputs.model_validate({**VALID_INPUTS, "temperature": 0.3})

    assert all_types.input_schema()["additionalProperties"] is False


def test_outputs_model_drops_undeclared_fields() -> None:
    interface = derive_interface("qa", dspy.Predict(sp.QA))

    validated = interface.outputs.model_validate({"answer": "Paris", "internal_trace": "secret"})

    assert validated.model_dump() == {"answer": "Paris"}


def test_model_names_come_from_the_program_name() -> None:
    interface = derive_interface("my-qa_v2", dspy.Predict(sp.QA))

    assert interface.inputs.__name__ == "MyQaV2Inputs"
    assert interface.outputs.__name__ == "MyQaV2Outputs"


# --- program shapes -------------------------------------------------------------------------------


def test_predict_takes_its_signature() -> None:
    interface = derive_interface("qa", dspy.Predict(sp.QA))

    assert interface.signature == "question -> answer"
    assert interface.instructions == "Answer the question."


def test_chain_of_thought_outputs_reasoning_first() -> None:
    interface = derive_interface("cot", dspy.ChainOfThought(sp.QA))

    assert list(interface.outputs.model_fields) == ["reasoning", "answer"]
    assert list(interface.inputs.model_fields) == ["question"]
    assert properties(interface.outputs)["reasoning"]["type"] == "string"


def test_string_signature_types_its_fields() -> None:
    interface = derive_interface("qa", dspy.Predict("question -> answer: int, sources: list[str]"))

    assert properties(interface.inputs)["question"]["type"] == "string"
    assert properties(interface.outputs)["answer"]["type"] == "integer"
    assert properties(interface.outputs)["sources"] == {
        "items": {"type": "string"},
        "title": "Sources",
        "type": "array",
    }


def test_custom_module_inputs_come_from_forward_parameters() -> None:
    interface = derive_interface("rag", sp.RAG())

    assert list(interface.inputs.model_fields) == ["question", "k"]
    assert required(interface.inputs) == {"question"}
    assert properties(interface.inputs)["k"] == {"default": 3, "title": "K", "type": "integer"}


def test_custom_module_typed_parameter_keeps_its_predictor_field_description() -> None:
    interface = derive_interface("rag", sp.RAG())

    assert properties(interface.inputs)["question"]["description"] == "The user's question."


def test_custom_module_prediction_outputs_are_typed_from_predictor_output_fields_only() -> None:
    interface = derive_interface("rag", sp.RAG())

    assert list(interface.outputs.model_fields) == ["answer", "context"]
    assert properties(interface.outputs)["answer"]["type"] == "string"  # an output field
    # `context` is only a predictor's INPUT field: its type is not the program's to promise.
    assert "type" not in properties(interface.outputs)["context"]
    assert "Any JSON" in properties(interface.outputs)["context"]["description"]
    interface.outputs.model_validate({"answer": "a", "context": ["p1", {"title": "t"}]})


def test_a_dspy_type_forward_builds_for_a_returned_field_is_that_typed_object() -> None:
    interface = derive_interface("synthesize", tp.synthesize)

    schema = interface.output_schema()
    assert schema["properties"]["audio"] == {"$ref": "#/$defs/Audio"}
    assert set(schema["$defs"]["Audio"]["properties"]) == {"data", "audio_format"}
    with pytest.raises(ValidationError):
        interface.outputs.model_validate({"line": "x", "audio": "not audio"})


@pytest.mark.filterwarnings("ignore:The 'prefix' argument:DeprecationWarning")  # DSPy's own class
def test_a_dspy_built_in_with_untyped_parameters_is_refused_leading_with_the_signature_to_declare() -> None:
    with pytest.raises(SchemaError) as refused:
        derive_interface("mcc", dspy.MultiChainComparison("question -> answer"))

    example = "completions, question -> rationale, answer"  # reasoning_attempt_N: forward builds them
    assert str(refused.value).startswith(f'mcc: serve it with --signature mcc="{example}"')
    assert f'`serve_signature = "{example}"` on the instance' in str(refused.value)
    declared = derive_interface("mcc", dspy.MultiChainComparison("question -> answer"), example)
    assert list(declared.inputs.model_fields) == ["completions", "question"]


def test_custom_module_docstring_becomes_the_instructions() -> None:
    assert derive_interface("rag", sp.RAG()).instructions == "Retrieve passages, then answer."


def test_untyped_parameter_is_typed_from_the_predictor_field_it_feeds() -> None:
    interface = derive_interface("untyped", sp.UntypedParam())

    assert properties(interface.inputs)["context"]["type"] == "array"
    assert properties(interface.inputs)["context"]["description"] == "Passages to answer from."
    assert properties(interface.inputs)["question"]["type"] == "string"


def test_untyped_parameter_no_predictor_takes_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match=r"parameter 'style'.*serve_signature"):
        derive_interface("untyped", sp.UntypedUnused())


def test_postponed_annotations_are_resolved() -> None:
    interface = derive_interface("future", fp.FutureModule())

    assert properties(interface.inputs)["text"]["type"] == "string"
    assert properties(interface.inputs)["max_words"]["anyOf"] == [{"type": "integer"}, {"type": "null"}]
    assert required(interface.inputs) == {"text"}
    assert list(interface.outputs.model_fields) == ["summary", "keywords"]
    assert properties(interface.outputs)["keywords"]["type"] == "array"


def test_forward_returning_a_step_outputs_that_steps_fields() -> None:
    interface = derive_interface("step", sp.ReturnsStep())

    assert list(interface.outputs.model_fields) == ["reasoning", "answer"]


def test_forward_returning_a_variable_holding_a_step_result_outputs_its_fields() -> None:
    interface = derive_interface("step", sp.ReturnsAssignedStep())

    assert list(interface.outputs.model_fields) == ["answer"]


def test_forward_returning_super_forward_outputs_the_parents_fields() -> None:
    interface = derive_interface("child", sp.ChildOfRAG())

    assert list(interface.outputs.model_fields) == ["answer", "context"]
    assert properties(interface.inputs)["k"]["default"] == 5


def test_signature_return_annotation_declares_the_outputs() -> None:
    interface = derive_interface("annotated", sp.AnnotatedReturn())

    assert list(interface.outputs.model_fields) == ["answer"]
    assert properties(interface.outputs)["answer"]["description"] == "A short answer."


def test_underivable_outputs_are_a_schema_error_that_suggests_serve_signature() -> None:
    with pytest.raises(SchemaError, match=r"Underivable\.forward\(\).*serve_signature"):
        derive_interface("underivable", sp.Underivable())


def test_module_without_predictors_or_typed_forward_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="serve_signature"):
        derive_interface("nothing", sp.NoPredictors())


def test_async_only_module_is_derived_from_aforward() -> None:
    interface = derive_interface("async_only", sp.AsyncOnly())

    assert interface.signature == "question -> answer"


# --- declarations ---------------------------------------------------------------------------------


def test_serve_signature_attribute_overrides_derivation() -> None:
    interface = derive_interface("declared", sp.Declared())

    assert interface.signature == "question -> answer, sources"
    assert properties(interface.outputs)["sources"]["type"] == "array"


def test_declared_argument_overrides_derivation() -> None:
    interface = derive_interface("rag", sp.RAG(), declared="question: str -> verdict: bool")

    assert interface.signature == "question -> verdict"
    assert properties(interface.outputs)["verdict"]["type"] == "boolean"


def test_declared_argument_overrides_serve_signature() -> None:
    interface = derive_interface("declared", sp.Declared(), declared=sp.QA)

    assert interface.signature == "question -> answer"
    assert interface.instructions == "Answer the question."


# --- wrappers, return annotations ----------------------------------------------------------------


def test_best_of_n_and_refine_are_derived_from_the_module_they_run() -> None:
    def reward(args: dict[str, Any], prediction: dspy.Prediction) -> float:
        return 1.0

    for wrapper in (dspy.BestOfN, dspy.Refine):
        interface = derive_interface("rag", wrapper(module=tp.RAG(), N=2, reward_fn=reward, threshold=1.0))
        assert interface.signature == "question -> context, response"


def lookup(city: str) -> str:
    """Facts about a city."""
    return city


class AgentV2(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.agent = dspy.ReActV2("question -> answer: int", tools=[lookup])

    def forward(self, question: str) -> dspy.Prediction:
        return self.agent(question=question)


def test_react_v2_outputs_are_its_signatures_which_its_submit_tool_returns() -> None:
    for program in (dspy.ReActV2("question -> answer: int", tools=[lookup]), AgentV2()):
        interface = derive_interface("agent", program)
        assert interface.signature == "question -> answer", "not its agent step's next_thought, tool_calls"
        assert properties(interface.outputs)["answer"]["type"] == "integer"


def test_dspy_modules_running_code_are_derived_from_their_signatures() -> None:
    # Flex has no predictor until its code runs; RLM's forward takes an option beside **kwargs.
    for signature in ("question -> answer: int", "context, question -> answer: int"):
        for program in (dspy.Flex(signature), dspy.RLM(signature)):
            interface = derive_interface("coded", program)
            assert interface.signature == signature.removesuffix(": int"), type(program).__name__
            assert properties(interface.outputs)["answer"]["type"] == "integer"


class Verdict(BaseModel):
    label: str
    confidence: float


class ReturnsAModel(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.predict = dspy.Predict("text -> label")

    def forward(self, text: str) -> Verdict:
        return Verdict(label=self.predict(text=text).label, confidence=0.5)


def test_a_pydantic_model_return_annotation_declares_the_outputs() -> None:
    interface = derive_interface("verdict", ReturnsAModel())

    assert interface.signature == "text -> label, confidence"
    assert properties(interface.outputs)["confidence"]["type"] == "number"


def test_a_returned_field_named_like_an_input_field_only_is_any_json() -> None:
    interface = derive_interface("multihop", tp.Hop())

    assert interface.outputs.model_validate({"notes": [{"free": "form"}], "titles": ["t"]})
    assert properties(interface.outputs)["titles"]["items"] == {"type": "string"}  # an output field


# --- DSPy types on the wire -----------------------------------------------------------------------


def test_code_output_is_documented_and_sent_as_a_string() -> None:
    interface = derive_interface("code", tp.write_code)
    value = to_wire(dspy.Code["python"](code="print(1)"))

    assert properties(interface.outputs)["code"]["type"] == "string"
    assert interface.outputs.model_validate({"reasoning": "r", "code": value}).model_dump(mode="json") == {
        "reasoning": "r",
        "code": "print(1)",
    }


def test_audio_output_is_an_object_of_its_fields_not_a_prompt_encoding() -> None:
    interface = derive_interface("speaker", tp.Speaker())
    value = to_wire(dspy.Audio(data="AAAA", audio_format="wav"))

    assert value == {"data": "AAAA", "audio_format": "wav"}
    schema = interface.output_schema()
    assert schema["properties"]["audio"] == {"$ref": "#/$defs/Audio"}
    assert schema["$defs"]["Audio"]["required"] == ["data", "audio_format"]


def test_nested_predictions_models_and_types_become_plain_json() -> None:
    returned = dspy.Prediction(
        answer="a",
        draft=dspy.Prediction(answer="d", image=dspy.Image(url="https://example.com/x.png")),
        verdict=Verdict(label="ok", confidence=1.0),
        steps=(dspy.Prediction(step=1),),
    )

    assert to_wire(returned) == {
        "answer": "a",
        "draft": {"answer": "d", "image": {"url": "https://example.com/x.png"}},
        "verdict": {"label": "ok", "confidence": 1.0},
        "steps": [{"step": 1}],
    }


def test_tool_inputs_are_described_in_json_and_become_dspy_tools() -> None:
    interface = derive_interface("plan", tp.plan_tool_calls)

    values = interface.validate_inputs(
        {"question": "q", "tools": [{"name": "get_weather", "args": {"city": {"type": "string"}}}]}, "bad"
    )

    (tool,) = values["tools"]
    assert isinstance(tool, dspy.Tool)
    assert (tool.name, tool.args) == ("get_weather", {"city": {"type": "string"}})
    assert interface.input_schema()["$defs"]["ToolDescription"]["required"] == ["name"]
    with pytest.raises(RuntimeError, match="described by the caller"):
        tool.func(city="Paris")


class Hook(BaseModel):
    callback: Callable[[str], str]


class TakesAHook(dspy.Signature):
    """Takes something JSON cannot carry."""

    hook: Hook = dspy.InputField()
    answer: str = dspy.OutputField()


def test_an_input_without_a_json_schema_is_refused_at_startup_by_name() -> None:
    with pytest.raises(SchemaError, match=r"input field 'hook' of type Hook cannot be described as JSON"):
        derive_interface("hooked", dspy.Predict(TakesAHook))


class LoggedChainOfThought(dspy.ChainOfThought):
    def forward(self, **kwargs: Any) -> Any:
        print("calling with", sorted(kwargs))
        return super().forward(**kwargs)


def test_a_thin_subclass_of_a_dspy_wrapper_passing_kwargs_on_keeps_the_wrappers_interface() -> None:
    interface = derive_interface("cot", LoggedChainOfThought("question -> answer"))

    assert interface.signature == "question -> reasoning, answer"


# --- max_input_chars reaches every string of the inputs ---------------------------------------------


class Note(BaseModel):
    text: str


class Nested(dspy.Signature):
    """Inputs that hold strings below the top level."""

    question: str = dspy.InputField()
    note: Note = dspy.InputField()
    meta: dict[str, Any] = dspy.InputField()
    history: dspy.History = dspy.InputField()
    answer: str = dspy.OutputField()


NESTED_OK: dict[str, Any] = {
    "question": "q",
    "note": {"text": "short"},
    "meta": {"k": ["short"]},
    "history": {"messages": [{"question": "short", "answer": "short"}]},
}


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("note", {"text": "x" * 11}, "text"),
        ("meta", {"k": ["x" * 11]}, "k.0"),
        ("meta", {"k": {"deeper": "x" * 11}}, "k.deeper"),
        ("history", {"messages": [{"question": "x" * 11}]}, "messages.0.question"),
        ("history", dspy.History(messages=[{"question": "ok"}, {"answer": "x" * 11}]), "messages.1.answer"),
    ],
    ids=["model", "dict-list", "dict-dict", "history", "history-object"],
)
def test_max_input_chars_reaches_strings_nested_in_models_dicts_and_history(
    field: str, value: Any, where: str
) -> None:
    from dspy_serve.errors import InvalidInput

    interface = derive_interface("nested", dspy.Predict(Nested), max_input_chars=10)
    assert interface.validate_inputs(NESTED_OK, "ok")["note"] == Note(text="short")

    with pytest.raises(InvalidInput) as refused:
        interface.validate_inputs({**NESTED_OK, field: value}, "too long")

    (error,) = refused.value.errors or []
    assert error["loc"] == [field] and error["type"] == "string_too_long"
    assert f"at most 10 characters (at {where})" in error["msg"]


def test_a_module_without_a_docstring_has_no_description_not_its_first_steps() -> None:
    """A predictor's instructions describe one step; the program is described by its own class."""

    class TwoSteps(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.draft = dspy.Predict(sp.QA)  # "Answer the question."

        def forward(self, question: str) -> dspy.Prediction:
            return self.draft(question=question)

    class Documented(TwoSteps):
        """Draft an answer, then check it."""

    class Inherits(Documented):
        pass

    assert derive_interface("bare", TwoSteps()).instructions == ""
    assert derive_interface("documented", Documented()).instructions == "Draft an answer, then check it."
    assert derive_interface("inherits", Inherits()).instructions == "Draft an answer, then check it."
