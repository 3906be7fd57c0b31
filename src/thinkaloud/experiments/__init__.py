"""Experiments that run the pipeline end to end: the KL-factor sweep and the demo (calibrate, SFT, eval, RL, report)
with its findings and their verdicts."""
