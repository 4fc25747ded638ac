"""``dspy-serve data`` and ``store`` on a real store: export filters and formats, stats, and deleting a
user's data naming the artifacts it reached."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dspy_serve.cli import main, run_command
from dspy_serve.settings import ServeSettings
from dspy_serve.store import Store, store_url
from dspy_serve.store.calls import insert_calls
from dspy_serve.store.feedback import upsert_feedback
from tests.support.migrations import newest_revision
from tests.support.stores import call_row, read_store

DAY = 86400.0


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def fill(url: str) -> None:
    """Five calls of qa over three days: rated, corrected, failed, unrated; one of kitchen."""
    now = time.time()

    async def write() -> None:
        store = await Store.open(store_url(ServeSettings(store=url)))
        try:
            await insert_calls(
                store,
                [
                    call_row("old", created_at=now - 3 * DAY, key_name="alice"),
                    call_row("good", created_at=now - DAY, key_name="alice"),
                    call_row("fixed", created_at=now - 60, key_name="bob"),
                    call_row("failed", created_at=now - 30, outputs=None, error_code="upstream_error"),
                    call_row("plain", created_at=now - 10),
                    call_row("k1", program="kitchen", created_at=now),
                ],
            )
            await upsert_feedback(store, "good", "alice", score=1.0, outputs=None, comment=None)
            await upsert_feedback(store, "fixed", "bob", score=0.0, outputs={"answer": "Lima"}, comment="no")
        finally:
            await store.close()

    asyncio.run(write())


def exported(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_writes_labelled_calls_and_filters_them(store_url: str, tmp_path: Path) -> None:
    fill(store_url)
    every, recent, rated, corrected = (tmp_path / f"{n}.jsonl" for n in ("all", "recent", "rated", "fixed"))
    cli("data", "export", "qa", "--store", store_url, "--out", str(every))
    cli("data", "export", "qa", "--store", store_url, "--out", str(recent), "--since", "2d")
    cli("data", "export", "qa", "--store", store_url, "--out", str(rated), "--min-score", "0.5")
    cli("data", "export", "qa", "--store", store_url, "--out", str(corrected), "--corrected-only")
    # A failed call with no correction has no label: it is not a row.
    assert [row["call_id"] for row in exported(every)] == ["old", "good", "fixed", "plain"]
    assert [row["call_id"] for row in exported(recent)] == ["good", "fixed", "plain"]
    assert [row["call_id"] for row in exported(rated)] == ["good"]
    [fixed] = exported(corrected)
    assert (fixed["correction"], fixed["score"], fixed["comment"]) == ({"answer": "Lima"}, 0.0, "no")
    assert fixed["outputs"] == {"answer": "answer fixed"}  # what was served stays beside the label


def test_an_export_is_a_snapshot_that_the_same_data_reproduces(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    fill(url)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    cli("data", "export", "qa", "--store", url, "--out", str(first))
    cli("data", "export", "qa", "--store", url, "--out", str(second))
    manifests = [json.loads(Path(f"{path}.manifest.json").read_text()) for path in (first, second)]
    assert manifests[0]["sha256"] == manifests[1]["sha256"] and manifests[0]["rows"] == 4
    assert manifests[0]["query"] == {
        "program": "qa",
        "since": None,
        "min_score": None,
        "corrected_only": False,
    }


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed")
def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    fill(url)
    out = tmp_path / "x.parquet"
    result = CliRunner().invoke(
        main, ["data", "export", "qa", "--store", url, "--format", "parquet", "--out", str(out)]
    )
    assert result.exit_code == 2 and "dspy-serve[parquet]" in result.output


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow is not installed")
def test_parquet_holds_the_same_rows(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    url = f"sqlite:///{tmp_path / 'store.db'}"
    fill(url)
    cli("data", "export", "qa", "--store", url, "--format", "parquet", "--out", str(tmp_path / "x.parquet"))
    table = pq.read_table(tmp_path / "x.parquet")
    assert table.column("call_id").to_pylist() == ["old", "good", "fixed", "plain"]


def test_stats_count_by_program_version_and_day(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    fill(url)
    lines = cli("data", "stats", "--store", url).splitlines()
    assert lines[0].split() == [
        "program",
        "version",
        "day",
        "calls",
        "errors",
        "rated",
        "mean",
        "score",
        "corrected",
    ]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert [line.split()[2:] for line in lines[1:] if line.startswith("qa") and today in line] == [
        [today, "3", "1", "1", "0.00", "1"]
    ]
    assert len([line for line in lines if line.startswith("kitchen")]) == 1


def test_deleting_a_users_calls_names_the_artifacts_whose_demos_came_from_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    fill(url)
    record = {"artifact": "qa-v2.json", "demos": [{"predictor": "self", "call_id": "good"}]}
    (tmp_path / "qa-v2.provenance.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)
    said = cli("data", "delete", "--key", "alice", "--store", url)
    assert "deleted 2 calls" in said and "qa-v2.json has demos from 1 of them" in said
    assert {row["call_id"] for row in read_store(url, "SELECT call_id FROM calls")} == {
        "fixed", "failed", "plain", "k1"
    }  # fmt: skip
    assert "deleted 1 calls" in cli("data", "delete", "--call", "fixed", "--store", url)
    assert read_store(url, "SELECT * FROM feedback") == []
    refused = CliRunner().invoke(main, ["data", "delete", "--store", url])
    assert refused.exit_code == 2 and "exactly one of --call ID and --key NAME" in refused.output


def test_store_migrate_creates_the_schema_and_says_so(store_url: str) -> None:
    said = cli("store", "migrate", "--store", store_url)
    assert said.strip().endswith(f"empty -> {newest_revision()}")
    assert (
        cli("store", "migrate", "--store", store_url)
        .strip()
        .endswith(f"{newest_revision()} -> {newest_revision()}")
    )


def test_capture_alone_means_every_program_and_with_a_name_that_program() -> None:
    alone = run_command.make_context("run", ["x.py:p", "--capture", "--capture-rate", "0.5"])
    named = run_command.make_context("run", ["--capture", "qa", "--capture", "kitchen", "x.py:p"])
    assert alone.params["capture"] == ("*",) and alone.params["capture_rate"] == 0.5
    assert named.params["capture"] == ("qa", "kitchen")


def test_the_store_comes_from_the_environment_or_the_config_file_as_for_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    fill(url)
    monkeypatch.setenv("DSPY_SERVE_STORE", url)
    assert "kitchen" in cli("data", "stats")
    monkeypatch.delenv("DSPY_SERVE_STORE")
    config = tmp_path / "serve.toml"
    config.write_text(f'store = "{url}"\n')
    assert "kitchen" in cli("data", "stats", "--config", str(config))
    wrong = CliRunner().invoke(main, ["data", "stats", "--store", "mysql://x/y"])
    assert wrong.exit_code == 2 and "sqlite:///path.db" in wrong.output


def test_several_processes_migrating_one_store_at_once_all_succeed(store_url: str) -> None:
    import subprocess

    from tests.support.cli import CLI, cli_env

    processes = [
        subprocess.Popen(
            [*CLI, "store", "migrate", "--store", store_url],
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(6)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * 6, outputs
    assert all(output.strip().endswith(f"-> {newest_revision()}") for output in outputs), outputs
