"""The deployment gate: a candidate is deployable only when, measured now from its weights on
the held-out split, its primary metric (teacher-forced next-action agreement) beats the base
model's and every learn-nothing baseline's, and is not worse than the deployed version's by
more than ``[eval] gate_margin``; an RL candidate must also raise the held-out behavioural
reward over its SFT parent.

Nothing stored is trusted: :func:`evaluate_candidate` loads every model it compares (the
candidate's merged weights and its GGUF, the base, the deployed version, an RL candidate's SFT
parent) and scores them all on the same held-out decisions in one run, so edited numbers in the
store change nothing and degraded weights are caught. When the candidate has a GGUF (and
llama-cpp-python is installed) the GGUF is what is judged: it is what Ollama serves; the merged
model's numbers are recorded beside it, so quantization losses show.

Records: one ``Evaluation`` row per subject (details, including the generated plans ``ccrl ab``
shows, in ``CCRL_HOME/evals/``); on a model version, ``gate`` holds the decision (``passed``,
``reason``, the checks with their numbers, the digest of the judged weights) and
``metrics["evaluation"]`` every subject's metrics; a candidate that fails becomes ``rejected``.
Every decision is logged (``gate.decision``).

Held-out sessions that any compared model could have trained on (the train split of any
dataset version up to the candidate's) are left out and counted (``excluded_seen``), since the
eval threshold may grow between versions. The gate judges on the held-out *test* fold
(``[eval] fold``); the dev fold is for choosing settings. Intervals and paired differences
resample sessions.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlmodel import select

from ccrl.agent.core.config import Settings, get_settings
from ccrl.agent.core.eval_config import EvalSettings
from ccrl.agent.datasets.session_lineage import family_members, lineage_roots
from ccrl.agent.store.db import ensure_private_dir, session_scope
from ccrl.agent.store.models import DatasetVersion, Evaluation, ModelVersion, TrainingRun, utcnow

PRIMARY = "next_action"
CANDIDATE = "candidate"
CANDIDATE_GGUF = "candidate-gguf"
BASE = "base"
DEPLOYED = "deployed"
RL_PARENT = "rl-parent"
BASELINES = ("most_frequent", "bigram")

Progress = Callable[[dict[str, Any]], None]


class GateError(RuntimeError):
    """The gate cannot run (no such version or run, no dataset); the message says what to do."""


# ---------------------------------------------------------------------------------------------
# The decision (pure)
# ---------------------------------------------------------------------------------------------


@dataclass
class Check:
    """One condition of the gate, with the numbers it compared."""

    name: str
    passed: bool
    candidate: float | None
    other: float | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


@dataclass
class GateDecision:
    """The gate's verdict on one candidate."""

    passed: bool
    reason: str
    judged: str
    """Which subject was judged: ``candidate-gguf`` (what Ollama serves) or ``candidate``."""
    checks: list[Check] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"passed": self.passed, "reason": self.reason, "judged": self.judged, "primary_metric": PRIMARY,
                "checks": [c.to_dict() for c in self.checks]}


def _value(metrics: dict[str, Any] | None, name: str = PRIMARY) -> float | None:
    entry = (metrics or {}).get(name) or {}
    value = entry.get("value") if isinstance(entry, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def decide(
    candidate: dict[str, Any] | None,
    *,
    base: dict[str, Any] | None,
    baselines: dict[str, dict[str, Any]],
    deployed: dict[str, Any] | None = None,
    has_deployed: bool = False,
    rl_parent: dict[str, Any] | None = None,
    is_rl: bool = False,
    judged: str = CANDIDATE,
    settings: EvalSettings | None = None,
    errors: dict[str, str] | None = None,
) -> GateDecision:
    """The gate's verdict from freshly measured metrics (JSON dicts as ``evaluate`` returns them).

    ``has_deployed``: a deployed version exists (then its metrics are required; when it could
    not be measured the candidate cannot be shown not to be worse, and fails). ``errors``: why a
    subject could not be measured.
    """
    settings = settings or EvalSettings()
    errors = errors or {}
    checks: list[Check] = []
    value = _value(candidate)
    if value is None:
        why = errors.get(judged) or "no held-out decision could be scored"
        checks.append(Check("candidate measured", False, None, None, f"the candidate has no {PRIMARY} value: {why}"))
        return GateDecision(False, checks[-1].detail, judged, checks)

    def beats(name: str, label: str, metrics: dict[str, Any] | None) -> None:
        other = _value(metrics)
        if other is None:
            why = errors.get(name) or f"{label} has no {PRIMARY} value"
            checks.append(Check(f"beats {label}", False, value, None, f"{label} could not be measured: {why}"))
            return
        ok = value > other + settings.gate_min_gain
        need = f"> {_fmt(other)}" + (f" + {settings.gate_min_gain:g}" if settings.gate_min_gain else "")
        checks.append(Check(f"beats {label}", ok, value, other, f"{PRIMARY} {_fmt(value)} {'' if ok else 'not '}{need}"))

    beats(BASE, "the base model", base)
    for name in BASELINES:
        beats(name, f"the {name.replace('_', '-')} baseline", baselines.get(name))
    if has_deployed:
        other = _value(deployed)
        if other is None:
            checks.append(Check("not worse than the deployed version", False, value, None,
                                f"the deployed version could not be measured: {errors.get(DEPLOYED, 'no value')}"))
        else:
            ok = value >= other - settings.gate_margin
            checks.append(Check("not worse than the deployed version", ok, value, other,
                                f"{PRIMARY} {_fmt(value)} {'>=' if ok else '<'} {_fmt(other)} - margin {settings.gate_margin:g}"))
    if is_rl:
        mine, parent = _value(candidate, "reward"), _value(rl_parent, "reward")
        if mine is None or parent is None:
            why = errors.get(RL_PARENT) or "no held-out plan could be scored"
            checks.append(Check("raises the behavioural reward over its SFT parent", False, mine, parent,
                                f"the held-out behavioural reward could not be compared: {why}"))
        else:
            ok = mine > parent + settings.gate_rl_min_reward_gain
            checks.append(Check("raises the behavioural reward over its SFT parent", ok, mine, parent,
                                f"reward {_fmt(mine)} {'' if ok else 'not '}> {_fmt(parent)}"
                                + (f" + {settings.gate_rl_min_reward_gain:g}" if settings.gate_rl_min_reward_gain else "")))
    failed = [c for c in checks if not c.passed]
    if failed:
        reason = "; ".join(f"{c.name}: {c.detail}" for c in failed)
        return GateDecision(False, reason, judged, checks)
    return GateDecision(True, f"{PRIMARY} {_fmt(value)} passes every check", judged, checks)


# ---------------------------------------------------------------------------------------------
# What to evaluate
# ---------------------------------------------------------------------------------------------


@dataclass
class Subject:
    """A model the gate scores."""

    name: str
    path: str
    model_version_id: int | None = None
    training_run_id: int | None = None
    tools_in_training: bool | None = None
    plans_only: bool = False
    """Score only the held-out plans: the RL candidate's SFT parent is compared on the
    behavioural reward of its plans alone, so its decisions would cost time and decide nothing."""


@dataclass
class Plan:
    """Everything one gate run evaluates."""

    dataset: DatasetVersion
    candidate_run: TrainingRun
    version: ModelVersion | None
    subjects: list[Subject]
    has_deployed: bool
    is_rl: bool
    exclude_sessions: set[str]
    notes: list[str] = field(default_factory=list)


def run_weights(run: TrainingRun) -> Path | None:
    """A run's evaluable weights: its merged model, else its final adapter (None if neither)."""
    out = Path(run.output_dir or "")
    if not run.output_dir:
        return None
    if (out / "merged" / "config.json").is_file():
        return out / "merged"
    if (out / "final" / "adapter_config.json").is_file():
        return out / "final"
    return None


def base_source(session: Any, run: TrainingRun) -> str | None:
    """The base model a run's lineage started from: the ``model_source`` of the first run of
    its chain of parents (a continued SFT run's parent is the accepted run; an RL run's is its
    SFT run)."""
    seen: set[int] = set()
    current = run
    while current.parent_run_id is not None and current.parent_run_id not in seen:
        seen.add(current.parent_run_id)
        parent = session.get(TrainingRun, current.parent_run_id)
        if parent is None:
            break
        current = parent
    source = (current.config or {}).get("model_source")
    return str(source) if source else None


def _tools_in_training(path: Path) -> bool | None:
    info = path / "ccrl_template.json"
    if not info.is_file():
        return None
    try:
        value = json.loads(info.read_text()).get("tools_in_training")
    except ValueError:
        return None
    return bool(value) if value is not None else None


def _deployed(session: Any) -> ModelVersion | None:
    return session.exec(
        select(ModelVersion).where(ModelVersion.status == "deployed")
        .order_by(ModelVersion.deployed_at.desc(), ModelVersion.number.desc())  # type: ignore[union-attr]
    ).first()


def _version_weights(session: Any, version: ModelVersion, prefer_gguf: bool) -> tuple[Path | None, int | None]:
    """A version's weights (its GGUF when present and preferred, else its run's) and run id."""
    run_id = version.rl_run_id or version.sft_run_id
    run = session.get(TrainingRun, run_id) if run_id else None
    if prefer_gguf and version.gguf_path and Path(version.gguf_path).is_file():
        return Path(version.gguf_path), run_id
    return (run_weights(run) if run is not None else None), run_id


def trained_sessions(settings: Settings, up_to_number: int) -> set[str]:
    """Session ids in the train split of every dataset version up to ``up_to_number``: sessions
    some model of the lineage may have trained on."""
    sessions: set[str] = set()
    with session_scope(settings) as session:
        paths = [Path(v.path) for v in session.exec(select(DatasetVersion).where(DatasetVersion.number <= up_to_number))]
    for path in paths:
        train = path / "jsonl" / "train.jsonl"
        if not train.is_file():
            continue
        with open(train, encoding="utf-8") as fh:
            for line in fh:
                try:
                    sid = json.loads(line).get("session_id")
                except ValueError:
                    continue
                if sid:
                    sessions.add(str(sid))
    return sessions


def _gguf_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def plan_evaluation(settings: Settings, *, model_version_id: int | None = None,
                    training_run_id: int | None = None) -> Plan:
    """Resolve the candidate (a model version, or a training run not exported yet), its dataset
    version, and every model to compare it with."""
    prefer_gguf = settings.eval.evaluate_gguf and _gguf_available()
    notes: list[str] = []
    with session_scope(settings) as session:
        version = None
        if model_version_id is not None:
            version = session.get(ModelVersion, model_version_id)
            if version is None:
                raise GateError(f"there is no model version with id {model_version_id}")
            training_run_id = version.rl_run_id or version.sft_run_id
            if training_run_id is None:
                raise GateError(f"model version {version.number} names no training run to evaluate")
        if training_run_id is None:
            raise GateError("name a model version or a training run to evaluate")
        run = session.get(TrainingRun, training_run_id)
        if run is None:
            raise GateError(f"there is no training run {training_run_id}")
        dataset = session.get(DatasetVersion, run.dataset_version_id) if run.dataset_version_id else None
        if dataset is None:
            raise GateError(f"training run {run.id} names no dataset version: nothing held out to evaluate on")
        subjects: list[Subject] = []
        weights = run_weights(run)
        if weights is not None:
            subjects.append(Subject(CANDIDATE, str(weights), model_version_id, run.id, _tools_in_training(weights)))
        else:
            notes.append(f"training run {run.id} has no merged model or adapter under {run.output_dir!r}")
        if version is not None and version.gguf_path:
            if not Path(version.gguf_path).is_file():
                notes.append(f"the GGUF of model version {version.number} is gone ({version.gguf_path})")
            elif prefer_gguf:
                subjects.append(Subject(CANDIDATE_GGUF, version.gguf_path, model_version_id, run.id,
                                        _tools_in_training(weights) if weights else None))
                if not settings.eval.evaluate_hf_candidate:
                    subjects = [s for s in subjects if s.name != CANDIDATE]
                    notes.append("the candidate's Hugging Face weights were not evaluated ([eval] evaluate_hf_candidate "
                                 "is off): the GGUF is judged, and what quantisation costs is not measured")
            else:
                notes.append("the GGUF was not evaluated (llama-cpp-python is not installed, or [eval] evaluate_gguf is off)")
        if not subjects:
            raise GateError(f"nothing to evaluate for training run {run.id}: no weights found")
        base = base_source(session, run)
        if base:
            subjects.append(Subject(BASE, base))
        else:
            notes.append(f"the base model of training run {run.id} is not recorded")
        deployed = _deployed(session)
        has_deployed = deployed is not None and (version is None or deployed.id != version.id)
        if has_deployed:
            gated_on_gguf = any(s.name == CANDIDATE_GGUF for s in subjects)
            path, deployed_run = _version_weights(session, deployed, gated_on_gguf)
            if path is not None:
                subjects.append(Subject(DEPLOYED, str(path), deployed.id, deployed_run))
            else:
                notes.append(f"the weights of the deployed version {deployed.number} are gone")
        is_rl = run.phase == "rl"
        if is_rl:
            parent = session.get(TrainingRun, run.parent_run_id) if run.parent_run_id else None
            parent_weights = run_weights(parent) if parent is not None else None
            if parent_weights is not None:
                subjects.append(Subject(RL_PARENT, str(parent_weights), None, parent.id, _tools_in_training(parent_weights),
                                        plans_only=True))
            else:
                notes.append(f"the SFT parent of RL run {run.id} has no weights to compare the reward with")
        for obj in (dataset, run, version):
            if obj is not None:
                session.expunge(obj)
    # A resumed or forked copy of a trained session was trained on too (an older version may
    # have split the family before it was known).
    exclude = family_members(lineage_roots(settings), trained_sessions(settings, dataset.number))
    return Plan(dataset, run, version, subjects, has_deployed, is_rl, exclude, notes)


# ---------------------------------------------------------------------------------------------
# Running and recording
# ---------------------------------------------------------------------------------------------


def evals_dir(settings: Settings) -> Path:
    """``CCRL_HOME/evals``: evaluation details (per-decision results and generated plans)."""
    return settings.home / "evals"


def _log() -> Any:
    import structlog

    return structlog.get_logger("ccrl.gate")


def _record(settings: Settings, plan: Plan, results: dict[str, Any], config: dict[str, Any]) -> dict[str, int]:
    """One ``Evaluation`` row per result, with its details file; returns subject -> row id."""
    from ccrl.trainers.evaluate import write_details

    ids: dict[str, int] = {}
    folder = ensure_private_dir(evals_dir(settings))
    subject_of = {s.name: s for s in plan.subjects}
    with session_scope(settings) as session:
        for name, result in results.items():
            subject = subject_of.get(name)
            row = Evaluation(
                dataset_version_id=plan.dataset.id,
                model_version_id=subject.model_version_id if subject else None,
                training_run_id=subject.training_run_id if subject else None,
                subject=name, kind=result.kind, backend=result.backend, model_path=result.path,
                weights_sha256=result.weights_sha256, metrics=result.metrics, config=config, seconds=result.seconds,
            )
            session.add(row)
            session.flush()
            details = write_details(result, folder / f"e{row.id}-{name}.json")
            row.details_path = str(details)
            session.add(row)
            ids[name] = int(row.id)
    return ids


def _update_version(settings: Settings, version_id: int, decision: GateDecision, report: dict[str, Any]) -> None:
    with session_scope(settings) as session:
        version = session.get(ModelVersion, version_id)
        gate = {**decision.to_dict(), **{k: report[k] for k in ("evaluated_at", "dataset_version", "weights_sha256",
                                                                   "evaluation_ids", "paired")}}
        previous_override = (version.gate or {}).get("override")
        if previous_override:
            gate["previous_override"] = previous_override
        version.gate = gate
        metrics = dict(version.metrics or {})
        metrics["evaluation"] = {"evaluated_at": report["evaluated_at"], "dataset_version": report["dataset_version"],
                                 "judged": decision.judged,
                                 "subjects": {k: v["metrics"] for k, v in report["subjects"].items()}}
        event = {"at": report["evaluated_at"], "event": "gate passed" if decision.passed else "gate failed",
                 "reason": decision.reason}
        if not decision.passed and version.status == "candidate":
            version.status = "rejected"
            event["status"] = "rejected"
        metrics["history"] = [*metrics.get("history", []), event]
        version.metrics = metrics
        session.add(version)


def evaluate_candidate(
    model_version_id: int | None = None,
    *,
    training_run_id: int | None = None,
    settings: Settings | None = None,
    progress: Progress | None = None,
    record: bool = True,
    fold: str = "test",
) -> dict[str, Any]:
    """Measure the candidate (a model version, or a training run not exported yet) and everything
    it is compared with, decide, record and log. Returns the report (JSON-able): ``passed``,
    ``reason``, ``checks``, ``subjects`` (each subject's metrics), ``paired`` (the candidate's
    per-decision agreement minus each other subject's, with an interval), ``notes``.

    ``fold``: the held-out fold scored. The gate judges on ``test``; ``dev`` (for choosing
    settings) and ``all`` are measured and reported but never recorded: a decision made on
    them would not be the gate's.

    Raises ``GateError`` when there is no candidate or no held-out data to judge it on.
    """
    from ccrl.trainers.evaluate import (
        EvaluationError,
        behavioural_reward,
        evaluate_baselines,
        evaluate_model,
        load_eval_data,
    )
    from ccrl.trainers.metrics import paired_difference
    from ccrl.trainers.reward import RewardWeights

    settings = settings or get_settings()
    plan = plan_evaluation(settings, model_version_id=model_version_id, training_run_id=training_run_id)
    try:
        config = settings.eval.eval_config(fold=fold)
    except EvaluationError as exc:
        raise GateError(str(exc)) from exc
    if fold != "test":
        record = False
        plan.notes.append(f"the {fold!r} fold was scored: nothing is recorded and the gate's verdict is not kept "
                          "(the gate judges on the test fold)")
    try:
        data = load_eval_data(plan.dataset.path, config, exclude_sessions=plan.exclude_sessions)
    except EvaluationError as exc:
        raise GateError(str(exc)) from exc
    reward = behavioural_reward(RewardWeights.from_settings(settings.reward))
    results: dict[str, Any] = {b.name: b for b in evaluate_baselines(data, config)}
    errors: dict[str, str] = {}
    for subject in plan.subjects:
        subject_data = replace(data, decisions=[]) if subject.plans_only else data
        try:
            results[subject.name] = evaluate_model(subject.path, subject_data, config, name=subject.name, reward_fn=reward,
                                                   tools_in_training=subject.tools_in_training, progress=progress)
        except (EvaluationError, OSError, ValueError) as exc:
            errors[subject.name] = str(exc)
    judged = CANDIDATE_GGUF if CANDIDATE_GGUF in results else CANDIDATE
    if judged not in results and CANDIDATE_GGUF in errors:
        judged = CANDIDATE_GGUF
    metrics = {name: r.metrics for name, r in results.items()}
    decision = decide(metrics.get(judged), base=metrics.get(BASE), baselines={n: metrics.get(n) for n in BASELINES},
                      deployed=metrics.get(DEPLOYED), has_deployed=plan.has_deployed, rl_parent=metrics.get(RL_PARENT),
                      is_rl=plan.is_rl, judged=judged, settings=settings.eval, errors=errors)
    paired = {}
    if judged in results:
        mine = results[judged].scores()
        for name, result in results.items():
            if name != judged and len(result.decisions) == len(mine) and mine:
                paired[name] = paired_difference(mine, result.scores(), config.confidence, seed=config.seed,
                                                 resamples=config.resamples,
                                                 sessions=results[judged].sessions()).to_dict()
    evaluated_at = utcnow().isoformat(timespec="seconds")
    report: dict[str, Any] = {
        **decision.to_dict(),
        "model_version_id": plan.version.id if plan.version else None,
        "model_version": plan.version.number if plan.version else None,
        "training_run_id": plan.candidate_run.id,
        "phase": plan.candidate_run.phase,
        "dataset_version_id": plan.dataset.id,
        "dataset_version": plan.dataset.number,
        "fold": data.fold,
        "excluded_seen": data.counts.get("excluded_seen", 0),
        "interval_method": (metrics.get(judged) or next(iter(metrics.values()), {})).get("interval_method"),
        "evaluated_at": evaluated_at,
        "weights_sha256": results[judged].weights_sha256 if judged in results else None,
        "subjects": {name: {"kind": r.kind, "backend": r.backend, "path": r.path, "weights_sha256": r.weights_sha256,
                            "seconds": r.seconds, "metrics": r.metrics} for name, r in results.items()},
        "errors": errors,
        "paired": paired,
        "notes": plan.notes,
        "config": config.to_dict(),
        "evaluation_ids": {},
    }
    if record:
        # gate_run ties the rows of one run together (``ccrl ab`` pairs a model with its base).
        report["evaluation_ids"] = _record(settings, plan, results, {**config.to_dict(), "gate_run": uuid.uuid4().hex})
        if plan.version is not None:
            _update_version(settings, plan.version.id, decision, report)
    numbers = {name: _value(r.metrics) for name, r in results.items()}
    _log().info("gate.decision", passed=decision.passed, reason=decision.reason, judged=judged,
                model_version=report["model_version"], training_run=plan.candidate_run.id,
                dataset_version=plan.dataset.number, decisions=data.counts.get("decisions"), **{
                    f"{PRIMARY}.{k.replace('-', '_')}": v for k, v in numbers.items()})
    return report


evaluate_version = evaluate_candidate
"""The name the agent's cycle step calls (``evaluate_version(model_version_id=…, settings=…)``)."""


def require_pass(model_version_id: int, *, settings: Settings | None = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """The gate's decision for a version about to be deployed: the recorded one when it was
    made on exactly the weights that are there now (their digest is recomputed), else a fresh
    :func:`evaluate_candidate`. Returns the gate JSON (``passed``, ``reason``…)."""
    from ccrl.trainers.evaluate import weights_digest

    settings = settings or get_settings()
    with session_scope(settings) as session:
        version = session.get(ModelVersion, model_version_id)
        if version is None:
            raise GateError(f"there is no model version with id {model_version_id}")
        gate = dict(version.gate or {})
        session.expunge(version)
    judged_path = None
    if gate.get("judged") == CANDIDATE_GGUF and version.gguf_path:
        judged_path = Path(version.gguf_path)
    elif gate.get("judged") == CANDIDATE:
        with session_scope(settings) as session:
            run = session.get(TrainingRun, version.rl_run_id or version.sft_run_id)
            judged_path = run_weights(run) if run is not None else None
    if "passed" in gate and gate.get("weights_sha256") and judged_path is not None and judged_path.exists():
        if weights_digest(judged_path) == gate["weights_sha256"]:
            return gate
    report = evaluate_candidate(model_version_id, settings=settings, progress=progress)
    return {k: report[k] for k in ("passed", "reason", "judged", "primary_metric", "checks")}


def record_override(model_version_id: int, reason: str, *, settings: Settings | None = None) -> None:
    """``ccrl deploy --force --reason``: note on the version that the gate was overridden, and
    why, and log it as a warning."""
    if not reason or not reason.strip():
        raise GateError("overriding the gate needs a reason")
    settings = settings or get_settings()
    at = utcnow().isoformat(timespec="seconds")
    with session_scope(settings) as session:
        version = session.get(ModelVersion, model_version_id)
        if version is None:
            raise GateError(f"there is no model version with id {model_version_id}")
        gate = dict(version.gate or {})
        gate["override"] = {"reason": reason.strip(), "at": at, "user": os.environ.get("USER")}
        version.gate = gate
        metrics = dict(version.metrics or {})
        metrics["history"] = [*metrics.get("history", []), {"at": at, "event": "gate overridden", "reason": reason.strip()}]
        version.metrics = metrics
        session.add(version)
        number, passed = version.number, gate.get("passed")
    _log().warning("gate.override", model_version=number, gate_passed=passed, reason=reason.strip())
