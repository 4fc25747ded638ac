"""One optimization: load the program and the data, hold some out, score, optimize, score again,
write the artifact and its provenance."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dspy

from dspy_serve._version import VERSION
from dspy_serve.data.dataset import DataQuery
from dspy_serve.data.examples import aload_rows, example_of, read_rows
from dspy_serve.lm.registry import is_local_model
from dspy_serve.optimize.budget import BudgetExhausted, BudgetLM
from dspy_serve.optimize.gepa import feedback_metric, run_gepa, run_mipro
from dspy_serve.optimize.harvest import harvest
from dspy_serve.optimize.metric import field_match, load_metric
from dspy_serve.optimize.progress import SearchProgress
from dspy_serve.optimize.provenance import write_provenance
from dspy_serve.serving.programs import Program, load_programs
from dspy_serve.settings import ServeSettings

__all__ = ["OPTIMIZERS", "OptimizeJob", "run_optimization"]

OPTIMIZERS = ("harvest", "bootstrap", "mipro", "gepa")


@dataclass(frozen=True)
class OptimizeJob:
    target: str
    data: str  # "store:NAME" or an exported .jsonl file
    optimizer: str
    out: Path
    metric: str | None = None
    holdout: float = 0.2
    seed: int = 0
    max_demos: int = 4
    min_score: float | None = None
    since: float | None = None
    max_calls: int | None = None
    max_cost: float | None = None


@dataclass
class Outcome:
    artifact: Path
    provenance: Path
    rows: int
    train: int
    heldout: int
    score_before: float | None
    score_after: float | None
    demos: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None  # why the budget stopped it
    lm: BudgetLM | None = None
    search: SearchProgress | None = None  # what the optimizer's search did (not for harvest)


def run_optimization(
    settings: ServeSettings,
    job: OptimizeJob,
    step: Callable[[str], None] = lambda _: None,
    on_call: Any = None,
    on_search: Callable[[SearchProgress], None] = lambda _: None,
) -> Outcome:
    """Optimize ``job.target`` on its data and write the artifact and its provenance. ``step``
    hears each phase, ``on_call`` each LM call (the :class:`BudgetLM`), ``on_search`` each
    example scored and each candidate evaluated while the optimizer searches."""
    if job.optimizer not in OPTIMIZERS:
        raise ValueError(f"--optimizer {job.optimizer}: use one of {', '.join(OPTIMIZERS)}")
    settings, programs = load_programs(settings.model_copy(update={"programs": [job.target]}))
    program = next(iter(programs.values()))
    step(f"reading {job.data}")
    rows = _rows(settings, job, program.name)
    inputs = list(program.interface.inputs.model_fields)
    outputs = list(program.interface.outputs.model_fields)
    labelled = [row for row in rows if row.get("outputs") is not None or row.get("correction")]
    if not labelled:
        raise ValueError(f"{job.data}: no calls with outputs or corrections to learn from")
    order = list(range(len(labelled)))
    random.Random(job.seed).shuffle(order)
    held = round(len(order) * job.holdout) if len(order) >= 2 else 0
    held = max(held, 1) if job.holdout > 0 and len(order) >= 2 else held
    heldout_rows = [labelled[i] for i in order[:held]]
    train_rows = [labelled[i] for i in order[held:]]
    metric = load_metric(job.metric) if job.metric else field_match(outputs)
    lm = _lm(settings, job, on_call)
    devset = [example_of(row, inputs) for row in heldout_rows]
    outcome = Outcome(job.out, job.out, len(rows), len(train_rows), len(devset), None, None, lm=lm)
    student = program.loaded.module.deepcopy()
    with dspy.context(lm=lm, **_adapter(settings)):
        try:
            step("scoring the program as served on the held-out calls")
            outcome.score_before = _score(program.loaded.module, devset, metric, lm)
            step(f"optimizing with {job.optimizer} on {len(train_rows)} calls")
            if job.optimizer == "harvest":
                harvested = harvest(student, train_rows, max_demos=job.max_demos, min_score=job.min_score)
                outcome.demos = [{"predictor": d.predictor, "call_id": d.call_id} for d in harvested]
            else:
                outcome.search = search = SearchProgress(on_search)
                with dspy.context(callbacks=[*dspy.settings.get("callbacks", []), search]):
                    student = _search(
                        student, job, (train_rows, labelled), (inputs, outputs), devset, metric, lm, search
                    )
                outcome.demos = _bootstrapped_sources(student, train_rows)
                lm.check_exhausted()  # the demos found so far are kept
            step("scoring the optimized program on the held-out calls")
            outcome.score_after = _score(student, devset, metric, lm)
        except BudgetExhausted as exc:
            outcome.stopped = str(exc)
    _strip_call_ids(student)
    job.out.parent.mkdir(parents=True, exist_ok=True)
    student.save(str(job.out))
    outcome.provenance = write_provenance(job.out, _record(settings, job, program, rows, outcome))
    return outcome


def _search(
    student: dspy.Module,
    job: OptimizeJob,
    rows: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    fields: tuple[list[str], list[str]],
    devset: list[dspy.Example],
    metric: Any,
    lm: BudgetLM,
    search: SearchProgress,
) -> dspy.Module:
    """bootstrap, gepa or mipro on the training rows (``rows``: those and every labelled one;
    ``fields``: the inputs and the outputs), their metric counted by ``search``."""
    (train_rows, labelled), (inputs, outputs) = rows, fields
    if job.optimizer == "bootstrap":
        search.total = len(train_rows)  # one round: each training call scored at most once
        return _bootstrap(student, train_rows, inputs, search.counted(metric), job)
    trainset = [example_of(row, inputs) for row in train_rows]
    if job.optimizer == "gepa":
        gepa_metric = search.counted(feedback_metric(metric, labelled, outputs))
        return run_gepa(student, trainset, devset, gepa_metric, lm, job.seed, search=search)
    return run_mipro(student, trainset, search.counted(metric), job.max_demos, job.seed)


def _rows(settings: ServeSettings, job: OptimizeJob, name: str) -> list[dict[str, Any]]:
    if job.data.startswith("store:"):
        query = DataQuery(job.data.removeprefix("store:") or name, job.since)
        return asyncio.run(aload_rows(settings, query))
    path = Path(job.data)
    if not path.is_file():
        raise ValueError(f"--data {job.data}: no such file (or write store:NAME)")
    return list(read_rows(path))


def _lm(settings: ServeSettings, job: OptimizeJob, on_call: Any) -> BudgetLM:
    if settings.model is None:
        raise ValueError("optimize needs an LM: give --model (or a program file that configures one)")
    kwargs: dict[str, Any] = {"cache": False, "num_retries": settings.lm_retries}
    if settings.api_base:
        kwargs["api_base"] = settings.api_base
    if settings.temperature is not None:
        kwargs["temperature"] = settings.temperature
    model = settings.model
    if is_local_model(model):
        # The embedded model, in this process, as `run --model local` serves it.
        from dspy_serve.lm.local import local_engines

        model, kwargs["engine"], kwargs["async_engine"] = local_engines(
            None if model == "local" else model,
            max_tokens=settings.max_tokens or 256,
            runtime=settings.local_runtime,
        )
        kwargs["num_retries"] = 0
    elif settings.max_tokens is not None:
        kwargs["max_tokens"] = settings.max_tokens
    return BudgetLM(model, max_calls=job.max_calls, max_cost=job.max_cost, on_call=on_call, **kwargs)


def _adapter(settings: ServeSettings) -> dict[str, Any]:
    """The adapter ``run`` would serve with: JSON for the embedded model under ``auto``."""
    if settings.adapter == "json" or (settings.adapter == "auto" and is_local_model(settings.model)):
        return {"adapter": dspy.JSONAdapter()}
    if settings.adapter == "chat":
        return {"adapter": dspy.ChatAdapter()}
    return {}


def _score(module: dspy.Module, devset: list[dspy.Example], metric: Any, lm: BudgetLM) -> float | None:
    """The metric's mean over the held-out calls, in percent (None without any)."""
    if not devset:
        return None
    evaluate = dspy.Evaluate(devset=devset, metric=metric, num_threads=4, display_progress=False)
    result = evaluate(module)
    lm.check_exhausted()  # a refused call scored 0: the score would lie
    return float(result.score)


def _bootstrap(
    student: dspy.Module, rows: list[dict[str, Any]], inputs: list[str], metric: Any, job: OptimizeJob
) -> dspy.Module:
    trainset = [example_of(row, inputs) for row in rows]
    optimizer = dspy.BootstrapFewShot(
        metric=metric, max_bootstrapped_demos=job.max_demos, max_labeled_demos=job.max_demos, max_rounds=1
    )
    return optimizer.compile(student, trainset=trainset)


def _bootstrapped_sources(student: dspy.Module, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The call each demo came from: a labelled demo carries its call id; a bootstrapped one is
    found by the call inputs it repeats."""
    by_inputs = {_key(row.get("inputs") or {}): row["call_id"] for row in rows}
    sources = []
    for name, predictor in student.named_predictors():
        for demo in predictor.demos:
            fields = dict(demo.items())
            call_id = fields.get("call_id") or next(
                (cid for key, cid in by_inputs.items() if all(fields.get(k) == v for k, v in key)), None
            )
            sources.append({"predictor": name, "call_id": call_id})
    return sources


def _key(inputs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, v) for k, v in inputs.items() if isinstance(v, (str, int, float, bool))))


def _strip_call_ids(student: dspy.Module) -> None:
    """Demos keep the program's fields only (their calls are named in the provenance file)."""
    for _, predictor in student.named_predictors():
        predictor.demos = [
            dspy.Example(**{k: v for k, v in demo.items() if k != "call_id"}) for demo in predictor.demos
        ]


def _search_record(search: SearchProgress | None) -> dict[str, Any] | None:
    if search is None:
        return None
    return {
        "examples_scored": search.scored,
        "trials": search.trials,
        "best_score": search.best,
        "best_on_examples": search.best_of,
    }


def _record(
    settings: ServeSettings, job: OptimizeJob, program: Program, rows: list[dict[str, Any]], outcome: Outcome
) -> dict[str, Any]:
    snapshot = hashlib.sha256()
    for row in rows:
        snapshot.update(
            (json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        )
    lm = outcome.lm
    return {
        "artifact": str(job.out),
        "created_at": time.time(),
        "program": {"name": program.name, "target": job.target},
        "base_artifact_sha256": program.loaded.artifact.sha256 if program.loaded.artifact else None,
        "data": {
            "source": job.data,
            "since": job.since,
            "rows": len(rows),
            "snapshot_sha256": snapshot.hexdigest(),
        },
        "split": {"train": outcome.train, "heldout": outcome.heldout, "seed": job.seed},
        "optimizer": {
            "name": job.optimizer,
            "max_demos": job.max_demos,
            "min_score": job.min_score,
            "metric": job.metric or "field_match (default)",
        },
        "model": settings.model,
        "scores": {"before": outcome.score_before, "after": outcome.score_after},
        "search": _search_record(outcome.search),
        "budget": {
            "max_calls": job.max_calls,
            "max_cost": job.max_cost,
            "lm_calls": lm.calls if lm else 0,
            "tokens": lm.tokens if lm else 0,
            "cost_usd": lm.cost if lm else 0.0,
            "stopped": outcome.stopped,
        },
        "versions": {"dspy": dspy.__version__, "dspy_serve": VERSION},
        "demos": outcome.demos,
        "job": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(job).items()},
    }
