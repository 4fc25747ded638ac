"""Retrieval-augmented QA over a small in-file corpus, in two LM steps.

Serve it with: dspy-serve run examples/rag.py:program --artifact examples/rag.json
"""

import re
from collections import Counter

import dspy

CORPUS = [
    "Mercury is the closest planet to the Sun and has no moons.",
    "Venus is the hottest planet, with a surface temperature of about 465 degrees Celsius.",
    "Earth is the only planet known to support life; it has one moon, called the Moon.",
    "Mars is called the Red Planet because iron oxide (rust) covers its surface.",
    "Mars has two small moons, Phobos and Deimos.",
    "Jupiter is the largest planet in the Solar System.",
    "Jupiter's Great Red Spot is a storm larger than Earth that has lasted for centuries.",
    "Saturn has the most extensive ring system, made mostly of ice.",
    "Saturn's largest moon, Titan, has a thick atmosphere and lakes of liquid methane.",
    "Uranus rotates on its side, with an axial tilt of about 98 degrees.",
    "Neptune has the strongest winds in the Solar System, up to 2,100 km/h.",
    "Pluto was reclassified as a dwarf planet in 2006.",
    "The Sun contains about 99.8 percent of the mass of the Solar System.",
    "Light from the Sun takes about 8 minutes and 20 seconds to reach Earth.",
    "The asteroid belt lies between the orbits of Mars and Jupiter.",
]

# fmt: off
STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "by", "called", "do", "does", "for", "from", "has", "have",
    "how", "in", "is", "it", "its", "of", "on", "or", "s", "that", "the", "to", "was", "what", "when",
    "where", "which", "who", "why", "with",
})
# fmt: on


def _terms(text: str) -> set[str]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {word.removesuffix("s") if len(word) > 3 else word for word in words} - STOPWORDS


_PASSAGE_TERMS = [_terms(passage) for passage in CORPUS]
# Rare terms count more: "rings" says more about a passage than "planet".
_DOC_FREQ = Counter(term for terms in _PASSAGE_TERMS for term in terms)


def retrieve(query: str, k: int = 3) -> list[str]:
    """The k passages sharing the most (rarity-weighted) terms with the query; ties keep corpus order."""
    wanted = _terms(query)
    scores = [sum(1 / _DOC_FREQ[term] for term in wanted & terms) for terms in _PASSAGE_TERMS]
    ranked = sorted(range(len(CORPUS)), key=lambda i: scores[i], reverse=True)
    return [CORPUS[i] for i in ranked[:k]]


class WriteQuery(dspy.Signature):
    """Write a short keyword search query to find the facts that answer the question."""

    question: str = dspy.InputField(desc="the user's question")
    query: str = dspy.OutputField(desc="a few keywords, e.g. 'Saturn largest moon'")


class AnswerFromContext(dspy.Signature):
    """Answer the question using only the facts in the context. Give a short answer, a few words."""

    context: list[str] = dspy.InputField(desc="facts retrieved from the corpus")
    question: str = dspy.InputField()
    answer: str = dspy.OutputField(desc="short answer taken from the context")


class RAG(dspy.Module):
    """Answer a question about the Solar System from a small built-in corpus of facts.

    A first step turns the question into a keyword search query, the best-matching facts are
    retrieved by keyword overlap, and a second step reasons over them to answer. The response
    includes the retrieved facts as `context`.
    """

    def __init__(self, k: int = 3):
        super().__init__()
        self.k = k
        self.write_query = dspy.Predict(WriteQuery)
        self.generate = dspy.ChainOfThought(AnswerFromContext)

    def search(self, query: str, question: str) -> list[str]:
        # Searching with the question as well keeps retrieval sane when a weak model writes a poor query.
        return retrieve(f"{query} {question}", self.k)

    def forward(self, question: str):
        query = self.write_query(question=question).query
        context = self.search(query, question)
        answer = self.generate(context=context, question=question).answer
        return dspy.Prediction(answer=answer, context=context)

    async def aforward(self, question: str):
        query = (await self.write_query.acall(question=question)).query
        context = self.search(query, question)
        answer = (await self.generate.acall(context=context, question=question)).answer
        return dspy.Prediction(answer=answer, context=context)


program = RAG()
