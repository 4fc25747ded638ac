"""Command groups beside ``run``: ``store``, ``data`` and ``optimize`` (registered in cli.py).

They take the same settings as ``run`` (``--store``, ``--model``, ``--api-base``, ..., from
flags, the environment, ``.env`` or ``--config``), so the store and LM they use are the served ones.
"""
