"""Blind A/B in the terminal (``ccrl ab``) and its report (``ccrl ab report``).

The plans come from an evaluation (``ccrl eval`` or the gate): for every held-out prompt it
kept Claude's plan (the reference, rendered from the trace in the workflow format) and the
model's generated plan for the same prompt. ``ccrl ab`` shows both, canonical and in random
order, asks which is Claude's, and records the vote (``ab_votes``). The report gives the share
of wrong guesses with a Wilson interval (the original design's target: over 45% of people
cannot tell), overall and per model version, and the automatic two-sample check with its
base-model control.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from ccrl.agent.core.config import Settings, get_settings
from ccrl.agent.store.db import session_scope
from ccrl.agent.store.models import ABVote, Evaluation, ModelVersion, TrainingRun

TARGET_WRONG_SHARE = 0.45
"""The original design's goal: more than 45% of guesses wrong (people cannot tell)."""
MODEL_SUBJECTS = ("candidate-gguf", "candidate")
"""Evaluation subjects whose plans are shown, most preferred first (the GGUF is what Ollama serves)."""


class ABError(RuntimeError):
    """Nothing to show or report; the message says what to run first."""


@dataclass
class ABItem:
    """One held-out prompt with Claude's plan and the model's."""

    evaluation_id: int
    model_version_id: int | None
    training_run_id: int | None
    trace_id: int | None
    prompt: str
    claude_plan: str
    model_plan: str
    votes: int = 0


def subject_label(session: Any, evaluation: Evaluation) -> str:
    """How a person names the model of an evaluation: ``v3``, or ``run 5`` before export."""
    if evaluation.model_version_id is not None:
        version = session.get(ModelVersion, evaluation.model_version_id)
        if version is not None:
            return f"v{version.number}" + (" (gguf)" if evaluation.backend == "gguf" else "")
    if evaluation.training_run_id is not None:
        run = session.get(TrainingRun, evaluation.training_run_id)
        return f"run {evaluation.training_run_id}" + (f" ({run.phase})" if run else "")
    return evaluation.subject


def _pick_evaluation(session: Any, *, version_number: int | None, run_id: int | None) -> Evaluation:
    query = select(Evaluation).where(col(Evaluation.subject).in_(MODEL_SUBJECTS), Evaluation.details_path.is_not(None))
    if version_number is not None:
        version = session.exec(select(ModelVersion).where(ModelVersion.number == version_number)).first()
        if version is None:
            raise ABError(f"there is no model version {version_number} (`ccrl models list`)")
        query = query.where(Evaluation.model_version_id == version.id)
    if run_id is not None:
        query = query.where(Evaluation.training_run_id == run_id)
    rows = list(session.exec(query.order_by(col(Evaluation.id).desc())))
    # The newest evaluation run, and in it the GGUF's plans when there are some.
    for subject in MODEL_SUBJECTS:
        for row in rows:
            if row.subject == subject and (rows[0].config or {}).get("gate_run") == (row.config or {}).get("gate_run"):
                return row
    if rows:
        return rows[0]
    which = f" of model version {version_number}" if version_number is not None else (
        f" of training run {run_id}" if run_id is not None else "")
    raise ABError(f"no evaluated model plans{which} to compare: run `ccrl eval` first")


def _plans(evaluation: Evaluation) -> list[dict[str, Any]]:
    path = Path(evaluation.details_path or "")
    try:
        details = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ABError(f"the plans of evaluation {evaluation.id} cannot be read ({exc}); run `ccrl eval` again") from None
    return [p for p in details.get("plans", []) if p.get("reference_completion") and "completion" in p]


def ab_items(settings: Settings | None = None, *, version_number: int | None = None,
             run_id: int | None = None) -> list[ABItem]:
    """The pairs to show, prompts with the fewest votes first."""
    settings = settings or get_settings()
    with session_scope(settings) as session:
        evaluation = _pick_evaluation(session, version_number=version_number, run_id=run_id)
        counts: dict[Any, int] = {}
        for vote in session.exec(select(ABVote).where(ABVote.evaluation_id == evaluation.id)):
            counts[vote.trace_id] = counts.get(vote.trace_id, 0) + 1
        session.expunge(evaluation)
    items = [ABItem(evaluation.id, evaluation.model_version_id, evaluation.training_run_id, plan.get("trace_id"),
                    plan.get("prompt") or "", plan["reference_completion"], plan["completion"],
                    counts.get(plan.get("trace_id"), 0))
             for plan in _plans(evaluation)]
    if not items:
        raise ABError(f"evaluation {evaluation.id} kept no generated plans (the held-out split has no RL prompts yet); "
                      "capture more sessions, rebuild the dataset and run `ccrl eval`")
    return sorted(items, key=lambda i: (i.votes, str(i.trace_id)))


def record_vote(item: ABItem, *, claude_position: int, guess: int, seconds: float | None = None,
                settings: Settings | None = None) -> ABVote:
    """Store one vote. ``claude_position`` and ``guess`` are 1 or 2."""
    if claude_position not in (1, 2) or guess not in (1, 2):
        raise ValueError(f"positions are 1 or 2, got claude_position={claude_position}, guess={guess}")
    settings = settings or get_settings()
    with session_scope(settings) as session:
        vote = ABVote(evaluation_id=item.evaluation_id, model_version_id=item.model_version_id,
                      training_run_id=item.training_run_id, trace_id=item.trace_id, claude_position=claude_position,
                      guess=guess, correct=claude_position == guess, seconds=seconds)
        session.add(vote)
        session.flush()
        session.refresh(vote)
        session.expunge(vote)
        return vote


def _wrong(votes: list[ABVote], confidence: float) -> dict[str, Any]:
    from ccrl.trainers.metrics import rate

    wrong = rate(sum(not v.correct for v in votes), len(votes), confidence)
    return {**wrong.to_dict(), "target": TARGET_WRONG_SHARE,
            "target_met": wrong.value is not None and wrong.value > TARGET_WRONG_SHARE,
            "target_met_surely": wrong.n > 0 and wrong.low > TARGET_WRONG_SHARE}


def _sibling(session: Any, evaluation: Evaluation, subject: str) -> Evaluation | None:
    """The evaluation of ``subject`` made in the same run as ``evaluation`` (same gate run)."""
    key = (evaluation.config or {}).get("gate_run")
    if not key:
        return None
    for row in session.exec(select(Evaluation).where(Evaluation.dataset_version_id == evaluation.dataset_version_id,
                                                     Evaluation.subject == subject)):
        if (row.config or {}).get("gate_run") == key:
            return row
    return None


def classifier_check(settings: Settings | None = None, *, version_number: int | None = None,
                     run_id: int | None = None, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """The automatic two-sample check on an evaluation's plans: Claude vs the model, and Claude
    vs the base model (the control), with sample sizes, intervals and the verdict."""
    from ccrl.trainers.ab import two_sample_check, verdict

    settings = settings or get_settings()
    with session_scope(settings) as session:
        evaluation = _pick_evaluation(session, version_number=version_number, run_id=run_id)
        base = _sibling(session, evaluation, "base")
        label = subject_label(session, evaluation)
        for row in (evaluation, base):
            if row is not None:
                session.expunge(row)
    plans = _plans(evaluation)
    claude = [p["reference_completion"] for p in plans]
    groups = [str(p.get("trace_id")) for p in plans]
    model = two_sample_check(claude, [p["completion"] for p in plans], groups=groups + groups,
                             confidence=confidence, seed=seed)
    control = None
    if base is not None:
        base_plans = _plans(base)
        base_groups = [str(p.get("trace_id")) for p in base_plans]
        control = two_sample_check([p["reference_completion"] for p in base_plans], [p["completion"] for p in base_plans],
                                   groups=base_groups + base_groups, confidence=confidence, seed=seed)
    name, why = verdict(model, control)
    return {"subject": label, "evaluation_id": evaluation.id, "model": model.to_dict(),
            "control": control.to_dict() if control else None, "verdict": name, "why": why}


def ab_report(settings: Settings | None = None, *, confidence: float | None = None) -> dict[str, Any]:
    """Share of wrong guesses overall and per model (history, oldest first), and the automatic
    check on the newest evaluated model's plans."""
    settings = settings or get_settings()
    confidence = confidence or settings.eval.confidence
    with session_scope(settings) as session:
        votes = list(session.exec(select(ABVote).order_by(col(ABVote.id))))
        groups: dict[int, list[ABVote]] = {}
        for vote in votes:
            groups.setdefault(vote.evaluation_id, []).append(vote)
        history = []
        for evaluation_id, group in groups.items():
            evaluation = session.get(Evaluation, evaluation_id)
            history.append({"subject": subject_label(session, evaluation) if evaluation else f"evaluation {evaluation_id}",
                            "evaluation_id": evaluation_id,
                            "model_version_id": group[0].model_version_id, "training_run_id": group[0].training_run_id,
                            "first_vote": group[0].created_at.isoformat(timespec="seconds"),
                            "last_vote": group[-1].created_at.isoformat(timespec="seconds"),
                            "wrong": _wrong(group, confidence)})
        overall = _wrong(votes, confidence)
    try:
        automatic = classifier_check(settings, confidence=confidence)
    except ABError as exc:
        automatic = {"verdict": "inconclusive", "why": str(exc), "model": None, "control": None}
    return {"votes": overall["n"], "wrong": overall, "history": history, "automatic": automatic,
            "confidence": confidence}

