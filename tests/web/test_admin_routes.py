"""The admin API over real HTTP, against the fake LM, under continuous load (#27).

During each change (a hot load, a split, a shadow run, a promote, a rollback, a failed load),
clients keep calling ``/qa/invoke``: none of their requests may fail, and every response names
the version that served it (``X-Program-Version`` and ``version`` in the body agree, and the
answer is that version's: v2's instructions make the fake LM answer "Lyon")."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dspy_serve import create_app
from tests.support.fake_lm import Answer, FakeLM
from tests.support.servers import ServerThread, serving
from tests.support.settings import fake_settings
from tests.support.stores import read_store, wait_for_rows
from tests.support.versions import QA, continuous_load, write_artifact

ADMIN = {"Authorization": "Bearer admin-secret"}
ANSWER = {"v1": "Paris", "v2": "Lyon"}


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    folder = tmp_path / "artifacts"
    write_artifact(folder / "v1.json", "V1")
    write_artifact(folder / "v2.json", "V2")
    (folder / "broken.json").write_text(
        '{"self": {"demos": [], "signature": {"instructions": 3', encoding="utf-8"
    )
    return folder


@pytest.fixture
def server(fake_lm: FakeLM, provider_key: str, artifacts: Path, tmp_path: Path) -> Iterator[ServerThread]:
    fake_lm.latency = 0.02
    fake_lm.answers = {"answer": "Paris"}
    fake_lm.when("[V2]", Answer({"answer": "Lyon"}))
    settings = fake_settings(
        fake_lm,
        programs=[QA],
        artifacts=[f"qa={artifacts / 'v1.json'}"],
        admin_keys=["ops:admin-secret"],
        artifact_dir=artifacts,
        capture=["*"],
        store=f"sqlite:///{tmp_path / 'store.db'}",
    )
    with serving(create_app(settings)) as running:
        yield running


def admin(server: ServerThread, method: str, path: str, body: object = None) -> httpx.Response:
    return httpx.request(
        method, f"{server.base_url}/admin/programs/qa{path}", json=body, headers=ADMIN, timeout=30
    )


def load_v2(server: ServerThread) -> None:
    response = admin(server, "POST", "/versions", {"name": "v2", "artifact": "v2.json"})
    assert response.status_code == 201, response.text


def assert_clean(load: object) -> None:
    """No request failed, and each response named its version, in the header and the body,
    with that version's answer."""
    assert load.errors == [] and load.failed == [], (load.errors, load.failed[:3])  # type: ignore[attr-defined]
    assert load.unnamed() == []  # type: ignore[attr-defined]
    assert all(ANSWER[s.header] == s.answer for s in load.seen)  # type: ignore[attr-defined]
    assert len(load.seen) > 20  # type: ignore[attr-defined]


def test_a_hot_load_under_load_fails_nothing_and_the_new_version_waits_for_traffic(
    server: ServerThread,
) -> None:
    with continuous_load(server.base_url) as load:
        load_v2(server)
    assert_clean(load)
    assert load.versions() == {"v1": len(load.seen)}
    described = admin(server, "GET", "").json()
    states = {v["name"]: v["state"] for v in described["versions"]}
    assert states == {"v1": "stable", "v2": "retired"}
    v2 = next(v for v in described["versions"] if v["name"] == "v2")
    assert len(v2["sha256"]) == 64 and v2["artifact"].endswith("v2.json")
    # The same content under the same name again changes nothing (200, not 201).
    again = admin(server, "POST", "/versions", {"name": "v2", "artifact": "v2.json"})
    assert again.status_code == 200
    # Another content under a name in use is refused: versions are immutable.
    clash = admin(server, "POST", "/versions", {"name": "v2", "artifact": "v1.json"})
    assert clash.status_code == 409 and clash.json()["code"] == "rollout_conflict"


def test_a_50_50_split_matches_its_weights_and_every_caller_sticks_to_its_side(server: ServerThread) -> None:
    load_v2(server)
    split = admin(server, "PUT", "/split", {"candidate": "v2", "weight": 50, "sticky": "header:X-User"})
    assert split.status_code == 200, split.text
    assert split.json()["split"] == {"candidate": "v2", "weight": 50.0, "sticky": "header:x-user"}
    users = 60
    with continuous_load(
        server.base_url,
        headers=lambda client, n: {"X-User": f"user-{(client * 1000 + n) % users}"},
        sticky=lambda client, n: f"user-{(client * 1000 + n) % users}",
    ) as load:
        pass
    assert_clean(load)
    by_user: dict[str, set[str]] = {}
    for seen in load.seen:
        by_user.setdefault(seen.sticky, set()).add(seen.header or "?")
    assert all(len(versions) == 1 for versions in by_user.values()), by_user  # sticky
    # The share of users on v2 is a binomial draw of 50 % (within 4 standard deviations).
    on_v2 = sum(versions == {"v2"} for versions in by_user.values())
    assert abs(on_v2 - len(by_user) / 2) <= 4 * math.sqrt(len(by_user) / 4), by_user


def test_without_a_sticky_header_a_split_is_sticky_by_api_key_else_client_address(
    server: ServerThread,
) -> None:
    load_v2(server)
    admin(server, "PUT", "/split", {"candidate": "v2", "weight": 50})
    versions = {
        httpx.post(
            f"{server.base_url}/qa/invoke", json={"inputs": {"question": f"q{i}"}}, timeout=30
        ).headers["x-program-version"]
        for i in range(12)
    }
    assert len(versions) == 1  # one client address, one side


def test_a_shadow_run_records_the_candidate_and_never_returns_it(
    server: ServerThread, tmp_path: Path
) -> None:
    load_v2(server)
    shadow = admin(server, "PUT", "/shadow", {"candidate": "v2", "rate": 1.0})
    assert shadow.status_code == 200 and shadow.json()["shadow"] == {"candidate": "v2", "rate": 1.0}
    with continuous_load(server.base_url) as load:
        pass
    assert_clean(load)
    assert load.versions() == {"v1": len(load.seen)}  # every caller got the stable answer
    store = f"sqlite:///{tmp_path / 'store.db'}"
    wait_for_rows(store, "SELECT call_id FROM calls", len(load.seen) * 2)
    rows = [
        {
            **row,
            "inputs": json.loads(str(row["inputs"])),
            "outputs": json.loads(str(row["outputs"] or "null")),
        }
        for row in read_store(store, "SELECT * FROM calls")
    ]
    shadows = [row for row in rows if row["shadow_of"] is not None]
    served = {row["call_id"]: row for row in rows if row["shadow_of"] is None}
    assert shadows and all(row["wire"] == "shadow" and row["version_name"] == "v2" for row in shadows)
    assert all(row["outputs"] == {"answer": "Lyon"} for row in shadows if row["error_code"] is None)
    # Each shadow run ran its served call's inputs.
    assert all(
        served[row["shadow_of"]]["inputs"] == row["inputs"] for row in shadows if row["shadow_of"] in served
    )
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    assert 'dspy_serve_version_calls_total{outcome="ok",program="qa",role="shadow",version="v2"}' in metrics


def test_promote_then_rollback_under_load(server: ServerThread) -> None:
    load_v2(server)
    with continuous_load(server.base_url) as promoting:
        promoted = admin(server, "POST", "/promote", {"version": "v2"})
    assert promoted.status_code == 200 and promoted.json()["stable"] == "v2"
    assert_clean(promoting)
    assert promoting.seen[-1].header == "v2" and promoting.seen[0].header == "v1"
    with continuous_load(server.base_url) as rolling_back:
        back = admin(server, "POST", "/rollback")
    assert back.status_code == 200 and back.json()["stable"] == "v1"
    assert_clean(rolling_back)
    assert rolling_back.seen[-1].header == "v1" and rolling_back.seen[0].header == "v2"
    nothing = admin(server, "POST", "/rollback")
    assert nothing.status_code == 409 and "nothing to roll back" in nothing.json()["detail"]


def test_a_rollback_during_a_canary_ends_it(server: ServerThread) -> None:
    load_v2(server)
    admin(server, "PUT", "/split", {"candidate": "v2", "weight": 100})
    with continuous_load(server.base_url) as load:
        back = admin(server, "POST", "/rollback")
    assert back.json()["stable"] == "v1" and back.json()["split"] is None and back.json()["candidate"] is None
    assert_clean(load)
    assert load.seen[0].header == "v2" and load.seen[-1].header == "v1"


@pytest.mark.parametrize(
    ("artifact", "says"),
    [
        ("broken.json", "broken.json"),
        ("missing.json", "no such file"),
        ("../store.db", "under the directory"),
        ("/etc/passwd", "under the directory"),
    ],
)
def test_a_failed_load_under_load_leaves_everything_serving_and_says_why(
    server: ServerThread, artifact: str, says: str
) -> None:
    with continuous_load(server.base_url) as load:
        failed = admin(server, "POST", "/versions", {"name": "v9", "artifact": artifact})
    assert failed.status_code == 422, failed.text
    problem = failed.json()
    assert problem["code"] == "version_load_failed" and says in problem["detail"], problem
    assert problem["errors"][0]["loc"][-1] in ("artifact", "name")
    assert "Traceback" not in failed.text
    assert_clean(load)
    assert [v["name"] for v in admin(server, "GET", "").json()["versions"]] == ["v1"]


def test_the_admin_api_takes_admin_keys_only_and_stays_out_of_openapi(server: ServerThread) -> None:
    url = f"{server.base_url}/admin/programs/qa"
    assert httpx.get(url, timeout=30).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=30).status_code == 401
    assert httpx.get(url, headers=ADMIN, timeout=30).status_code == 200
    assert httpx.get(f"{server.base_url}/admin/programs/nope", headers=ADMIN, timeout=30).status_code == 404
    document = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    assert not [path for path in document["paths"] if path.startswith("/admin")]


def test_changes_refer_to_versions_that_exist(server: ServerThread) -> None:
    missing = admin(server, "POST", "/promote", {"version": "v7"})
    assert missing.status_code == 404 and missing.json()["code"] == "version_not_found"
    bad = admin(server, "PUT", "/split", {"candidate": "v1", "weight": 150})
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"][-1] == "weight"


def test_every_wire_names_the_version(server: ServerThread) -> None:
    url = server.base_url
    stream = httpx.post(f"{url}/qa/stream", json={"inputs": {"question": "q"}}, timeout=30)
    assert stream.headers["x-program-version"] == "v1" and '"version":"v1"' in stream.text.replace(" ", "")
    batch = httpx.post(f"{url}/qa/batch", json={"items": [{"question": "a"}, {"question": "b"}]}, timeout=30)
    assert batch.headers["x-program-version"] == "v1"
    assert [item["version"] for item in batch.json()["items"]] == ["v1", "v1"]
    chat = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "qa", "messages": [{"role": "user", "content": "q"}]},
        timeout=30,
    )
    assert chat.status_code == 200 and chat.headers["x-program-version"] == "v1"
    described = httpx.get(f"{url}/programs/qa", timeout=30).json()
    assert [(v["name"], v["state"]) for v in described["versions"]] == [("v1", "stable")]


def test_the_response_cache_keeps_each_versions_answers_apart(
    fake_lm: FakeLM, provider_key: str, artifacts: Path, tmp_path: Path
) -> None:
    fake_lm.answers = {"answer": "Paris"}
    fake_lm.when("[V2]", Answer({"answer": "Lyon"}))
    settings = fake_settings(
        fake_lm,
        programs=[QA],
        artifacts=[f"qa={artifacts / 'v1.json'}"],
        candidates=[f"qa={artifacts / 'v2.json'}"],
        admin_keys=["ops:admin-secret"],
        store=f"sqlite:///{tmp_path / 'store.db'}",
        response_cache="memory",
        temperature=0,
    )
    with serving(create_app(settings)) as running:
        ask = {"inputs": {"question": "Same question"}}
        first = httpx.post(f"{running.base_url}/qa/invoke", json=ask, timeout=30)
        again = httpx.post(f"{running.base_url}/qa/invoke", json=ask, timeout=30)
        assert (first.json()["outputs"], again.headers["x-cache"]) == ({"answer": "Paris"}, "hit")
        admin(running, "POST", "/promote", {"version": "v2"})
        promoted = httpx.post(f"{running.base_url}/qa/invoke", json=ask, timeout=30)
        assert promoted.headers["x-cache"] == "miss" and promoted.json()["outputs"] == {"answer": "Lyon"}
        assert promoted.headers["x-program-version"] == "v2"
