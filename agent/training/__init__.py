"""Training runs: the agent's side of SFT and RL (run rows, resuming, the trainer lock)."""
