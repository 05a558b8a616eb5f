"""Core: settings, the lock files and logging every other part of the agent builds on."""
