"""The design most tutorials show: FastAPI, ``dspy.configure`` at import, the program called
synchronously from the route.

    BENCH_API_BASE=http://127.0.0.1:PORT/v1 uvicorn bench.baselines.naive_fastapi:app

- ``POST /async``: an ``async def`` route calling ``program(question=...)``. The sync LM call
  blocks the event loop, so the whole server handles one request at a time.
- ``POST /sync``: the same as a ``def`` route, which Starlette runs in its thread pool
  (anyio's default of 40 threads).

Body ``{"question": "..."}``, answer ``{"answer": "..."}``.
"""

from __future__ import annotations

import os

import dspy
from fastapi import FastAPI
from pydantic import BaseModel

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

dspy.configure(
    lm=dspy.LM(
        os.environ.get("BENCH_MODEL", "openai/fake-model"),
        api_base=os.environ["BENCH_API_BASE"],
        api_key=os.environ.get("OPENAI_API_KEY", "x"),
        cache=False,
    )
)
program = dspy.Predict("question -> answer")

app = FastAPI(title="naive DSPy service")


class Question(BaseModel):
    question: str


class Answer(BaseModel):
    answer: str


@app.post("/async")
async def answer_async(body: Question) -> Answer:
    return Answer(answer=program(question=body.question).answer)


@app.post("/sync")
def answer_sync(body: Question) -> Answer:
    return Answer(answer=program(question=body.question).answer)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
