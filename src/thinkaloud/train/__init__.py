"""Training: Stage-1 calibration SFT and Stage-2 RL (leave-one-out REINFORCE with the exit penalty), their pure
loss functions, rollouts, held-out evaluation during RL, and checkpoints that resume."""
