"""Reading an LM response's field text as it streams, checked against the adapters' own parsers."""

from __future__ import annotations

import json

import dspy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspy_serve.serving.response_fields import ResponseFields, TextFormat, text_format

SIGNATURE = dspy.Signature("question -> a: str, ok: bool, b: str, n: list[int]")
TEXT = st.text(alphabet=st.sampled_from([*'ab #[]<>&;"\\{}:éë\n\r\t ', "🚀", "\u2028"]), max_size=25)


def read(
    layout: TextFormat, completion: str, sizes: list[int], fields: tuple[str, ...] = ("a", "b")
) -> dict[str, str]:
    reader = ResponseFields(layout, fields)
    joined: dict[str, str] = {}
    offset, turn = 0, 0
    while offset < len(completion):
        size = sizes[turn % len(sizes)]
        for field, text in reader.feed(completion[offset : offset + size]):
            joined[field] = joined.get(field, "") + text
        offset, turn = offset + size, turn + 1
    for field, text in reader.close():
        joined[field] = joined.get(field, "") + text
    return joined


SIZES = st.lists(st.integers(1, 8), min_size=1, max_size=5)


@settings(max_examples=300, deadline=None)
@given(a=TEXT, b=TEXT, sizes=SIZES, junk=TEXT)
def test_chat_text_is_what_chat_adapter_parses(a: str, b: str, sizes: list[int], junk: str) -> None:
    values = {"a": a, "ok": True, "b": b, "n": [1]}
    completion = junk + "\n" + dspy.ChatAdapter().format_assistant_message_content(SIGNATURE, values)
    try:
        expected = dspy.ChatAdapter().parse(SIGNATURE, completion + "\n\n[[ ## completed ## ]]")
    except dspy.AdapterParseError:
        return  # a value that breaks the layout (a header line of its own): nothing to compare
    got = read(TextFormat.CHAT, completion + "\n\n[[ ## completed ## ]]", sizes)
    assert {field: got.get(field, "") for field in ("a", "b")} == {"a": expected["a"], "b": expected["b"]}


@settings(max_examples=300, deadline=None)
@given(a=TEXT, b=TEXT, sizes=SIZES, ascii_only=st.booleans())
def test_json_text_is_the_decoded_string(a: str, b: str, sizes: list[int], ascii_only: bool) -> None:
    completion = json.dumps({"n": [[1], {"x": "}"}], "a": a, "ok": True, "b": b}, ensure_ascii=ascii_only)
    expected = dspy.JSONAdapter().parse(
        dspy.Signature("question -> a: str, ok: bool, b: str, n: list"), completion
    )
    got = read(TextFormat.JSON, completion, sizes)
    assert {field: got.get(field, "") for field in ("a", "b")} == {"a": expected["a"], "b": expected["b"]}


@settings(max_examples=300, deadline=None)
@given(a=TEXT, b=TEXT, sizes=SIZES)
def test_xml_text_is_what_xml_adapter_parses(a: str, b: str, sizes: list[int]) -> None:
    values = {"a": a, "ok": True, "b": b, "n": [1]}
    completion = dspy.XMLAdapter().format_assistant_message_content(SIGNATURE, values)
    try:
        expected = dspy.XMLAdapter().parse(SIGNATURE, completion)
    except dspy.AdapterParseError:
        return  # characters XML cannot hold
    got = read(TextFormat.XML, completion, sizes)
    assert {field: got.get(field, "") for field in ("a", "b")} == {"a": expected["a"], "b": expected["b"]}


def test_a_str_field_before_a_bool_ends_at_the_next_marker() -> None:
    completion = (
        "[[ ## a ## ]]\nToo long.\n\n[[ ## ok ## ]]\nTrue\n\n[[ ## b ## ]]\nShort.\n\n[[ ## completed ## ]]"
    )
    for size in range(1, 12):
        assert read(TextFormat.CHAT, completion, [size]) == {"a": "Too long.", "b": "Short."}


def test_only_the_first_section_of_a_field_counts_and_text_on_the_header_line_does() -> None:
    completion = "[[ ## a ## ]] first\nline\n[[ ## a ## ]]\nagain\n[[ ## b ## ]]\r\nx\r\ny"
    assert read(TextFormat.CHAT, completion, [3]) == {"a": "first\nline", "b": "x\ny"}


def test_xml_entities_split_across_chunks_decode_and_child_elements_stop_a_field() -> None:
    completion = "<a>\n caf&#233; &amp; &lt;b&gt; \n</a>\n<b>text <i>bold</i> tail</b>"
    assert read(TextFormat.XML, completion, [1]) == {"a": "café & <b>", "b": "text"}


@pytest.mark.parametrize(
    ("adapter", "layout"),
    [
        (None, TextFormat.CHAT),
        (dspy.ChatAdapter(), TextFormat.CHAT),
        (dspy.JSONAdapter(), TextFormat.JSON),
        (dspy.XMLAdapter(), TextFormat.XML),
        (dspy.TwoStepAdapter(dspy.LM("openai/x")), None),
    ],
)
def test_the_layout_follows_the_adapters_parser(adapter: object, layout: TextFormat | None) -> None:
    assert text_format(adapter) is layout


def test_an_adapter_that_parses_its_own_way_has_no_known_layout() -> None:
    class Custom(dspy.ChatAdapter):
        def parse(self, signature, completion):  # type: ignore[no-untyped-def]
            return super().parse(signature, completion)

    assert text_format(Custom()) is None
