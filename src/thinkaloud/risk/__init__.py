"""Choose the exit offset with a distribution-free guarantee: the ``risk`` job, Learn-then-Test statistics, the
per-offset losses (token or answer risk) and the risk figure and table."""
