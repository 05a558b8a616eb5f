"""``ccrl eval`` (offline evaluation and the deployment gate) and ``ccrl ab`` (blind A/B).

``ccrl eval [--version N | --run ID] [--fold test|dev|all] [--json]`` measures the candidate (a model version, or a
training run not exported yet; default: the newest version, else the newest finished run) on
its dataset version's held-out split, together with the base model, the learn-nothing
baselines and the deployed version, and applies the gate (``ccrl.agent.evaluation.gate``). It prints a
table of every metric with its interval, the gate's verdict, and saves a plot of every metric
across versions as PNG. The test fold is the default; the dev fold is for choosing settings.

``ccrl eval --sessions DIR [--max-decisions N] [--seed S]`` scores the candidate, its base and the
baselines on transcripts the store has never seen (``ccrl.agent.evaluation.eval_sessions``).

``ccrl ab`` shows held-out prompts with two anonymised plans and records which one you take for
Claude's; ``ccrl ab report`` shows how often people guess wrong, per version, with the
automatic two-sample check.
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)

SUBJECT_ORDER = ("base", "most_frequent", "bigram", "deployed", "rl-parent", "candidate", "candidate-gguf")
SUBJECT_TITLES = {"base": "base model", "most_frequent": "most-frequent", "bigram": "bigram", "deployed": "deployed",
                  "rl-parent": "SFT parent", "candidate": "candidate (HF)", "candidate-gguf": "candidate (GGUF)"}
METRIC_ROWS = (
    ("next_action", "next-action agreement ★"),
    ("tool_name", "tool name"),
    ("arguments", "arguments"),
    ("decision", "stop-or-call decision"),
    ("plan_edit_distance", "plan edit distance ↓"),
    ("plan_precision", "plan precision"),
    ("plan_recall", "plan recall"),
    ("plan_format", "well-formed plans"),
    ("reward", "behavioural reward"),
)


def _fail(message: str, code: int = 1) -> NoReturn:
    _err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    text = f"{entry['value']:.3f}"
    if entry.get("low") is not None and entry.get("high") is not None:
        text += f"\n[dim][{entry['low']:.2f}, {entry['high']:.2f}][/dim]"
    return text


def _target(settings: Any, version: int | None, run: int | None) -> tuple[int | None, int | None]:
    """(model_version_id, training_run_id) of what to evaluate."""
    from sqlmodel import col, select

    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import ModelVersion, TrainingRun

    with session_scope(settings) as session:
        if version is not None:
            row = session.exec(select(ModelVersion).where(ModelVersion.number == version)).first()
            if row is None:
                _fail(f"there is no model version {version} (`ccrl models list` shows them)")
            return row.id, None
        if run is not None:
            row = session.get(TrainingRun, run)
            if row is None:
                _fail(f"there is no training run {run}")
            if row.status != "completed":
                _fail(f"training run {run} is {row.status}: only a finished run can be evaluated")
            return None, row.id
        newest = session.exec(select(ModelVersion).order_by(col(ModelVersion.number).desc())).first()
        if newest is not None:
            return newest.id, None
        finished = session.exec(select(TrainingRun).where(TrainingRun.status == "completed")
                                .order_by(col(TrainingRun.id).desc())).first()
        if finished is None:
            _fail("there is no trained model to evaluate yet: run `ccrl train` first")
        return None, finished.id


def _progress() -> Any:
    def emit(event: dict[str, Any]) -> None:
        if event.get("event") == "eval.start":
            _err.print(f"evaluating [cyan]{escape(str(event['subject']))}[/cyan] ({escape(str(event['model']))}): "
                       f"{event['total']} generations")
        elif event.get("event") == "eval.progress" and (event["done"] == event["total"] or event["done"] % 10 == 0):
            _err.print(f"  {event['subject']}: {event['done']}/{event['total']}")

    return emit


def _show(report: dict[str, Any], plot: str | None) -> None:
    subjects = [s for s in SUBJECT_ORDER if s in report["subjects"]]
    what = (f"model version {report['model_version']}" if report.get("model_version") is not None
            else f"training run {report['training_run_id']}")
    counts = next(iter(report["subjects"].values()))["metrics"].get("counts", {}) if report["subjects"] else {}
    table = Table(title=f"{what} ({report['phase']}) on dataset v{report['dataset_version']}'s held-out split",
                  caption=f"{counts.get('decisions', 0)} decisions from {counts.get('eval_traces', 0)} held-out traces"
                          f" ({counts.get('decisions_too_long', 0)} longer prefixes left out), "
                          f"{counts.get('plans', 0)} plans; {report.get('fold', 'all')} fold; value and 95% interval "
                          f"({report.get('interval_method') or 'Wilson score'}); ★ primary, ↓ lower is better")
    table.add_column("metric", style="bold", no_wrap=True)
    for subject in subjects:
        table.add_column(SUBJECT_TITLES.get(subject, subject), justify="right")
    for key, title in METRIC_ROWS:
        table.add_row(title, *[_cell(report["subjects"][s]["metrics"].get(key)) for s in subjects])
    _out.print(table)
    verdict = "[green]PASSED[/green]" if report["passed"] else "[red]FAILED[/red]"
    _out.print(f"gate: {verdict} (judged: {report['judged']}) — {escape(report['reason'])}")
    for check in report["checks"]:
        mark = "[green]✓[/green]" if check["passed"] else "[red]✗[/red]"
        _out.print(f"  {mark} {escape(check['name'])}: {escape(check['detail'])}")
    for name, diff in report.get("paired", {}).items():
        if diff.get("low") is not None:
            _out.print(f"  [dim]paired difference vs {name}: {diff['value']:+.3f} [{diff['low']:+.2f}, {diff['high']:+.2f}] "
                       f"over {diff['n']} decisions ({diff.get('method', 'bootstrap')})[/dim]")
    for name, error in report.get("errors", {}).items():
        _out.print(f"[yellow]not measured:[/yellow] {escape(name)}: {escape(error)}")
    for note in report.get("notes", []):
        _out.print(f"[yellow]note:[/yellow] {escape(note)}")
    if plot:
        _out.print(f"plot of every metric across versions: {escape(plot)}")


def _show_sessions(report: dict[str, Any]) -> None:
    subjects = [s for s in ("base", "most_frequent", "bigram", "candidate") if s in report["models"]]
    cand = report["candidate"]
    what = f"model version {cand['version']}" if cand["version"] is not None else f"training run {cand['run']}"
    for chain, title in ((None, "all decisions"), ("main", "main chain"), ("subagent", "subagents")):
        block = report if chain is None else report["chains"][chain]
        if chain is not None and not block["decisions"]:
            continue
        table = Table(title=f"{what} ({cand['form']}) on {block['decisions']} decisions from {block['sessions']} "
                            f"unseen sessions: {title}",
                      caption=f"value and 95% interval ({report['interval_method']})")
        table.add_column("metric", style="bold", no_wrap=True)
        for subject in subjects:
            table.add_column(SUBJECT_TITLES.get(subject, subject), justify="right")
        for key, label in METRIC_ROWS[:3]:
            table.add_row(label, *[_cell(block["models"][s][key]) for s in subjects])
        _out.print(table)
    for name, diff in report["paired"].items():
        interval = (f" [{diff['low']:+.2f}, {diff['high']:+.2f}]" if diff.get("low") is not None else "")
        _out.print(f"paired {name.replace('_vs_', ' vs ')}: {diff['diff']:+.3f}{interval} over {diff['n']} decisions")
    _out.print(f"sessions: {report['sessions_found']} found, {report['sessions_opted_out']} opted out, "
               f"{report['excluded_seen']} excluded as seen in training, {report['sessions_purged']} purged; "
               f"skipped decisions: {report['skipped'] or 'none'}")
    for name, error in report.get("errors", {}).items():
        _out.print(f"[yellow]not measured:[/yellow] {escape(name)}: {escape(error)}")


def _eval_sessions(settings: Any, folder: str, version: int | None, run: int | None, json_out: bool,
                   **sizes: Any) -> None:
    from ccrl.agent.evaluation.eval_sessions import SessionsEvalError, evaluate_sessions

    version_id, run_id = _target(settings, version, run)
    try:
        report = evaluate_sessions(folder, version_id=version_id, run_id=run_id, settings=settings,
                                   progress=_progress(), **sizes)
    except SessionsEvalError as exc:
        _fail(str(exc))
    except ModuleNotFoundError as exc:
        _fail(f"evaluation needs the '{exc.name}' package: pip install 'ccrl[train]'")
    if json_out:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        _show_sessions(report)


def eval_command(
    version: int | None = typer.Option(None, "--version", help="Model version number (default: the newest)."),
    run: int | None = typer.Option(None, "--run", help="A finished training run not exported yet."),
    sessions: str | None = typer.Option(
        None, "--sessions", metavar="DIR",
        help="Score on Claude Code transcripts under DIR (the `ccrl import` layout) instead of the held-out split; "
             "nothing is written to the store."),
    max_decisions: int = typer.Option(300, "--max-decisions", min=1, help="With --sessions: decisions scored at most "
                                                                          "(a seeded sample when there are more)."),
    seed: int = typer.Option(0, "--seed", help="With --sessions: seed of the sample and the bootstrap."),
    max_prompt_tokens: int | None = typer.Option(
        None, "--max-prompt-tokens", min=64,
        help="With --sessions: each decision's prompt window in tokens (default: [eval] max_prompt_tokens); "
             "its prefill is most of the time on a CPU."),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", min=8,
        help="With --sessions: tokens a model may write per decision (default: [eval] decision_max_new_tokens)."),
    fold: str | None = typer.Option(None, "--fold", help="Held-out fold: test (default; reported figures and the gate), "
                                                         "dev (for choosing settings) or all."),
    wait: bool = typer.Option(False, "--wait", help="Wait while the agent (or another command) holds the pipeline."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Evaluate a model on the held-out split against the base, the baselines and the deployed
    version, and apply the deployment gate (recorded on the version); or, with --sessions, on
    transcripts the store has never seen (no gate, nothing recorded)."""
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.core.lock import LockBusy, manual_command
    from ccrl.agent.evaluation.eval_history import history, plot_history
    from ccrl.agent.evaluation.gate import GateError, evals_dir, evaluate_candidate

    if version is not None and run is not None:
        _fail("give --version or --run, not both", 2)
    if fold is not None and fold not in ("test", "dev", "all"):
        _fail(f"unknown fold {fold!r}: use test, dev or all", 2)
    if sessions is not None and fold is not None:
        _fail("--fold chooses held-out sessions of the dataset; --sessions reads other sessions: give one", 2)
    settings = get_settings()
    from ccrl.agent.core.logging_setup import configure_logging

    # The gate logs its decision: to stderr (the process's own), never into --json's stdout.
    configure_logging(settings.agent.log_level, stream=sys.__stderr__)
    if sessions is not None:
        _eval_sessions(settings, sessions, version, run, json_out, max_decisions=max_decisions, seed=seed,
                       max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens)
        return
    version_id, run_id = _target(settings, version, run)
    try:
        with manual_command("ccrl eval", wait=wait, home=settings.home):
            report = evaluate_candidate(version_id, training_run_id=run_id, settings=settings, progress=_progress(),
                                        fold=fold or "test")
    except LockBusy as busy:
        _fail(f"{busy}; try again later or pass --wait")
    except GateError as exc:
        _fail(str(exc))
    except ModuleNotFoundError as exc:
        _fail(f"evaluation needs the '{exc.name}' package: pip install 'ccrl[train]'")
    plot = None
    try:
        plot = str(plot_history(history(settings), evals_dir(settings) / "metrics.png"))
    except ModuleNotFoundError as exc:
        _err.print(f"[yellow]note:[/yellow] no plot: the '{exc.name}' package is missing (pip install 'ccrl[train]')")
    if json_out:
        typer.echo(json.dumps({**report, "plot": plot}, indent=2, default=str))
    else:
        _show(report, plot)


ab_app = typer.Typer(help="Blind A/B: tell Claude's plan from the local model's.", no_args_is_help=False)


@ab_app.callback(invoke_without_command=True)
def ab_command(
    ctx: typer.Context,
    version: int | None = typer.Option(None, "--version", help="Model version whose plans to show (default: the newest evaluated)."),
    run: int | None = typer.Option(None, "--run", help="Training run whose plans to show."),
    count: int = typer.Option(10, "--count", min=1, help="Pairs to show at most."),
    seed: int | None = typer.Option(None, "--seed", hidden=True, help="Seed of the order (tests)."),
) -> None:
    """Show held-out prompts with two plans in random order; record which you take for Claude's."""
    if ctx.invoked_subcommand is not None:
        return
    from ccrl.agent.evaluation.ab import ABError, ab_items, record_vote
    from ccrl.trainers.ab import blind_pair

    try:
        items = ab_items(version_number=version, run_id=run)
    except ABError as exc:
        _fail(str(exc))
    rng = random.Random(seed)
    shown = 0
    recorded = 0
    for item in items[:count]:
        pair = blind_pair(item.claude_plan, item.model_plan, rng)
        shown += 1
        _out.rule(f"pair {shown} of {min(count, len(items))}")
        _out.print(Panel(escape(item.prompt), title="prompt", title_align="left"))
        _out.print(Panel(escape(pair.first), title="plan 1", title_align="left"))
        _out.print(Panel(escape(pair.second), title="plan 2", title_align="left"))
        started = time.monotonic()
        while True:
            try:
                answer = typer.prompt("Which plan is Claude's? [1/2, s = skip, q = quit]").strip().lower()
            except typer.Abort:
                answer = "q"
            if answer in ("1", "2", "s", "q"):
                break
            _err.print("answer 1, 2, s or q")
        if answer == "q":
            break
        if answer == "s":
            continue
        record_vote(item, claude_position=pair.claude_position, guess=int(answer),
                    seconds=round(time.monotonic() - started, 1))
        recorded += 1
        _out.print("vote recorded")
    _out.print(f"{recorded} vote(s) recorded. `ccrl ab report` shows how often people guess wrong.")


@ab_app.command("report")
def ab_report_command(json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout.")) -> None:
    """Share of wrong guesses (with an interval), per version, and the automatic two-sample check."""
    from ccrl.agent.evaluation.ab import TARGET_WRONG_SHARE, ab_report

    report = ab_report()
    if json_out:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    wrong = report["wrong"]
    if report["votes"]:
        _out.print(f"wrong guesses: [bold]{wrong['value']:.0%}[/bold] of {report['votes']} votes "
                   f"(95% interval {wrong['low']:.0%}–{wrong['high']:.0%}); target: over {TARGET_WRONG_SHARE:.0%} "
                   + ("[green]met[/green]" if wrong["target_met"] else "[yellow]not met[/yellow]"))
    else:
        _out.print("no votes yet: run `ccrl ab`")
    if report["history"]:
        table = Table("model", "votes", "wrong guesses", "interval", "last vote", title="per version")
        for entry in report["history"]:
            w = entry["wrong"]
            table.add_row(escape(entry["subject"]), str(w["n"]), f"{w['value']:.0%}", f"{w['low']:.0%}–{w['high']:.0%}",
                          entry["last_vote"])
        _out.print(table)
    auto = report["automatic"]
    _out.print(f"automatic check ({escape(str(auto.get('subject', '-')))}): [bold]{auto['verdict']}[/bold] — {escape(auto['why'])}")
    for key, title in (("model", "Claude vs the model"), ("control", "Claude vs the base model (control)")):
        result = auto.get(key)
        if result and result.get("accuracy"):
            acc = result["accuracy"]
            _out.print(f"  {title}: classifier accuracy {acc['value']:.0%} [{acc['low']:.0%}, {acc['high']:.0%}] "
                       f"on {result['n_claude']} + {result['n_other']} plans, {result['folds']}-fold")
        elif result:
            _out.print(f"  {title}: not run ({escape(result.get('note', ''))}; {result['n_claude']} + {result['n_other']} plans)")


def register(app: typer.Typer) -> None:
    """Add ``eval`` and the ``ab`` group to the top-level app."""
    app.command("eval")(eval_command)
    app.add_typer(ab_app, name="ab")
