"""Data: the tasks (GSM8K, reasoning-gym, theory of mind) with their scorers and splits, prompt rendering, the RL
environment of a task, and Stage-1 calibration (teacher rollouts and per-layer KL targets)."""
