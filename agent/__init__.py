"""ccrl.agent: configuration, the store, ingest, signals, datasets, the scheduler and the CLI.

The agent owns all state. Trainers (ccrl.trainers) never touch the database: they take a
dataset and a config and return artifacts and metrics.
"""
