"""The ceiling: the program called in-process with ``await program.acall(...)``, no HTTP.

    python -m bench.ceiling --program predict --api-base http://127.0.0.1:PORT/v1 \
        --concurrency 32 --warmup 2 --duration 8 --watch fake=1235

DSPy defaults: ``dspy.configure(lm=dspy.LM("openai/fake-model", api_base=..., api_key="x",
cache=False))``. ``--engine litellm`` swaps DSPy's native (lm15) engine for LiteLLM. Prints one
JSON :class:`bench.loop.Outcome`; the ``server`` CPU and RSS are this process's own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from bench.load import parse_watch, raise_fd_limit
from bench.loop import Outcome, Worker, closed_loop

__all__ = ["main", "run_ceiling"]

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch model metadata


class ProgramWorker:
    def __init__(self, program: Any, question: str) -> None:
        self._program = program
        self._question = question

    async def call(self) -> tuple[int, float | None]:
        try:
            await self._program.acall(question=self._question)
        except Exception:
            return 500, None
        return 200, None

    async def close(self) -> None:
        return None


async def run_ceiling(
    program_name: str,
    api_base: str,
    *,
    engine: str,
    model: str,
    concurrency: int,
    warmup: float,
    duration: float,
    watch: dict[str, int],
) -> Outcome:
    import dspy

    from bench.programs import QUESTION, build

    lm = dspy.LM(model, api_base=api_base, api_key="x", cache=False, engine=engine)
    dspy.configure(lm=lm)
    program = build(program_name)

    async def new_worker() -> Worker:
        return ProgramWorker(program, QUESTION)

    watch = {"server": os.getpid(), **watch}
    return await closed_loop(
        new_worker, concurrency=concurrency, warmup=warmup, duration=duration, watch=watch
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--program", default="predict", choices=["predict", "two_step"])
    parser.add_argument("--api-base", required=True, help="the fake LM, http://127.0.0.1:PORT/v1")
    parser.add_argument("--engine", default="auto", choices=["auto", "lm15", "litellm"])
    parser.add_argument("--model", default="openai/fake-model", help="the model name DSPy is given")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--watch", action="append", default=[], help="LABEL=PID to measure (repeatable)")
    args = parser.parse_args(argv)
    raise_fd_limit()
    outcome = asyncio.run(
        run_ceiling(
            args.program,
            args.api_base,
            engine=args.engine,
            model=args.model,
            concurrency=args.concurrency,
            warmup=args.warmup,
            duration=args.duration,
            watch=parse_watch(args.watch),
        )
    )
    json.dump(outcome.to_dict(), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
