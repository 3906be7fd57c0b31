"""Measures of a model's generations: exit metrics, the calibration target, the coherence judge and its rubrics, and
the externalisation measures (reliance, future lens, fluency), behind one interface (``base.EvalContext``)."""
