"""Top-level capture commands: ingest, import."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this group's commands to the top-level app (filled in by the capture work)."""
