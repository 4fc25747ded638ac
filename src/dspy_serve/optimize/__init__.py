"""Re-optimizing a served program on its captured calls: ``dspy-serve optimize``.

``harvest`` builds each predictor's demos from captured traces of well-rated calls (no LM
call); ``bootstrap`` runs DSPy's BootstrapFewShot. Either writes an artifact the server loads
with ``--artifact``, and a provenance file beside it naming the call each demo came from.
"""
