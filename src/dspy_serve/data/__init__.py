"""The data loop: captured calls, their feedback, datasets from them (``load_examples``).

Capture is an observer of finished calls (:mod:`dspy_serve.serving.observers`), never a second
path: it queues what it keeps and a background task writes it to the store.
"""

from dspy_serve.data.examples import load_examples

__all__ = ["load_examples"]
