"""Offline batch: one program over a file of rows, in-process or against a served program.

A front end like ``web/`` and ``interop/``: it turns rows of a file into program calls and their
results into lines of an output file, resumable after any stop.
"""

from dspy_serve.offline.results import ResultsFile
from dspy_serve.offline.rows import Row, count_rows, read_rows
from dspy_serve.offline.runner import BatchSummary, ItemOutcome, run_rows

__all__ = ["BatchSummary", "ItemOutcome", "ResultsFile", "Row", "count_rows", "read_rows", "run_rows"]
