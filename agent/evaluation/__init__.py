"""Evaluation: scoring candidates, the deployment gate, A/B reports and their history."""
