"""Durable jobs over real HTTP (#28): submit, poll, results in input order (JSON and JSON
lines), ownership, cancel, the signed webhook and the OpenAPI document, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dspy_serve import Client, JobNotFound, create_app
from tests.support.dspy_prompts import Body, prompt_text
from tests.support.fake_lm import FakeLM
from tests.support.servers import ServerThread, serving
from tests.support.settings import PROGRAMS, fake_settings

QA = f"qa={PROGRAMS / 'serving.py'}:qa"
KITCHEN = f"kitchen={PROGRAMS / 'serving.py'}:kitchen"
ALICE, BOB = {"Authorization": "Bearer key-alice"}, {"Authorization": "Bearer key-bob"}
SECRET = "webhook-secret-for-tests"


def echo(body: Body) -> dict[str, str]:
    """Answers item N's question 'qN' with 'aN': results can be matched to their inputs."""
    numbers = re.findall(r"\bq(\d+)\b", prompt_text(body))
    return {"answer": f"a{numbers[-1]}" if numbers else "?"}


@pytest.fixture
def jobs_server(fake_lm: FakeLM, provider_key: str, store_url: str) -> Iterator[ServerThread]:
    fake_lm.answers = echo
    settings = fake_settings(
        fake_lm,
        programs=[QA, KITCHEN],
        store=store_url,
        jobs=True,
        job_concurrency=3,
        api_keys=["alice:key-alice", "bob:key-bob", "cook:key-cook programs=kitchen"],
        job_webhook_secret=SECRET,
        job_webhook_retries=2,
    )
    with serving(create_app(settings)) as server:
        yield server


def submit(url: str, body: Any, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/qa/jobs", json=body, headers=headers, timeout=30, **kwargs)


def wait_until_ended(url: str, job_id: str, headers: dict[str, str], seconds: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/jobs/{job_id}", headers=headers, timeout=30).json()
        if status["state"] in ("done", "failed", "cancelled"):
            return status  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {status['state']} after {seconds} s: {status}")


def result_lines(
    url: str, job_id: str, headers: dict[str, str], offset: int = 0
) -> tuple[httpx.Response, list[Any]]:
    response = httpx.get(
        f"{url}/jobs/{job_id}/results", params={"offset": offset}, headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return response, [json.loads(line) for line in response.text.splitlines()]


def test_a_job_answers_every_item_and_its_results_come_in_input_order(jobs_server: ServerThread) -> None:
    url = jobs_server.base_url
    items: list[Any] = [{"question": f"q{i}"} for i in range(12)]
    items[3] = {"nope": "not an input"}
    created = submit(url, {"items": items}, ALICE)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert created.headers["location"] == f"/jobs/{job_id}" and created.json()["total"] == 12
    status = wait_until_ended(url, job_id, ALICE)
    assert (status["state"], status["done"], status["failed"], status["total"]) == ("done", 11, 1, 12)
    assert status["tokens"] > 0 and status["finished_at"] >= status["started_at"] >= status["created_at"]
    response, lines = result_lines(url, job_id, ALICE)
    assert response.headers["x-more-results"] == "false" and response.headers["x-next-offset"] == "12"
    assert [line["index"] for line in lines] == list(range(12))
    assert [line["outputs"]["answer"] for line in lines if "outputs" in line] == [
        f"a{i}" for i in range(12) if i != 3
    ]
    invalid = lines[3]["error"]
    assert invalid["code"] == "invalid_input" and invalid["errors"][0]["loc"][:2] == ["items", 3]
    assert all(line["call_id"] for line in lines) and lines[0]["usage"]
    _, tail = result_lines(url, job_id, ALICE, offset=9)
    assert [line["index"] for line in tail] == [9, 10, 11]


def test_json_lines_are_a_job_too_and_a_line_that_is_not_json_fails_alone(
    jobs_server: ServerThread,
) -> None:
    url = jobs_server.base_url
    body = '{"question": "q0"}\nnot json\n{"question": "q2"}\n'
    created = httpx.post(
        f"{url}/qa/jobs", content=body, headers={**ALICE, "Content-Type": "application/x-ndjson"}, timeout=30
    )
    assert created.status_code == 202, created.text
    status = wait_until_ended(url, created.json()["id"], ALICE)
    assert (status["done"], status["failed"]) == (2, 1)
    _, lines = result_lines(url, created.json()["id"], ALICE)
    assert [line.get("outputs", {}).get("answer") for line in lines] == ["a0", None, "a2"]
    assert lines[1]["error"]["errors"][0]["loc"][:2] == ["items", 1]
    form = httpx.post(f"{url}/qa/jobs", content="x", headers={**ALICE, "Content-Type": "text/plain"})
    assert form.status_code == 415


def test_a_key_sees_and_cancels_only_its_own_jobs(jobs_server: ServerThread) -> None:
    url = jobs_server.base_url
    job_id = submit(url, {"items": [{"question": "q1"}]}, ALICE).json()["id"]
    for method, path in [("GET", ""), ("GET", "/results"), ("DELETE", "")]:
        response = httpx.request(method, f"{url}/jobs/{job_id}{path}", headers=BOB, timeout=30)
        assert response.status_code == 404 and response.json()["code"] == "job_not_found", (method, path)
    assert httpx.get(f"{url}/jobs/{job_id}", headers=ALICE).status_code == 200
    mine = httpx.get(f"{url}/jobs", headers=ALICE).json()["jobs"]
    assert [job["id"] for job in mine] == [job_id]
    assert httpx.get(f"{url}/jobs", headers=BOB).json()["jobs"] == []
    # A program outside the key is one that does not exist, as for /invoke.
    outside = submit(url, {"items": [{"question": "q1"}]}, {"Authorization": "Bearer key-cook"})
    assert outside.status_code == 404 and outside.json()["code"] == "program_not_found"
    assert submit(url, {"items": [{"question": "q1"}]}, {}).status_code == 401


def test_cancel_marks_the_job_cancelled_and_cancels_its_running_calls(
    jobs_server: ServerThread, fake_lm: FakeLM
) -> None:
    url = jobs_server.base_url
    fake_lm.latency = 30.0
    job_id = submit(url, {"items": [{"question": f"q{i}"} for i in range(8)]}, ALICE).json()["id"]
    assert fake_lm.wait_for(lambda: fake_lm.in_flight == 3, timeout=30)  # job_concurrency
    cancelled = httpx.delete(f"{url}/jobs/{job_id}", headers=ALICE, timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert fake_lm.wait_for(lambda: fake_lm.in_flight == 0, timeout=30)  # the calls were cancelled
    deadline = time.monotonic() + 30
    while (response := result_lines(url, job_id, ALICE))[0].headers["x-more-results"] == "true":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    lines = response[1]
    assert len(lines) == 8 and {line["error"]["code"] for line in lines} == {"job_cancelled"}
    assert fake_lm.requests_started == 3
    assert httpx.get(f"{url}/jobs/{job_id}", headers=ALICE).json()["state"] == "cancelled"


class Receiver:
    """A webhook receiver on 127.0.0.1: fails its first delivery (500), then records."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.attempts = 0
        self.got = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.attempts += 1
        status = 500 if self.attempts == 1 else 204
        if status == 204:
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            self.received.append((body, headers))
            self.got.set()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def test_the_webhook_is_signed_and_retried_until_it_is_taken(jobs_server: ServerThread) -> None:
    url = jobs_server.base_url
    receiver = Receiver()
    with serving(receiver, lifespan="off") as hook:
        created = submit(url, {"items": [{"question": "q1"}], "webhook": f"{hook.base_url}/done"}, ALICE)
        assert created.status_code == 202, created.text
        assert receiver.got.wait(60)
    [(body, headers)] = receiver.received
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-dspy-serve-signature"], expected)
    sent = json.loads(body)
    assert (sent["id"], sent["state"], sent["done"]) == (created.json()["id"], "done", 1)
    assert receiver.attempts == 2
    bad = submit(url, {"items": [{"question": "q1"}], "webhook": "file:///etc/passwd"}, ALICE)
    assert bad.status_code == 400 and bad.json()["errors"][0]["loc"] == ["body", "webhook"]


def test_the_job_routes_are_in_the_openapi_document_with_typed_models(jobs_server: ServerThread) -> None:
    document = httpx.get(f"{jobs_server.base_url}/openapi.json", headers=ALICE, timeout=30).json()
    paths = document["paths"]
    assert {"/qa/jobs", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/results"} <= set(paths)
    submit_body = paths["/qa/jobs"]["post"]["requestBody"]["content"]
    assert "$ref" in submit_body["application/json"]["schema"] and "application/x-ndjson" in submit_body
    assert "delete" in paths["/jobs/{job_id}"]
    results = paths["/jobs/{job_id}/results"]["get"]["responses"]["200"]["content"]
    assert "application/x-ndjson" in results
    assert {"JobStatus", "JobCreated", "JobResultLine"} <= set(document["components"]["schemas"])


def test_the_python_client_submits_follows_and_resumes_a_job(
    jobs_server: ServerThread, fake_lm: FakeLM
) -> None:
    fake_lm.latency = 0.1
    with Client(jobs_server.base_url, api_key="key-alice") as client:
        job_id = client.program("qa").submit([{"question": f"q{i}"} for i in range(7)])
        lines = list(client.job_results(job_id))  # follows until every item is in
        assert [line["outputs"]["answer"] for line in lines] == [f"a{i}" for i in range(7)]
        assert [line["index"] for line in client.job_results(job_id, offset=5)] == [5, 6]
        assert client.job(job_id)["state"] == "done"
        assert client.cancel_job(job_id)["state"] == "done"  # an ended job stays as it ended
    with Client(jobs_server.base_url, api_key="key-bob") as other, pytest.raises(JobNotFound):
        other.job(job_id)


def test_an_item_over_the_rate_limit_waits_its_turn_instead_of_failing(
    fake_lm: FakeLM, provider_key: str, tmp_path: Any
) -> None:
    """Each item is one request of its key's budget when it runs: a 429 is waited out."""
    fake_lm.answers = echo
    settings = fake_settings(
        fake_lm, programs=[QA], store=f"sqlite:///{tmp_path / 's.db'}", jobs=True, job_concurrency=4,
        api_keys=["alice:key-alice"], rate_limit="3/second",
    )  # fmt: skip
    with serving(create_app(settings)) as server:
        created = submit(server.base_url, {"items": [{"question": f"q{i}"} for i in range(8)]}, ALICE)
        status = wait_until_ended(server.base_url, created.json()["id"], ALICE)
    assert (status["state"], status["done"], status["failed"]) == ("done", 8, 0)


def test_a_job_may_carry_a_larger_body_than_other_routes_up_to_its_own_limit(
    fake_lm: FakeLM, provider_key: str, tmp_path: Any
) -> None:
    settings = fake_settings(
        fake_lm, programs=[QA], store=f"sqlite:///{tmp_path / 's.db'}", jobs=True,
        max_body_bytes=2_000, job_max_body_bytes=20_000, batch_max_items=1000,
    )  # fmt: skip
    items = [{"question": f"q{i} " + "x" * 40} for i in range(60)]  # ~4 kB
    with serving(create_app(settings)) as server:
        url = server.base_url
        assert httpx.post(f"{url}/qa/batch", json={"items": items}, timeout=30).status_code == 413
        assert httpx.post(f"{url}/qa/jobs", json={"items": items}, timeout=30).status_code == 202
        huge = httpx.post(f"{url}/qa/jobs", json={"items": items * 6}, timeout=30)
        assert huge.status_code == 413 and "20000 bytes" in huge.json()["detail"]


def test_a_job_keeps_to_its_budget_and_leaves_the_rest_of_the_capacity_to_interactive_calls(
    fake_lm: FakeLM, provider_key: str, tmp_path: Any
) -> None:
    """max_in_flight 4 with no queue: a job of many items takes its 2 slots, never more, and two
    interactive calls at once still get the other two (a full gate would answer 503)."""
    fake_lm.answers = echo
    settings = fake_settings(
        fake_lm, programs=[QA], store=f"sqlite:///{tmp_path / 's.db'}", jobs=True, job_concurrency=2,
        max_in_flight=4, max_queue=0,
    )  # fmt: skip
    with serving(create_app(settings)) as server:
        url = server.base_url
        fake_lm.latency = 1.0
        submit(url, {"items": [{"question": f"q{i}"} for i in range(40)]}, {})
        assert fake_lm.wait_for(lambda: fake_lm.in_flight == 2, timeout=30)
        time.sleep(0.6)  # another poll of the runner: it takes no third slot
        assert fake_lm.in_flight == 2
        results: list[int] = []

        def interactive(n: int) -> None:
            answer = httpx.post(f"{url}/qa/invoke", json={"inputs": {"question": f"q{100 + n}"}}, timeout=30)
            results.append(answer.status_code)

        callers = [threading.Thread(target=interactive, args=(n,)) for n in range(2)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(60)
    assert results == [200, 200]
