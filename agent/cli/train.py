"""``ccrl train --phase sft [--from-base] [--quant auto|4bit|none] [--max-steps N] [--json]``;
``ccrl train --phase rl [--episodes N] [--num-generations G] [--algorithm grpo|rloo]`` (``--phase
ppo`` is the same: the RL phase runs GRPO, see ``ccrl.agent.training.rl_training``).

Trains on the newest dataset version (or ``--dataset-version``), records the run in the store,
and says which model it starts from and why. In a terminal transformers' progress bar shows
progress; otherwise one JSON line per logging step goes to stderr. ``--json`` prints the run
(row, metrics and artifact paths) on stdout. A run that was killed resumes on the next start.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)


def _fail(message: str, code: int = 1) -> NoReturn:
    _err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def _fmt_loss(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def _human_emit(event: dict[str, Any]) -> None:
    """Events in a terminal: the start model and why, notices, errors (progress is tqdm's bar)."""
    kind = event.get("event")
    if kind == "start" and event.get("phase") == "rl":
        _err.print(
            f"[bold]RL run {event['run_id']}[/bold] ({str(event['algorithm']).upper()}, {event['episodes']} episodes) "
            f"on dataset version {event['dataset_version']}\n"
            f"  start model: [cyan]{escape(str(event['base_model']))}[/cyan] ({escape(str(event['reason']))})\n"
            f"  output: {escape(str(event['output_dir']))}"
        )
    elif kind == "start":
        _err.print(
            f"[bold]SFT run {event['run_id']}[/bold] on dataset version {event['dataset_version']}\n"
            f"  base model: [cyan]{escape(str(event['base_model']))}[/cyan] ({escape(str(event['reason']))})\n"
            f"  output: {escape(str(event['output_dir']))}"
        )
    elif kind == "notice":
        _err.print(f"[yellow]note:[/yellow] {escape(str(event.get('message', '')))}")
    elif kind in ("train.progress", "train.start", "train.end"):
        _err.print(escape(json.dumps(event, default=str)))


def _fmt_reward(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _rl_summary(run: Any) -> None:
    metrics = run.metrics or {}
    artifacts = metrics.get("artifacts", {})
    table = Table(title=f"RL run {run.id} ({str(metrics.get('algorithm', 'grpo')).upper()}): {run.status}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("start model", run.base_model),
        ("device / quant", f"{metrics.get('device', '-')} / {metrics.get('quant', '-')}"),
        ("steps", f"{metrics.get('global_step', '-')} of {metrics.get('max_steps', '-')}"
                  + (f" (resumed from {metrics['resumed_from']})" if metrics.get("resumed_from") else "")),
        ("episodes", f"{metrics.get('episodes', '-')} prompts x {metrics.get('num_generations', '-')} completions "
                     f"({metrics.get('prompts', '-')} distinct prompts)"),
        ("held-out reward", f"{_fmt_reward(metrics.get('heldout_reward_before'))} before → "
                            f"{_fmt_reward(metrics.get('heldout_reward_after'))} after "
                            f"({metrics.get('heldout_prompts', 0)} prompts)"),
        ("training reward", f"{_fmt_reward(metrics.get('train_reward_first'))} first steps → "
                            f"{_fmt_reward(metrics.get('train_reward_last'))} last steps"),
        ("adapter", artifacts.get("adapter", "-")),
        ("merged model", artifacts.get("merged", "-")),
        ("reward curve", artifacts.get("reward_curve_png", "-")),
    ]
    for key, value in rows:
        table.add_row(key, escape(str(value)))
    _out.print(table)


def _summary(run: Any) -> None:
    if run.phase == "rl":
        _rl_summary(run)
        return
    metrics = run.metrics or {}
    artifacts = metrics.get("artifacts", {})
    table = Table(title=f"SFT run {run.id}: {run.status}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("base model", run.base_model),
        ("device / quant", f"{metrics.get('device', '-')} / {metrics.get('quant', '-')}"),
        ("steps", f"{metrics.get('global_step', '-')} of {metrics.get('max_steps', '-')}"
                  + (f" (resumed from {metrics['resumed_from']})" if metrics.get("resumed_from") else "")),
        ("examples", f"{metrics.get('train_examples', '-')} train, {metrics.get('eval_examples', '-')} eval"),
        ("eval loss", f"{_fmt_loss(metrics.get('eval_loss_before'))} before → {_fmt_loss(metrics.get('eval_loss_after'))} after"),
        ("train loss", _fmt_loss(metrics.get("train_loss"))),
        ("tokens/s", f"{metrics['tokens_per_second']:.0f}" if metrics.get("tokens_per_second") else "-"),
        ("adapter", artifacts.get("adapter", "-")),
        ("merged model", artifacts.get("merged", "-")),
        ("loss curve", artifacts.get("loss_curve_png", "-")),
    ]
    for key, value in rows:
        table.add_row(key, escape(str(value)))
    _out.print(table)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the top-level app."""

    @app.command("train")
    def train(
        phase: str = typer.Option("sft", "--phase", help="Training phase: sft, or rl (GRPO; also accepted as ppo)."),
        from_base: bool = typer.Option(False, "--from-base", help="Start from the base model, not the accepted (deployed) one."),
        quant: str = typer.Option("auto", "--quant", help="auto (4-bit QLoRA on CUDA, LoRA on CPU), 4bit (CUDA only) or none."),
        max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Stop after this many optimizer steps."),
        base_model: str | None = typer.Option(
            None, "--base-model",
            help="Hugging Face id or local folder of the base model (implies starting from it); 'smollm2' = the embedded default.",
        ),
        dataset_version: int | None = typer.Option(None, "--dataset-version", help="Dataset version number (default: the newest)."),
        no_resume: bool = typer.Option(False, "--no-resume", help="Abandon an interrupted run instead of resuming it."),
        wait: bool = typer.Option(False, "--wait", help="Wait while the agent (or another command) holds the pipeline, or another machine's agent trains on the shared store."),
        json_out: bool = typer.Option(False, "--json", help="Print the run as JSON on stdout."),
        episodes: int | None = typer.Option(
            None, "--episodes", min=1, help="RL: prompts to train on, each with --num-generations completions "
            "(default: \\[train] num_episodes, 100)."),
        num_generations: int | None = typer.Option(
            None, "--num-generations", min=2, help="RL: completions per prompt (default: 8 on CUDA, 4 on a CPU)."),
        algorithm: str | None = typer.Option(None, "--algorithm", help="RL: grpo (default) or rloo."),
    ) -> None:
        """Fine-tune the local model on the newest dataset version (resumes an interrupted run).

        --phase sft: supervised fine-tuning (LoRA; 4-bit QLoRA on CUDA) on Claude's workflows.

        --phase rl (also accepted as --phase ppo, the original design's name) refines the latest SFT model against the behavioural reward with GRPO: PPO's clipped objective with group-relative advantages instead of a value model.

        Why not PPO: TRL 1.16, which ccrl trains with, has no PPO trainer (it was removed in 1.13), and GRPO needs no value network to train and hold in memory. --algorithm rloo selects RLOO instead.
        """
        from ccrl.agent.core.config import get_settings
        from ccrl.agent.core.lock import LockBusy, manual_command
        from ccrl.agent.training.trainer_lock import TrainerLockError, manual_trainer_lock
        from ccrl.agent.training.training import PHASES, TrainingError, run_json, run_training

        if phase == "ppo":
            phase = "rl"  # the original design's name; the phase runs GRPO (see --help)
        if phase not in PHASES:
            _fail(f"unknown or unavailable phase {phase!r}; available: {', '.join(PHASES)} (ppo = rl)", 2)
        options: dict[str, Any] = {}
        for flag, key, value in (("--episodes", "episodes", episodes), ("--num-generations", "num_generations", num_generations),
                                 ("--algorithm", "algorithm", algorithm)):
            if value is not None:
                if phase != "rl":
                    _fail(f"{flag} applies to --phase rl only", 2)
                options[key] = value
        if algorithm is not None and algorithm not in ("grpo", "rloo"):
            _fail(f"--algorithm must be grpo or rloo (got {algorithm!r})", 2)
        if quant not in ("auto", "4bit", "none"):
            _fail(f"--quant must be auto, 4bit or none (got {quant!r})", 2)
        settings = get_settings()
        dataset_version_id = None
        if dataset_version is not None:
            dataset_version_id = _dataset_version_id(settings, dataset_version)

        from ccrl.trainers.progress import is_terminal, json_line_emitter

        terminal = is_terminal()
        emit = _human_emit if terminal else json_line_emitter()
        try:
            # The pipeline lock keeps this machine's agent out; on a shared store the trainer
            # lock keeps every other machine's training agent out too.
            with manual_command(f"ccrl train --phase {phase}", wait=wait, home=settings.home), \
                    manual_trainer_lock(settings, wait=wait):
                run = run_training(
                    phase, dataset_version_id=dataset_version_id, from_base=from_base, quant=quant,
                    max_steps=max_steps, base_model=base_model, resume=not no_resume, settings=settings,
                    emit=emit, progress_bar=terminal, **({"options": options} if options else {}),
                )
        except LockBusy as busy:
            _fail(f"{busy}; try again later or pass --wait")
        except TrainerLockError as exc:
            _fail(str(exc))
        except TrainingError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail(f"interrupted; run `ccrl train --phase {phase}` again to resume from the last checkpoint", 130)
        if json_out:
            typer.echo(json.dumps(run_json(run), indent=2, default=str))
        else:
            _summary(run)


def _dataset_version_id(settings: Any, number: int) -> int:
    from sqlmodel import select

    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import DatasetVersion

    with session_scope(settings) as session:
        version = session.exec(select(DatasetVersion).where(DatasetVersion.number == number)).first()
        if version is None:
            _fail(f"dataset version {number} does not exist")
        return int(version.id)
