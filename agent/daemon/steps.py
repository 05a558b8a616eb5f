"""What each cycle step calls: thin adapters from the cycle to the modules that do the work.

Runs inside the step's child process (``child.py``). Each adapter reads what it needs from the
cycle row (dataset version, runs, model version), calls the module that owns the work, and
returns a small JSON-able dict that the agent records on the cycle. Adapters never fake a
result: when an optional extra a step needs is not installed, the step raises
``StepUnavailable`` and the cycle records that. A training run stopped on request
(``TrainingStopped``) ends the step with ``StepStopped``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ccrl.agent.core.config import Settings
from ccrl.agent.daemon.child import StepStopped, StepUnavailable, report_progress, stop_requested
from ccrl.agent.training.training import TrainingStopped

# Heavy packages that come with an extra: missing → "install the extra", not a step failure.
_EXTRA_FOR = {
    "torch": "train", "transformers": "train", "trl": "train", "peft": "train", "datasets": "train",
    "accelerate": "train", "bitsandbytes": "train", "matplotlib": "train",
    "llama_cpp": "gguf", "gguf": "gguf",
}


def _missing_extra(exc: ModuleNotFoundError, what: str) -> StepUnavailable | None:
    """A ``StepUnavailable`` for a heavy package missing at run time, else None."""
    missing = (exc.name or "").split(".")[0]
    if missing in _EXTRA_FOR:
        return StepUnavailable(f"{what} needs the '{missing}' package: install it with pip install "
                               f"'ccrl[{_EXTRA_FOR[missing]}]'")
    return None


def _cycle(cycle_id: int, settings: Settings) -> Any:
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import Cycle

    with session_scope(settings) as session:
        cycle = session.get(Cycle, cycle_id)
        if cycle is None:
            raise RuntimeError(f"cycle id {cycle_id} does not exist")
        session.expunge(cycle)
        return cycle


def run_dataset(cycle: Any, settings: Settings) -> dict[str, Any]:
    """Build a new dataset version from every trace captured so far."""
    from ccrl.agent.datasets.datasets import DatasetsMissing, build_dataset as build

    try:
        version = build(settings)
    except DatasetsMissing as exc:
        raise StepUnavailable(str(exc)) from None
    return {"dataset_version_id": version.id, "number": version.number, "created": version.created,
            "trace_count": version.trace_count, "train_count": version.train_count, "eval_count": version.eval_count}


def _train(phase: str, what: str, cycle: Any, settings: Settings, **kwargs: Any) -> dict[str, Any]:
    from ccrl.agent.training.training import run_training

    try:
        run = run_training(phase, dataset_version_id=cycle.dataset_version_id, cycle=cycle.number,
                           settings=settings, should_stop=stop_requested, report_progress=report_progress,
                           **kwargs)
    except ModuleNotFoundError as exc:
        unavailable = _missing_extra(exc, what)
        if unavailable is None:
            raise
        raise unavailable from None
    return {"run_id": run.id, "base_model": run.base_model, "output_dir": run.output_dir,
            "metrics": {k: v for k, v in (run.metrics or {}).items() if not isinstance(v, (dict, list))}}


def run_sft(cycle: Any, settings: Settings) -> dict[str, Any]:
    """SFT on the cycle's dataset version (an interrupted run of this cycle is resumed).

    It continues from the accepted (deployed) model when there is one; ``[train] base_model``
    only chooses the base for a start from scratch, so setting it never discards earlier gains.
    """
    from ccrl.agent.training.training import accepted_model

    base_model = settings.train.base_model if accepted_model(settings) is None else None
    return _train("sft", "the SFT trainer", cycle, settings, base_model=base_model,
                  max_steps=settings.train.max_steps)


def run_rl(cycle: Any, settings: Settings) -> dict[str, Any]:
    """The RL phase (GRPO) on top of this cycle's SFT run (or the accepted model)."""
    return _train("rl", "the RL trainer", cycle, settings, max_steps=settings.train.max_steps,
                  **({"parent_run_id": cycle.sft_run_id} if cycle.sft_run_id else {}))


def _progress_messages(label: str) -> Callable[[str], None]:
    """Progress lines from export/deploy, shown as the unit's status and logged."""
    def say(message: str) -> None:
        report_progress(None, f"{label}: {message}")

    return say


def run_export(cycle: Any, settings: Settings) -> dict[str, Any]:
    """Export the cycle's final model (RL if it ran, else SFT) to a verified GGUF: a new
    candidate model version (retention keeps ``keep_model_versions``)."""
    from ccrl.agent.release.versions import export_run

    run_id = cycle.rl_run_id or cycle.sft_run_id
    try:
        version = export_run(run_id, settings=settings, progress=_progress_messages("export"))
    except ModuleNotFoundError as exc:
        unavailable = _missing_extra(exc, "the GGUF export")
        if unavailable is None:
            raise
        raise unavailable from None
    return {"model_version_id": version.id, "number": version.number, "quant": version.quant,
            "size_bytes": version.size_bytes, "run_id": run_id}


def run_evaluate(cycle: Any, settings: Settings) -> dict[str, Any]:
    """Evaluate the cycle's model on the held-out split and apply the deployment gate (which
    records its decision on the model version, and rejects a version that fails)."""
    from ccrl.agent.evaluation.gate import evaluate_version as evaluate

    def progress(event: dict[str, Any]) -> None:
        report_progress(None, "evaluation: " + ", ".join(f"{k}={v}" for k, v in event.items() if k != "event"))

    if cycle.model_version_id:
        report = evaluate(cycle.model_version_id, settings=settings, progress=progress)
    else:  # export is off: judge the training run itself
        report = evaluate(training_run_id=cycle.rl_run_id or cycle.sft_run_id, settings=settings, progress=progress)
    return {
        "passed": bool(report["passed"]),
        "reason": report.get("reason"),
        "judged": report.get("judged"),
        "model_version": report.get("model_version"),
        "training_run_id": report.get("training_run_id"),
        "checks": [{k: c.get(k) for k in ("name", "passed", "candidate", "other")} for c in report.get("checks", [])],
    }


def run_deploy(cycle: Any, settings: Settings) -> dict[str, Any]:
    """Register the cycle's model version with Ollama as cc-claude-agent (:vN and :latest)."""
    from ccrl.agent.release.deploy import deploy_version as deploy

    version = deploy(cycle.model_version_id, settings=settings, progress=_progress_messages("deploy"))
    return {"model_version_id": version.id, "number": version.number, "ollama_tag": version.ollama_tag}


STEP_FUNCTIONS: dict[str, Callable[[Any, Settings], dict[str, Any]]] = {
    "dataset": run_dataset,
    "sft": run_sft,
    "rl": run_rl,
    "export": run_export,
    "evaluate": run_evaluate,
    "deploy": run_deploy,
}


def run_step(step: str, cycle_id: int, settings: Settings) -> dict[str, Any]:
    """Run one step for a cycle (called in the child process)."""
    fn = STEP_FUNCTIONS.get(step)
    if fn is None:
        raise ValueError(f"unknown step {step!r}; steps are {', '.join(STEP_FUNCTIONS)}")
    try:
        return fn(_cycle(cycle_id, settings), settings)
    except TrainingStopped as exc:
        raise StepStopped(str(exc)) from exc
