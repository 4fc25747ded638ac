"""Programs in the style of DSPy's tutorials: agents (ReAct, ReActV2, RLM, Flex) with ordinary (blocking)
tools, BestOfN and Refine, ``dspy.Parallel`` inside a sync module, a sync custom module, and an
Audio input.

The tools block like the tutorials' ones do (``requests.get``, a database driver): the served
process must stay responsive while they run. ``TOOL_SECONDS`` and the events let tests time
and observe them.
"""

from __future__ import annotations

import threading
import time

import dspy

TOOL_SECONDS = 2.0
search_running = threading.Event()
searches_finished = threading.Event()


def search_wikipedia(query: str) -> list[str]:
    """Retrieve the top Wikipedia abstracts for a query."""
    search_running.set()
    try:
        time.sleep(TOOL_SECONDS)  # a blocking HTTP call, as in DSPy's agent tutorials
    finally:
        search_running.clear()
        searches_finished.set()
    return [f"{query}: Paris is the capital and largest city of France."]


def evaluate_math(expression: str) -> float:
    """Evaluate a sum of numbers, such as '2 + 3.5'."""
    return sum(float(term) for term in expression.split("+"))


async def lookup_population(city: str) -> int:
    """The population of a city (an async tool: it stays on the event loop)."""
    return 2_102_650 if city.lower() == "paris" else 0


# The ReAct tutorial's agent: sync tools, one of them slow.
agent = dspy.ReAct(
    "question -> answer", tools=[search_wikipedia, evaluate_math, lookup_population], max_iters=5
)


# DSPy 3.4's ReActV2: tool calls as dspy.ToolCalls, its outputs returned by its `submit` tool.
agent_v2 = dspy.ReActV2("question -> answer", tools=[search_wikipedia, lookup_population], max_iters=5)


# DSPy 3.4's RLM: the LM writes Python, which runs in a local interpreter process (no Deno here).
rlm = dspy.RLM("context, question -> answer", max_iters=3, interpreter_factory=dspy.LocalInterpreter)
# DSPy 3.4's Flex: code (a Predict until GEPA rewrites it) run in an interpreter; no predictor to see.
flex = dspy.Flex("question -> answer", interpreter_factory=dspy.LocalInterpreter)


class Researcher(dspy.Module):
    """A sync custom module around a ReAct agent: runs in a worker thread, async tool included."""

    def __init__(self) -> None:
        super().__init__()
        self.react = dspy.ReAct("question -> answer", tools=[lookup_population, evaluate_math], max_iters=4)

    def forward(self, question: str) -> dspy.Prediction:
        return self.react(question=question)


researcher = Researcher()


def one_word_answer(args: dict[str, object], pred: dspy.Prediction) -> float:
    """The reward of DSPy's BestOfN/Refine tutorial."""
    return 1.0 if len(str(pred.answer).split()) == 1 else 0.0


best_of_3 = dspy.BestOfN(
    module=dspy.ChainOfThought("question -> answer"), N=3, reward_fn=one_word_answer, threshold=1.0
)
refine = dspy.Refine(
    module=dspy.ChainOfThought("question -> answer"), N=3, reward_fn=one_word_answer, threshold=1.0
)


class Shout(dspy.Module):
    """Returns a bare string, with the output it declares."""

    serve_signature = "question -> answer"

    def __init__(self) -> None:
        super().__init__()
        self.qa = dspy.Predict("question -> answer")

    def forward(self, question: str) -> str:
        return str(self.qa(question=question).answer).upper()


shout = Shout()


class ParallelQA(dspy.Module):
    """A sync module that fans out with ``dspy.Parallel`` (threads DSPy starts itself)."""

    def __init__(self) -> None:
        super().__init__()
        self.qa = dspy.ChainOfThought("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        angles = [f"{question} (in one word)", f"{question} (in a sentence)", f"{question} (for a child)"]
        parallel = dspy.Parallel(num_threads=3, disable_progress_bar=True)
        results = parallel([(self.qa, {"question": angle}) for angle in angles])
        return dspy.Prediction(answer=" | ".join(str(r.answer) for r in results))


parallel_qa = ParallelQA()


RETRIEVE_SECONDS = 0.05


def retrieve(question: str) -> list[str]:
    """A sync retriever, as the RAG tutorial's ``search``."""
    time.sleep(RETRIEVE_SECONDS)
    return [f"Notes about {question}."]


class SyncRAG(dspy.Module):
    """The intro RAG without its ``context`` output: a sync-only custom module."""

    def __init__(self) -> None:
        super().__init__()
        self.respond = dspy.ChainOfThought("context, question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        return self.respond(context=retrieve(question), question=question)


sync_rag = SyncRAG()


class Transcribe(dspy.Signature):
    """Transcribe the audio clip."""

    clip: dspy.Audio = dspy.InputField()
    transcript: str = dspy.OutputField()


transcribe = dspy.Predict(Transcribe)
