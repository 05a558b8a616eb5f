"""ccrl.trainers: SFT, RL, reward, export and evaluation, and the conversation format and
behaviour signals that the agent shares with them. Heavy imports load lazily."""
