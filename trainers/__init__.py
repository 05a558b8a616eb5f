"""ccrl.trainers: SFT, RL, reward, export and evaluation. Heavy imports load lazily."""
