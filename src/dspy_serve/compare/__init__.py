"""Comparing two versions of a program on live traffic (#27): the statistics (:mod:`.stats`), the
report over the store's captured calls and feedback (:mod:`.report`), and the automatic policy
that acts on its verdict (:mod:`.policy`).

It reads the store and nothing above it: the admin API serves the report, ``dspy-serve compare``
prints it.
"""
