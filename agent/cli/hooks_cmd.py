"""``ccrl hooks install|uninstall|status``."""

from __future__ import annotations

import typer

app = typer.Typer(help="Install ccrl's capture hook into Claude Code settings.", no_args_is_help=True)
