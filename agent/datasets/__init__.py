"""Datasets: versioned train/eval splits built from stored traces."""
