"""Evaluate a model: the ``eval`` job (generate with exits, score, run the measures, write records and a summary),
the model's lineage and leakage check, the offset it generates with, and speed against the base model."""
