"""Commands of the 'train' group (see agent/cli/__init__.py for the layout)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this group's commands to the top-level app."""
