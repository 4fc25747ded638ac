"""Program versions end to end (#27), over real HTTP against the fake LM: `dspy-serve admin` and
`dspy-serve compare` driving a real server, a shadow run whose paired comparison says `better`,
the automatic rollback of a failing canary, SIGHUP under load, and two workers that agree."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from dspy_serve import create_app
from dspy_serve.cli import main
from tests.support.cli import require_answering, serve_qa
from tests.support.fake_lm import Answer, FakeLM, ServerError
from tests.support.servers import ServerThread
from tests.support.settings import fake_settings
from tests.support.stores import wait_for_rows
from tests.support.versions import QA, continuous_load, write_artifact

ADMIN_KEY = "admin-secret"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def artifacts(tmp_path: Path, fake_lm: FakeLM) -> Path:
    folder = tmp_path / "artifacts"
    write_artifact(folder / "v1.json", "V1")
    write_artifact(folder / "v2.json", "V2")
    fake_lm.answers = {"answer": "Paris"}
    fake_lm.when("[V2]", Answer({"answer": "Lyon"}))
    return folder


def served(fake_lm: FakeLM, artifacts: Path, tmp_path: Path, **overrides: object) -> ServerThread:
    settings = fake_settings(
        fake_lm,
        programs=[QA],
        artifacts=[f"qa={artifacts / 'v1.json'}"],
        admin_keys=[f"ops:{ADMIN_KEY}"],
        artifact_dir=artifacts,
        capture=["*"],
        store=f"sqlite:///{tmp_path / 'store.db'}",
        **overrides,
    )
    return ServerThread(create_app(settings))


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, list(args), env={"DSPY_SERVE_ADMIN_KEY": ADMIN_KEY}, catch_exceptions=False
    )
    return result.exit_code, result.output


def test_admin_and_compare_take_a_shadow_run_to_a_better_verdict_and_a_promotion(
    fake_lm: FakeLM, provider_key: str, artifacts: Path, tmp_path: Path
) -> None:
    server = served(fake_lm, artifacts, tmp_path).start()
    try:
        url = server.base_url
        code, said = cli("admin", url, "load", "qa", "v2", "v2.json")
        assert code == 0, said
        code, said = cli("admin", url, "shadow", "qa", "v2", "1.0")
        assert code == 0 and "v2" in said, said
        asked = 8
        call_ids = []
        for i in range(asked):
            response = httpx.post(
                f"{url}/qa/invoke", json={"inputs": {"question": f"Where? {i}"}}, timeout=30
            )
            assert response.json()["outputs"] == {"answer": "Paris"}  # the stable answer, always
            call_ids.append(response.json()["call_id"])
        store = f"sqlite:///{tmp_path / 'store.db'}"
        wait_for_rows(store, "SELECT call_id FROM calls WHERE shadow_of IS NOT NULL", asked)
        for call_id in call_ids:  # the users say the right answer was the candidate's
            rated = httpx.post(
                f"{url}/qa/feedback", json={"call_id": call_id, "outputs": {"answer": "Lyon"}}, timeout=30
            )
            assert rated.status_code == 200, rated.text
        code, said = cli("compare", url, "qa", "--since", "1h", "--min-sample", "5", "--json")
        report = json.loads(said)
        assert code == 0, said  # better
        assert report["verdict"] == "better" and report["paired"]["pairs"] >= asked, report
        assert (report["stable"], report["candidate"]) == ("v1", "v2")
        code, said = cli("admin", url, "promote", "qa", "v2")
        assert code == 0, said
        after = httpx.post(f"{url}/qa/invoke", json={"inputs": {"question": "Where?"}}, timeout=30)
        assert after.headers["x-program-version"] == "v2" and after.json()["outputs"] == {"answer": "Lyon"}
        code, said = cli("admin", url, "show", "qa", "--json")
        assert json.loads(said)["stable"] == "v2" and json.loads(said)["previous"] == ["v1"]
    finally:
        server.stop()


def test_a_failing_canary_is_rolled_back_on_its_own(
    fake_lm: FakeLM, provider_key: str, artifacts: Path, tmp_path: Path
) -> None:
    fake_lm.reset()
    fake_lm.answers = {"answer": "Paris"}
    fake_lm.when("[V2]", ServerError())
    server = served(fake_lm, artifacts, tmp_path, rollout_check_interval=0.3, compare_min_sample=10).start()
    try:
        url = server.base_url
        assert (
            httpx.post(
                f"{url}/admin/programs/qa/versions",
                json={"name": "v2", "artifact": "v2.json"},
                headers=ADMIN,
                timeout=30,
            ).status_code
            == 201
        )
        split = {"candidate": "v2", "weight": 50, "sticky": "header:X-User"}
        assert (
            httpx.put(f"{url}/admin/programs/qa/split", json=split, headers=ADMIN, timeout=30).status_code
            == 200
        )
        statuses = []
        deadline = time.monotonic() + 30
        state = {}
        while time.monotonic() < deadline:
            for user in range(10):
                response = httpx.post(
                    f"{url}/qa/invoke",
                    json={"inputs": {"question": "q"}},
                    headers={"X-User": f"u{user}-{len(statuses)}"},
                    timeout=30,
                )
                statuses.append((response.status_code, response.headers.get("x-program-version")))
            state = httpx.get(f"{url}/admin/programs/qa", headers=ADMIN, timeout=30).json()
            if state["candidate"] is None:
                break
        assert state["candidate"] is None and state["split"] is None and state["stable"] == "v1", state
        # The failures came from the candidate only, and the stable version answers everyone now.
        assert {version for status, version in statuses if status != 200} == {"v2"}
        assert (
            httpx.post(f"{url}/qa/invoke", json={"inputs": {"question": "q"}}, timeout=30).headers[
                "x-program-version"
            ]
            == "v1"
        )
    finally:
        server.stop()
        fake_lm.reset()


def test_sighup_reloads_a_changed_artifact_in_place_under_load(fake_lm: FakeLM, artifacts: Path) -> None:
    # Warnings only: nobody reads the command's output while it runs, and a full pipe would stall it.
    process, url = serve_qa(fake_lm, "--artifact", f"qa={artifacts / 'v1.json'}", "--log-level", "warning")
    try:
        require_answering(process, url, 1, 90)
        before = httpx.get(f"{url}/programs/qa", timeout=30).json()["versions"][0]["sha256"]
        with continuous_load(url) as load:
            write_artifact(artifacts / "v1.json", "V2")  # the file changes on disk: Lyon
            os.killpg(process.pid, signal.SIGHUP)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not (load.seen and load.seen[-1].answer == "Lyon"):
                time.sleep(0.05)
        assert load.errors == [] and load.failed == []
        assert load.unnamed() == []  # every answer named v1, the version's name
        answers = [s.answer for s in load.seen]
        assert answers[0] == "Paris" and answers[-1] == "Lyon", answers[-5:]
        after = httpx.get(f"{url}/programs/qa", timeout=30).json()["versions"][0]["sha256"]
        assert after != before
        assert process.poll() is None  # reloaded, not restarted
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=60)


def test_two_workers_agree_on_a_split_within_seconds(
    fake_lm: FakeLM, artifacts: Path, tmp_path: Path
) -> None:
    process, url = serve_qa(
        fake_lm,
        "--workers", "2",
        "--artifact", f"qa={artifacts / 'v1.json'}",
        "--artifact-dir", str(artifacts),
        "--store", f"sqlite:///{tmp_path / 'store.db'}",
        "--rollout-sync-interval", "0.5",
        "--log-level", "warning",
        DSPY_SERVE_ADMIN_KEYS=f"ops:{ADMIN_KEY}",
    )  # fmt: skip
    try:
        require_answering(process, url, 2, 120)
        loaded = httpx.post(
            f"{url}/admin/programs/qa/versions",
            json={"name": "v2", "artifact": "v2.json"},
            headers=ADMIN,
            timeout=30,
        )
        assert loaded.status_code == 201, loaded.text
        split = {"candidate": "v2", "weight": 50, "sticky": "header:X-User"}
        changed = time.monotonic()
        assert (
            httpx.put(f"{url}/admin/programs/qa/split", json=split, headers=ADMIN, timeout=30).status_code
            == 200
        )
        # Each worker's view (a new connection per probe lands on either): both reach the split.
        caught_up: dict[int, float] = {}
        while len(caught_up) < 2 and time.monotonic() - changed < 30:
            with httpx.Client(base_url=url, timeout=10) as http:
                pid = http.get("/health/live").json()["pid"]
                state = http.get("/admin/programs/qa", headers=ADMIN).json()
            if state["split"] is not None and pid not in caught_up:
                caught_up[pid] = time.monotonic() - changed
        assert len(caught_up) == 2, caught_up
        assert max(caught_up.values()) < 10  # measured: within two sync intervals (docs/versions.md)
        # Now each user gets one version, whichever worker answers.
        seen: dict[str, set[str]] = {}
        for n in range(80):
            user = f"user-{n % 16}"
            with httpx.Client(base_url=url, timeout=30) as http:  # a new connection: either worker
                response = http.post(
                    "/qa/invoke", json={"inputs": {"question": "q"}}, headers={"X-User": user}
                )
            assert response.status_code == 200
            seen.setdefault(user, set()).add(response.headers["x-program-version"])
        assert all(len(versions) == 1 for versions in seen.values()), seen
        assert {v for versions in seen.values() for v in versions} == {"v1", "v2"}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=60)
