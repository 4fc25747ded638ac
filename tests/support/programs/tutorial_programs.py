"""Programs written the way DSPy's tutorials write them (RAG, multi-hop, custom modules, tools,
two-model programs), adapted only to run offline: retrieval is a local function.

Each name here is a TARGET the end-to-end tests serve over real HTTP on the fake LM. (No
``from __future__ import annotations``: signatures such as ``dspy.Code["python"]`` are read at
class creation, as in the tutorials.)
"""

import base64
import warnings

import dspy
from pydantic import BaseModel

PASSAGES = [
    "Paris is the capital and largest city of France.",
    "The Eiffel Tower was completed in 1889.",
    "France is a country in Western Europe.",
]


def search(query: str, k: int = 3) -> list[str]:
    """A stand-in for a retriever (ColBERTv2, a vector store): the top-k passages."""
    return PASSAGES[:k]


# --- DSPy's intro RAG: returns the context it retrieved alongside the answer ---------------------
class RAG(dspy.Module):
    def __init__(self, num_docs: int = 3):
        super().__init__()
        self.num_docs = num_docs
        self.respond = dspy.ChainOfThought("context, question -> response")

    def forward(self, question):
        context = search(question, k=self.num_docs)
        prediction = self.respond(context=context, question=question)
        return dspy.Prediction(context=context, response=prediction.response)


rag = RAG()


# --- The multi-hop tutorial: notes accumulate over hops --------------------------------------------
class Hop(dspy.Module):
    def __init__(self, num_docs: int = 2, num_hops: int = 2):
        super().__init__()
        self.num_docs, self.num_hops = num_docs, num_hops
        self.generate_query = dspy.ChainOfThought("claim, notes -> query")
        self.append_notes = dspy.ChainOfThought(
            "claim, notes, context -> new_notes: list[str], titles: list[str]"
        )

    def forward(self, claim: str) -> list[str]:  # the tutorial's annotation; it returns a Prediction
        notes: list[str] = []
        titles: list[str] = []
        for _ in range(self.num_hops):
            query = self.generate_query(claim=claim, notes=notes).query
            context = search(query, k=self.num_docs)
            prediction = self.append_notes(claim=claim, notes=notes, context=context)
            notes.extend(prediction.new_notes)
            titles.extend(prediction.titles)
        return dspy.Prediction(notes=notes, titles=list(set(titles)))


multihop = Hop()


# --- forward(**kwargs): follows self.signature -----------------------------------------------------
class Summarize(dspy.Module):
    """Summarize a document in one sentence."""

    def __init__(self):
        super().__init__()
        self.signature = dspy.Signature("document -> summary", "Summarize a document in one sentence.")
        self.predict = dspy.ChainOfThought(self.signature)

    def forward(self, **kwargs):
        return self.predict(**kwargs)


summarize = Summarize()


class KwargsRAG(dspy.Module):
    """forward(**kwargs) that computes `context` itself: its first predictor's inputs are not its own."""

    def __init__(self):
        super().__init__()
        self.respond = dspy.ChainOfThought("context, question -> answer")

    def forward(self, **kwargs):
        context = search(kwargs["question"])
        return self.respond(context=context, **kwargs)


kwargs_rag = KwargsRAG()


class KwargsRAGWithSignature(KwargsRAG):
    """Declares self.signature, but does not follow it: it computes `context` itself."""

    def __init__(self):
        super().__init__()
        self.signature = self.respond.predict.signature

    def forward(self, **kwargs):
        context = search(kwargs["question"])
        return self.respond(context=context, **kwargs)


kwargs_rag_with_signature = KwargsRAGWithSignature()


# --- Nested outputs: a Prediction and a pydantic model inside the returned Prediction ---------------
class Source(BaseModel):
    title: str
    year: int


class DraftThenAnswer(dspy.Module):
    def __init__(self):
        super().__init__()
        self.draft = dspy.Predict("question -> answer")
        self.refine = dspy.Predict("question, draft -> answer")

    def forward(self, question: str):
        draft = self.draft(question=question)
        final = self.refine(question=question, draft=draft.answer)
        return dspy.Prediction(answer=final.answer, draft=draft, source=Source(title="Atlas", year=2024))


nested = DraftThenAnswer()


# --- DSPy types as outputs -------------------------------------------------------------------------
class WriteCode(dspy.Signature):
    """Write a Python function for the task."""

    task: str = dspy.InputField()
    code: dspy.Code["python"] = dspy.OutputField()  # noqa: F821 - a language, not a forward reference


write_code = dspy.ChainOfThought(WriteCode)

SILENT_WAV = base64.b64encode(b"RIFF$\x00\x00\x00WAVEfmt ").decode()


class Speak(dspy.Signature):
    """Write a short line and speak it."""

    topic: str = dspy.InputField()
    line: str = dspy.OutputField()
    audio: dspy.Audio = dspy.OutputField()


class Speaker(dspy.Module):
    """A text-to-speech program: the LM writes the line, a (local) synthesizer speaks it."""

    serve_signature = Speak

    def __init__(self):
        super().__init__()
        self.write = dspy.Predict("topic -> line")

    def forward(self, topic: str):
        line = self.write(topic=topic).line
        return dspy.Prediction(line=line, audio=dspy.Audio(data=SILENT_WAV, audio_format="wav"))


speaker = Speaker()


# --- LMs the program holds itself --------------------------------------------------------------------
class TwoModels(dspy.Module):
    """A cheap model drafts (called directly), a strong one answers (through dspy.context)."""

    def __init__(self):
        super().__init__()
        self.drafter = dspy.LM("openai/drafter-model", cache=True)
        self.strong = dspy.LM("openai/strong-model", cache=True)
        self.answer = dspy.Predict("question, draft -> answer")

    def forward(self, question: str):
        draft = self.drafter(f"Draft an answer to: {question}")[0]
        with dspy.context(lm=self.strong):
            return self.answer(question=question, draft=str(draft))


two_models = TwoModels()

REVIEWER = dspy.LM("openai/reviewer-model", cache=True)


class ModuleLevelLM(dspy.Module):
    """Uses an LM defined at module level, inside forward."""

    def __init__(self):
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question: str):
        with dspy.context(lm=REVIEWER):
            return self.answer(question=question)


module_level_lm = ModuleLevelLM()


# --- A program that returns a bare value ----------------------------------------------------------
class JustTheAnswer(dspy.Module):
    def __init__(self):
        super().__init__()
        self.predict = dspy.Predict("question -> answer")

    def forward(self, question: str) -> str:
        return self.predict(question=question).answer


bare = JustTheAnswer()


# --- Tools as inputs (DSPy's tools docs: the program proposes calls, the caller runs them) -------
class PlanToolCalls(dspy.Signature):
    """Decide which tools to call to answer the question."""

    question: str = dspy.InputField()
    tools: list[dspy.Tool] = dspy.InputField()
    outputs: dspy.ToolCalls = dspy.OutputField()


plan_tool_calls = dspy.Predict(PlanToolCalls)


# --- Image inputs, for per-item validation in a batch -----------------------------------------------
describe_image = dspy.Predict("image: dspy.Image -> caption")


# --- File inputs (DSPy 3.4's dspy.File): a named file is sent through DSPy's LiteLLM fallback -------
class SummarizeFile(dspy.Signature):
    """Summarize a document in one sentence."""

    document: dspy.File = dspy.InputField()
    summary: str = dspy.OutputField()


summarize_file = dspy.Predict(SummarizeFile)


# --- A program that breaks its own declared contract -------------------------------------------------
class CountLetters(dspy.Module):
    """Declares an integer, returns the LM's text: its outputs fail their own schema."""

    serve_signature = "word -> count: int"

    def __init__(self):
        super().__init__()
        self.predict = dspy.Predict("word -> count")

    def forward(self, word: str):
        return dspy.Prediction(count=self.predict(word=word).count)


broken_contract = CountLetters()


# --- A str output followed by a non-str one (the chat adapter's next marker must not leak) -----------
class Review(dspy.Signature):
    """Review a draft against its brief, then revise it."""

    draft: str = dspy.InputField()
    feedback: str = dspy.OutputField()
    matches: bool = dspy.OutputField()
    revised: str = dspy.OutputField()


review = dspy.Predict(Review)


# --- Audio built by forward itself, with no declared interface (a text-to-speech step) --------------
class Synthesize(dspy.Module):
    """The LM writes a line, a (local) synthesizer speaks it: the audio is no predictor's field."""

    def __init__(self):
        super().__init__()
        self.write = dspy.Predict("topic -> line")

    def forward(self, topic: str):
        line = self.write(topic=topic).line
        audio = dspy.Audio(data=SILENT_WAV, audio_format="wav")
        return dspy.Prediction(line=line, audio=audio)


synthesize = Synthesize()


# --- A DSPy built-in served directly, whose forward(completions, **kwargs) is untyped -------------------
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # DSPy's own class passes its deprecated `prefix`
    mcc = dspy.MultiChainComparison("question -> answer")
