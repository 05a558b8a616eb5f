"""``ccrl eval --sessions DIR``: the candidate, its base model and the two learn-nothing baselines
scored on the next-action decisions of Claude Code transcripts the store has never seen.

Transcripts are found with ``ccrl import``'s layout (``importer.discover``) and rebuilt into
traces by ingest's own ``rebuild_session`` (parser, redaction, subagent linking) inside a
throwaway SQLite store in a temporary folder, never the user's store, which is only read (the
candidate, its dataset version, purged and trained sessions). Opt-outs apply as on import:
nothing is read under ``CCRL_DISABLE``, and a session whose project holds ``.ccrl-ignore`` is
counted and left out. Traces become conversations through the dataset builder's conversion and
filters (those of the candidate's dataset version). A session the candidate may have trained
on (its id, or a resumed or forked copy sharing message uuids, in a train split) is excluded
and counted (``excluded_seen``).
"""

from __future__ import annotations

import random
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ccrl.agent.core.config import Settings, get_settings

CHAINS = ("main", "subagent")
COMPARED = ("base", "bigram", "most_frequent")
METRICS = ("next_action", "tool_name", "arguments")


class SessionsEvalError(RuntimeError):
    """``eval --sessions`` cannot run; the message says what to do."""


@dataclass
class SessionDecisions:
    """The decisions found under DIR, and what was left out and why."""

    points: list[Any]
    chain: dict[Any, str]
    """trace id -> ``main`` or ``subagent``."""
    tools: dict[Any, list[dict[str, Any]]]
    sessions_found: int = 0
    sessions_opted_out: int = 0
    sessions_purged: int = 0
    excluded_seen: int = 0
    skipped: Counter = field(default_factory=Counter)
    """Decisions left out, by reason."""
    skipped_traces: Counter = field(default_factory=Counter)
    """Traces that could not be converted at all (bad input), by reason."""


# ---------------------------------------------------------------------------------------------
# Transcripts -> decisions, in memory
# ---------------------------------------------------------------------------------------------


def _purged(settings: Settings, session_ids: list[str]) -> set[str]:
    """Sessions purged for good from the user's store (``ccrl purge``): never brought back."""
    from sqlmodel import col, select

    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import PurgedSession

    with session_scope(settings) as db:
        rows = db.exec(select(PurgedSession.session_id, PurgedSession.before)
                       .where(col(PurgedSession.session_id).in_(session_ids)))
        return {sid for sid, before in rows if before is None}


def _scratch_engine(folder: Path) -> Any:
    from sqlalchemy import create_engine

    from ccrl.agent.store.migrations import migrate

    engine = create_engine(f"sqlite:///{folder / 'scratch.db'}")
    migrate(engine)
    return engine


def _scratch_traces(engine: Any) -> list[dict[str, Any]]:
    from sqlmodel import Session as DBSession
    from sqlmodel import select

    from ccrl.agent.store.models import ToolCall, Trace
    from ccrl.agent.store.records import trace_json

    with DBSession(engine) as db:
        traces = list(db.exec(select(Trace).order_by(Trace.id)))
        calls: dict[int, list[ToolCall]] = {t.id: [] for t in traces}
        for call in db.exec(select(ToolCall)):
            calls.setdefault(call.trace_id, []).append(call)
        return [trace_json(t, calls[t.id]) for t in traces]


def _dataset_settings(dataset_config: dict[str, Any] | None, settings: Settings) -> Any:
    from ccrl.agent.core.dataset_config import DatasetSettings

    recorded = (dataset_config or {}).get("dataset")
    return DatasetSettings(**recorded) if isinstance(recorded, dict) else settings.dataset


def read_decisions(root: Path, settings: Settings, *, trained_sessions: set[str], trained_uuids: set[str],
                   dataset_config: dict[str, Any] | None = None, max_prompt_tokens: int) -> SessionDecisions:
    """Every next-action decision of the transcripts under ``root`` (see the module docstring)."""
    from sqlmodel import Session as DBSession

    from ccrl.agent.capture.importer import discover, import_disabled
    from ccrl.agent.capture.ingest import rebuild_session
    from ccrl.agent.capture.transcript import subagent_files
    from ccrl.agent.datasets.dataset_filters import trace_filter
    from ccrl.agent.datasets.datasets import _convert
    from ccrl.agent.datasets.session_lineage import transcript_uuids
    from ccrl.trainers import conversation as conv
    from ccrl.trainers import metrics as m
    from ccrl.trainers.signals import extract_signals, view

    if import_disabled():
        raise SessionsEvalError("CCRL_DISABLE is set: capture is disabled, so no transcript is read. "
                                "Unset it to evaluate on sessions.")
    if not root.exists():
        raise SessionsEvalError(f"no such file or directory: {root}")
    entries = discover(root)
    found = SessionDecisions(points=[], chain={}, tools={}, sessions_found=len({e.session_id for e in entries}))
    purged = _purged(settings, sorted({e.session_id for e in entries}))
    cfg = _dataset_settings(dataset_config, settings)
    with tempfile.TemporaryDirectory(prefix="ccrl-eval-sessions-") as tmp:
        engine = _scratch_engine(Path(tmp))
        scratch = settings.model_copy(update={"home": Path(tmp), "database_url": None})
        counted: set[str] = set()
        try:
            for entry in entries:
                sid = entry.session_id
                if sid in purged:
                    found.sessions_purged += sid not in counted
                    counted.add(sid)
                    continue
                files = [p for p in [entry.main, *entry.agents] if p is not None]
                files += subagent_files(entry.main) if entry.main is not None else []
                if sid in trained_sessions or transcript_uuids(files) & trained_uuids:
                    found.excluded_seen += sid not in counted
                    counted.add(sid)
                    continue
                with DBSession(engine) as db:
                    result = rebuild_session(db, sid, scratch, transcript=entry.main, agent_transcripts=entry.agents)
                    db.commit()
                if result.ignored:
                    found.sessions_opted_out += sid not in counted
                    counted.add(sid)
            traces = _scratch_traces(engine)
        finally:
            engine.dispose()
    catalog = conv.ToolCatalog()
    for trace in traces:
        catalog.add_trace(trace)
    top_tools = {name for name, _n in catalog.calls.most_common(cfg.max_tools)}
    for trace in traces:
        chain = "subagent" if trace.get("parent_id") is not None or trace.get("agent_id") else "main"
        trace_view = view(trace)
        signals = extract_signals(trace_view)
        tools = catalog.tools(only=top_tools | set(signals["tool_sequence"]))
        try:
            converted = _convert(trace, signals, tools, [conv.TRAJECTORY], cfg)
        except conv.ConversionError as exc:
            found.skipped_traces[f"bad_input:{exc.reason}"] += 1
            continue
        row = next(r for r in converted.rows if r["format"] == conv.TRAJECTORY)
        points = m.decision_points(row["messages"], trace_id=trace["id"], tools=row["tools"],
                                   max_prompt_tokens=max_prompt_tokens)  # long prefixes are windowed
        reason = trace_filter(trace_view, signals, cfg)
        if reason == "subagent":
            reason = None  # subagent decisions are reported apart, not dropped
        if reason:
            found.skipped[f"filtered:{reason}"] += len(points)
            continue
        found.chain[trace["id"]] = chain
        found.tools[trace["id"]] = tools
        for point in points:
            point.session_id = str(trace.get("session_id") or "") or None
            if point.prompt_tokens > max_prompt_tokens:
                found.skipped["prompt_too_long"] += 1
            else:
                found.points.append(point)
    return found


# ---------------------------------------------------------------------------------------------
# Scoring and the report
# ---------------------------------------------------------------------------------------------


def _metric_entry(entry: dict[str, Any] | None) -> dict[str, Any]:
    entry = entry or {}
    n = int(entry.get("n") or 0)
    return {"value": entry.get("value") if n else None, "low": entry.get("low") if n else None,
            "high": entry.get("high") if n else None, "n": n}


def _summaries(rows: list[dict[str, Any]], config: Any, *, baseline: bool) -> dict[str, Any]:
    from ccrl.trainers import metrics as m

    scores = [m.DecisionScore(bool(r["decision"]), r.get("tool_name"), r.get("arguments")) for r in rows]
    summary = m.summarise_decisions(scores, config.confidence, sessions=[r.get("session_id") for r in rows],
                                    resamples=config.resamples, seed=config.seed)
    out = {k: _metric_entry(summary[k].to_dict()) for k in METRICS}
    if baseline:
        out["arguments"] = None  # a learn-nothing baseline writes no arguments
    return out


def _paired(candidate: Any, other: Any, config: Any) -> dict[str, Any]:
    from ccrl.trainers import metrics as m

    mine = candidate.scores()
    diff = m.paired_difference(mine, other.scores(), config.confidence, resamples=config.resamples, seed=config.seed,
                               sessions=candidate.sessions())
    return {"metric": m.PRIMARY_METRIC, "diff": diff.value, "low": diff.low, "high": diff.high, "n": diff.n,
            "method": diff.method}


def interval_method(config: Any, sessions: int) -> str:
    """The method every interval of the report used, in words."""
    from ccrl.trainers import metrics as m

    if sessions < 2:
        return (f"{m.WILSON_ONE_SESSION} for rates; {m.DECISION_BOOTSTRAP_ONE_SESSION} for paired differences "
                f"({config.resamples} resamples, seed {config.seed})")
    return f"{m.SESSION_BOOTSTRAP} over {sessions} sessions ({config.resamples} resamples, seed {config.seed})"


def _candidate(settings: Settings, version_id: int | None, run_id: int | None) -> dict[str, Any]:
    """The candidate's weights, form, base model, dataset version and the sessions it may have
    trained on."""
    from ccrl.agent.evaluation.gate import BASE, CANDIDATE, CANDIDATE_GGUF, GateError, plan_evaluation

    try:
        plan = plan_evaluation(settings, model_version_id=version_id, training_run_id=run_id)
    except GateError as exc:
        raise SessionsEvalError(str(exc)) from exc
    by_name = {s.name: s for s in plan.subjects}
    subject = by_name.get(CANDIDATE_GGUF) if version_id is not None else None
    subject = subject or by_name.get(CANDIDATE)
    if subject is None:
        raise SessionsEvalError(f"training run {plan.candidate_run.id} has no weights to evaluate: "
                                + "; ".join(plan.notes))
    return {"subject": subject, "form": "gguf" if subject.name == CANDIDATE_GGUF else "hf", "base": by_name.get(BASE),
            "plan": plan}


def evaluate_sessions(root: str | Path, *, version_id: int | None = None, run_id: int | None = None,
                      max_decisions: int = 300, seed: int = 0, max_prompt_tokens: int | None = None,
                      max_new_tokens: int | None = None, settings: Settings | None = None,
                      progress: Any = None) -> dict[str, Any]:
    """Score the candidate (a model version's id, a training run's id, or the newest version),
    the base model and both baselines on the decisions under ``root``; the report is the
    ``--json`` shape of ``ccrl eval --sessions``. Writes nothing to the store.

    ``max_prompt_tokens`` (each decision's prompt window) and ``max_new_tokens`` (per turn)
    default to ``[eval]``'s; the prompt's prefill is most of the cost on a CPU."""
    from ccrl.agent.datasets.session_lineage import family_of
    from ccrl.trainers import metrics as m
    from ccrl.trainers.evaluate import EvalData, _rows, _clean_messages, _is_trajectory, _tool_sequence
    from ccrl.trainers.evaluate import EvaluationError, evaluate_baselines, evaluate_model, llama_threads, weights_digest

    settings = settings or get_settings()
    overrides: dict[str, Any] = {"max_decisions": max_decisions, "seed": seed, "max_plans": 0, "fold": "all"}
    if max_prompt_tokens is not None:
        overrides["max_prompt_tokens"] = max_prompt_tokens
    if max_new_tokens is not None:
        overrides["decision_max_new_tokens"] = max_new_tokens
    config = settings.eval.eval_config(**overrides)
    target = _candidate(settings, version_id, run_id)
    plan = target["plan"]
    trained, uuids = family_of(settings, plan.exclude_sessions)
    found = read_decisions(Path(root).expanduser(), settings, trained_sessions=trained, trained_uuids=uuids,
                           dataset_config=plan.dataset.config, max_prompt_tokens=config.max_prompt_tokens)
    points = found.points
    if len(points) > max_decisions:
        picked = sorted(random.Random(seed).sample(range(len(points)), max_decisions))
        found.skipped["not_sampled"] += len(points) - max_decisions
        points = [points[i] for i in picked]
    if not points:
        raise SessionsEvalError(
            f"no next-action decision to score under {root}: {found.sessions_found} session(s) found, "
            f"{found.sessions_opted_out} opted out, {found.excluded_seen} seen in training, "
            f"skipped: {dict(found.skipped) or 'none'}")
    train_rows = [r for r in _rows(Path(plan.dataset.path), "train", rl=False) if _is_trajectory(r)]
    if not train_rows:
        raise SessionsEvalError(f"dataset v{plan.dataset.number} has no train split to fit the baselines on")
    train_messages = [_clean_messages(r.get("messages")) for r in train_rows]
    sessions = len({p.session_id for p in points})
    data = EvalData(dataset_path=plan.dataset.path, decisions=points, plans=[], fold="sessions",
                    train_labels=[m.action_labels(x) for x in train_messages],
                    train_tool_sequences=[_tool_sequence(x) for x in train_messages],
                    tools=found.tools, counts={"decisions": len(points), "sessions": sessions})
    results = {b.name: b for b in evaluate_baselines(data, config)}
    errors: dict[str, str] = {}
    subject, base = target["subject"], target["base"]
    if base is None:
        errors["base"] = "; ".join(plan.notes) or "the base model is not recorded"
    # One thread on a small machine, as for llama.cpp: on 2 busy cores 2 torch threads were
    # several times slower than 1 (measured: README). A second process for the base beside the
    # candidate was slower still there, so the models run one after the other.
    config = replace(config, threads=config.threads or llama_threads())
    try:
        results["candidate"] = evaluate_model(subject.path, data, config, name="candidate",
                                              tools_in_training=subject.tools_in_training, progress=progress)
    except (EvaluationError, OSError, ValueError) as exc:
        raise SessionsEvalError(f"cannot evaluate the candidate at {subject.path}: {exc}") from exc
    if base is not None:
        try:
            results["base"] = evaluate_model(base.path, data, config, name="base", progress=progress)
        except (EvaluationError, OSError, ValueError) as exc:
            errors["base"] = str(exc)
    chains = {name: {c: [r for r in result.decisions if found.chain.get(r["trace_id"]) == c] for c in CHAINS}
              for name, result in results.items()}
    report: dict[str, Any] = {
        "decisions": len(points),
        "sessions": sessions,
        "skipped": dict(sorted(found.skipped.items())),
        "excluded_seen": found.excluded_seen,
        "candidate": {"version": plan.version.number if plan.version else None,
                      "run": plan.candidate_run.id, "form": target["form"],
                      "weights_sha256": results["candidate"].weights_sha256 or weights_digest(subject.path),
                      "dataset_version": plan.dataset.number},
        "models": {name: _summaries(result.decisions, config, baseline=result.kind == "baseline")
                   for name, result in results.items()},
        "paired": {f"candidate_vs_{name}": _paired(results["candidate"], results[name], config)
                   for name in COMPARED if name in results},
        "interval_method": interval_method(config, sessions),
        "chains": {c: {"decisions": len(chains["candidate"][c]),
                       "sessions": len({r.get("session_id") for r in chains["candidate"][c]}),
                       "models": {name: _summaries(rows[c], config, baseline=results[name].kind == "baseline")
                                  for name, rows in chains.items()}} for c in CHAINS},
        "sessions_found": found.sessions_found,
        "sessions_opted_out": found.sessions_opted_out,
        "sessions_purged": found.sessions_purged,
        "skipped_traces": dict(sorted(found.skipped_traces.items())),
        "errors": errors,
        "seconds": {name: r.seconds for name, r in results.items()},
        "config": config.to_dict(),
    }
    return report
