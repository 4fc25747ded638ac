"""POST /NAME/feedback over real HTTP: scores, corrections checked against the output schema,
who may rate which call, double-clicks, feedback before capture, and feedback tokens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dspy_serve import create_app
from dspy_serve.data.tokens import mint_token
from tests.support.fake_lm import FakeLM
from tests.support.servers import ServerThread, serving
from tests.support.settings import PROGRAMS, fake_settings
from tests.support.stores import read_store, wait_for_rows

QA = f"qa={PROGRAMS / 'serving.py'}:qa"
KITCHEN = f"kitchen={PROGRAMS / 'serving.py'}:kitchen"
SECRET = "feedback-secret-for-tests"
ALICE, BOB = {"Authorization": "Bearer key-alice"}, {"Authorization": "Bearer key-bob"}


@pytest.fixture
def keyed(fake_lm: FakeLM, provider_key: str, store_url: str) -> Iterator[tuple[ServerThread, str]]:
    """qa served with capture, two API keys and feedback tokens, on SQLite and on PostgreSQL."""
    fake_lm.answers = {"answer": "Paris"}
    settings = fake_settings(
        fake_lm,
        programs=[QA],
        capture=["*"],
        store=store_url,
        api_keys=["alice:key-alice", "bob:key-bob"],
        feedback_token_secret=SECRET,
    )
    with serving(create_app(settings)) as server:
        yield server, store_url


def invoke(url: str, headers: dict[str, str], question: str = "Capital of France?") -> httpx.Response:
    response = httpx.post(
        f"{url}/qa/invoke", json={"inputs": {"question": question}}, headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text
    return response


def rate(url: str, body: dict[str, object], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/qa/feedback", json=body, headers=headers or {}, timeout=30)


def test_a_rating_and_a_correction_are_stored_and_a_double_click_keeps_the_first(
    keyed: tuple[ServerThread, str],
) -> None:
    server, store = keyed
    call_id = invoke(server.base_url, ALICE).json()["call_id"]
    first = rate(server.base_url, {"call_id": call_id, "score": True}, ALICE)
    second = rate(
        server.base_url,
        {"call_id": call_id, "score": False, "outputs": {"answer": "Lyon"}, "comment": "no"},
        ALICE,
    )
    assert (first.status_code, first.json()["replaced"]) == (200, False)
    assert (second.status_code, second.json()["replaced"]) == (200, True)
    [row] = read_store(store, f"SELECT * FROM feedback WHERE call_id = '{call_id}'")
    assert (row["key_name"], row["score"], row["comment"]) == ("alice", 0.0, "no")
    assert _json(row["outputs"]) == {"answer": "Lyon"}
    [old] = read_store(store, f"SELECT * FROM feedback_history WHERE call_id = '{call_id}'")
    assert (old["score"], old["outputs"]) == (1.0, None)


def test_a_key_may_rate_only_its_own_calls(keyed: tuple[ServerThread, str]) -> None:
    server, _ = keyed
    call_id = invoke(server.base_url, ALICE).json()["call_id"]
    response = rate(server.base_url, {"call_id": call_id, "score": 1}, BOB)
    assert response.status_code == 403 and response.json()["code"] == "forbidden"


def test_an_unknown_call_is_404(keyed: tuple[ServerThread, str]) -> None:
    server, _ = keyed
    response = rate(server.base_url, {"call_id": "0" * 32, "score": 1}, ALICE)
    assert response.status_code == 404 and response.json()["code"] == "call_not_found"


def test_feedback_says_something(keyed: tuple[ServerThread, str]) -> None:
    server, _ = keyed
    call_id = invoke(server.base_url, ALICE).json()["call_id"]
    response = rate(server.base_url, {"call_id": call_id}, ALICE)
    assert response.status_code == 422 and "corrected outputs or a comment" in response.json()["detail"]


def test_without_a_key_or_a_token_feedback_is_401(keyed: tuple[ServerThread, str]) -> None:
    server, _ = keyed
    call_id = invoke(server.base_url, ALICE).json()["call_id"]
    assert rate(server.base_url, {"call_id": call_id, "score": 1}).status_code == 401


def test_the_feedback_token_lets_a_browser_rate_that_call_without_the_key(
    keyed: tuple[ServerThread, str],
) -> None:
    server, store = keyed
    answered = invoke(server.base_url, ALICE)
    call_id, token = answered.json()["call_id"], answered.headers["x-feedback-token"]
    response = rate(server.base_url, {"call_id": call_id, "score": 0.5}, {"X-Feedback-Token": token})
    assert response.status_code == 200
    [row] = read_store(store, f"SELECT key_name, score FROM feedback WHERE call_id = '{call_id}'")
    assert row == {"key_name": "alice", "score": 0.5}  # given for the call's own key
    other = invoke(server.base_url, ALICE).json()["call_id"]
    assert (
        rate(server.base_url, {"call_id": other, "score": 1}, {"X-Feedback-Token": token}).status_code == 403
    )


def test_each_batch_item_carries_a_token_that_rates_that_item_and_no_other(
    keyed: tuple[ServerThread, str],
) -> None:
    server, store = keyed
    body = {"items": [{"question": "One?"}, {"question": "Two?"}, {"quest": "not an input"}]}
    answered = httpx.post(f"{server.base_url}/qa/batch", json=body, headers=ALICE, timeout=30)
    assert answered.status_code == 200, answered.text
    first, second, invalid = answered.json()["items"]
    assert first["outputs"] == {"answer": "Paris"} and invalid["error"]["code"] == "invalid_input"
    tokens = {item["feedback_token"] for item in (first, second, invalid)}
    assert len(tokens) == 3  # each item is its own call, with its own token
    assert int(answered.headers["content-length"]) == len(answered.content)
    as_first = {"X-Feedback-Token": first["feedback_token"]}
    assert rate(server.base_url, {"call_id": second["call_id"], "score": 1}, as_first).status_code == 403
    assert rate(server.base_url, {"call_id": first["call_id"], "score": 0.25}, as_first).status_code == 200
    as_second = {"X-Feedback-Token": second["feedback_token"]}
    assert rate(server.base_url, {"call_id": second["call_id"], "score": 1}, as_second).status_code == 200
    rows = read_store(store, "SELECT call_id, key_name, score FROM feedback ORDER BY score")
    assert rows == [
        {"call_id": first["call_id"], "key_name": "alice", "score": 0.25},
        {"call_id": second["call_id"], "key_name": "alice", "score": 1.0},
    ]


def test_the_openapi_document_describes_the_batch_items_token_and_the_answers_header(
    keyed: tuple[ServerThread, str],
) -> None:
    server, _ = keyed
    document = httpx.get(f"{server.base_url}/openapi.json", headers=ALICE, timeout=30).json()
    batch = document["paths"]["/qa/batch"]["post"]["responses"]["200"]["content"]["application/json"]
    response = document["components"]["schemas"][batch["schema"]["$ref"].rsplit("/", 1)[1]]
    item = document["components"]["schemas"][
        response["properties"]["items"]["items"]["$ref"].rsplit("/", 1)[1]
    ]
    assert item["properties"]["feedback_token"]["type"] == "string"
    assert "feedback_token" not in item.get("required", [])
    invoke_ok = document["paths"]["/qa/invoke"]["post"]["responses"]["200"]
    assert "X-Feedback-Token" in invoke_ok["headers"]


def test_without_feedback_tokens_batch_items_have_none(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    app = create_app(fake_settings(fake_lm, programs=[QA], capture=["*"], store=url))
    with serving(app) as server:
        body = {"items": [{"question": "One?"}]}
        [item] = httpx.post(f"{server.base_url}/qa/batch", json=body, timeout=30).json()["items"]
        document = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    assert "call_id" in item and "feedback_token" not in item
    assert "feedback_token" not in json.dumps(document)


def test_an_expired_or_forged_token_is_refused(keyed: tuple[ServerThread, str]) -> None:
    server, _ = keyed
    call_id = invoke(server.base_url, ALICE).json()["call_id"]
    expired = mint_token(SECRET, "qa", call_id, ttl=60, now=0)
    forged = mint_token("not-the-secret", "qa", call_id, ttl=3600)
    for token, says in ((expired, "expired"), (forged, "not valid")):
        response = rate(server.base_url, {"call_id": call_id, "score": 1}, {"X-Feedback-Token": token})
        assert response.status_code == 401 and says in response.json()["detail"]


def test_feedback_on_a_call_that_was_not_sampled_stores_the_call(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    app = create_app(fake_settings(fake_lm, programs=[QA], capture=["*"], capture_rate=0, store=url))
    with serving(app) as server:
        call_id = invoke(server.base_url, {}).json()["call_id"]
        assert read_store(url, "SELECT call_id FROM calls") == []
        assert rate(server.base_url, {"call_id": call_id, "comment": "good"}).status_code == 200
        [row] = wait_for_rows(url, "SELECT call_id, sampled FROM calls", 1)
    assert row["call_id"] == call_id and not row["sampled"]


def test_a_correction_that_does_not_fit_the_outputs_is_422_naming_the_field(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    fake_lm.answers = {
        "label": "pos",
        "score": 0.5,
        "count": 1,
        "flag": True,
        "person": {"name": "A", "age": 3},
    }
    app = create_app(fake_settings(fake_lm, programs=[KITCHEN], capture=["*"], store=url))
    with serving(app) as server:
        body = {"inputs": {"text": "t", "tags": ["a"]}}
        call_id = httpx.post(f"{server.base_url}/kitchen/invoke", json=body, timeout=30).json()["call_id"]
        post = f"{server.base_url}/kitchen/feedback"
        wrong_type = httpx.post(post, json={"call_id": call_id, "outputs": {"label": "meh"}}, timeout=30)
        nested = httpx.post(post, json={"call_id": call_id, "outputs": {"person": {"name": "B"}}}, timeout=30)
        unknown = httpx.post(post, json={"call_id": call_id, "outputs": {"answer": "x"}}, timeout=30)
        fits = httpx.post(
            post, json={"call_id": call_id, "outputs": {"label": "neg", "count": "2"}}, timeout=30
        )
        [row] = wait_for_rows(url, "SELECT outputs FROM feedback", 1)
    assert wrong_type.status_code == 422 and wrong_type.json()["errors"][0]["loc"] == [
        "body",
        "outputs",
        "label",
    ]
    assert nested.status_code == 422 and nested.json()["errors"][0]["loc"] == [
        "body",
        "outputs",
        "person",
        "age",
    ]
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["loc"] == ["body", "outputs", "answer"]
    assert fits.status_code == 200
    assert _json(row["outputs"]) == {"label": "neg", "count": 2}  # stored as the schema's JSON


def _json(value: object) -> object:
    return json.loads(value) if isinstance(value, str) else value


def test_the_client_rates_a_prediction_it_got(keyed: tuple[ServerThread, str]) -> None:
    from dspy_serve import Client

    server, store = keyed
    with Client(server.base_url, api_key="key-alice") as client:
        qa = client.program("qa")
        prediction = qa(question="Capital of France?")
        answered = qa.feedback(prediction, score=False, outputs={"answer": "Paris, France"})
        with pytest.raises(ValueError, match="no call id"):
            qa.feedback(dspy_prediction_without_id(), score=True)
    assert answered == {"call_id": prediction._serve_call_id, "replaced": False}
    [row] = read_store(store, f"SELECT score FROM feedback WHERE call_id = '{prediction._serve_call_id}'")
    assert row["score"] == 0.0


def dspy_prediction_without_id() -> object:
    import dspy

    return dspy.Prediction(answer="x")


def test_feedback_while_the_store_is_down_is_503_and_the_call_still_answered(
    fake_lm: FakeLM, provider_key: str
) -> None:
    from tests.support.cli import free_port

    nothing_there = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    app = create_app(
        fake_settings(fake_lm, programs=[QA], capture=["*"], store=nothing_there, store_timeout=1)
    )
    with serving(app) as server:
        call_id = invoke(server.base_url, {}).json()["call_id"]
        response = rate(server.base_url, {"call_id": call_id, "score": 1})
    assert response.status_code == 503 and response.json()["code"] == "store_unavailable"
    assert "retry-after" in response.headers


def test_a_page_of_an_allowed_origin_may_read_the_token_and_send_it(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    origin = "https://app.example"
    settings = fake_settings(
        fake_lm,
        programs=[QA],
        capture=["*"],
        store=f"sqlite:///{tmp_path / 'store.db'}",
        api_keys=["alice:key-alice"],
        feedback_token_secret=SECRET,
        cors_origins=[origin],
    )
    with serving(create_app(settings)) as server:
        answered = invoke(server.base_url, {**ALICE, "Origin": origin})
        preflight = httpx.options(
            f"{server.base_url}/qa/feedback",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, x-feedback-token",
            },
            timeout=30,
        )
        token = answered.headers["x-feedback-token"]
        rated = rate(
            server.base_url,
            {"call_id": answered.json()["call_id"], "score": True},
            {"Origin": origin, "X-Feedback-Token": token},
        )
    assert "x-feedback-token" in answered.headers["access-control-expose-headers"].lower()
    assert preflight.status_code == 200
    assert "x-feedback-token" in preflight.headers["access-control-allow-headers"].lower()
    assert rated.status_code == 200
