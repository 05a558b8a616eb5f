"""ccrl.agent: one package per stage, lowest first: core, store, capture, datasets, training,
evaluation, release, daemon, operations, cli (tests/test_architecture.py holds the order).

The agent owns all state. Trainers (ccrl.trainers) never touch the database: they take a
dataset and a config and return artifacts and metrics.
"""
