"""``ccrl traces list|show``."""

from __future__ import annotations

import typer

app = typer.Typer(help="Look at captured traces.", no_args_is_help=True)
