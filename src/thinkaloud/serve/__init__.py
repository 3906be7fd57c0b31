"""Serve a model: ``chat`` in the terminal (tokens coloured by exit layer, streaming) and the lm-evaluation-harness
adapter (the ``thinkaloud`` model) that runs any lm-eval task with exits."""
