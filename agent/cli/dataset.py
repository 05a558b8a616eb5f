"""``ccrl build-dataset``: captured traces → a new numbered dataset version (see
``ccrl.agent.datasets.datasets``). ``datasets`` is imported only when the command runs."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)


class Format(str, Enum):
    trajectory = "trajectory"
    workflow = "workflow"
    both = "both"


def _fail(message: str, code: int = 1) -> NoReturn:
    _err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def _summary(result: dict[str, Any]) -> None:
    stats = result["stats"]
    if result["created"]:
        _out.print(f"[green]dataset v{result['number']}[/green] written to {escape(result['path'])}")
    else:
        _out.print(f"no change since dataset v{result['number']} (same content hash): nothing new written; "
                   f"it is at {escape(result['path'])}")
    _out.print(f"traces seen {stats['traces_seen']}, kept {stats['traces_kept']}, "
               f"dropped {sum(stats['dropped'].values())}, bad input {sum(stats['bad_input'].values())}")
    table = Table("split", "sessions", "traces", "rows", "RL prompts", "decisions")
    for split, s in stats["splits"].items():
        rows = ", ".join(f"{k} {v}" for k, v in s["rows"].items()) or "0"
        table.add_row(split, str(s["sessions"]), str(s["traces"]), rows, str(s["rl_prompts"]),
                      str(s["next_action_decisions"]))
    _out.print(table)
    dropped = {k: v for k, v in stats["dropped"].items() if v}
    if dropped or stats["bad_input"]:
        detail = Table("dropped by", "traces")
        for name, count in dropped.items():
            detail.add_row(name, str(count))
        for reason, count in stats["bad_input"].items():
            detail.add_row(f"bad input: {reason}", str(count))
        _out.print(detail)
    _out.print(f"card: {escape(str(Path(result['path']) / 'README.md'))}")


def build_dataset_cmd(
    fmt: Format = typer.Option(None, "--format", help="Rows to write (default: the [dataset] format setting, 'both')."),
    out: Path = typer.Option(None, "--out", help="Write the version here instead of CCRL_HOME/datasets/v<N> (must be new or empty)."),
    force: bool = typer.Option(False, "--force", help="Record a new version even when nothing changed."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Build a new numbered dataset version from the captured traces.

    Writes the train/eval DatasetDict (datasets.save_to_disk), the RL prompt set, JSONL copies
    and a dataset card, and records the version in the store. When the traces and settings give
    exactly the rows of the latest version, nothing new is written and that version is reported.
    """
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.datasets.datasets import DatasetBuildError, build_dataset
    from ccrl.agent.training.trainer_lock import TrainerLockError, manual_trainer_lock

    settings = get_settings()
    try:
        # On a shared store the training agent numbers dataset versions too: never at once.
        with manual_trainer_lock(settings):
            result = build_dataset(settings, fmt=fmt.value if fmt else None, out=out, force=force)
    except TrainerLockError as exc:
        _fail(str(exc))
    except DatasetBuildError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"could not write the dataset: {exc}. Check free disk space and permissions of the data directory.")
    data = result.as_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        _summary(data)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the top-level app."""
    app.command("build-dataset")(build_dataset_cmd)
