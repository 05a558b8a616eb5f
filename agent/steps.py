"""What each cycle step calls: thin adapters from the cycle to the modules that do the work.

Runs inside the step's child process (``child.py``). Each adapter reads what it needs from the
cycle row (dataset version, runs, model version), calls the module that owns the work, and
returns a small JSON-able dict that the agent records on the cycle. Adapters never fake a
result: when the module a step needs is not part of this installation, or an optional extra it
needs is not installed, the step raises ``StepUnavailable`` and the cycle records that.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ccrl.agent.child import StepUnavailable
from ccrl.agent.config import Settings

# Heavy packages that come with an extra: missing → "install the extra", not a step failure.
_EXTRA_FOR = {
    "torch": "train", "transformers": "train", "trl": "train", "peft": "train", "datasets": "train",
    "accelerate": "train", "bitsandbytes": "train", "matplotlib": "train",
    "llama_cpp": "gguf", "gguf": "gguf",
}


def require(module: str, attr: str, what: str) -> Callable[..., Any]:
    """``module.attr``, or ``StepUnavailable`` saying what is missing and what to do."""
    importlib.invalidate_caches()
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in _EXTRA_FOR:
            raise StepUnavailable(
                f"{what} needs the '{missing}' package: install it with pip install 'ccrl[{_EXTRA_FOR[missing]}]'"
            ) from None
        if exc.name and module.startswith(exc.name):
            raise StepUnavailable(f"{what} ({module}) is not part of this installation yet") from None
        raise
    fn = getattr(mod, attr, None)
    if fn is None:
        raise StepUnavailable(f"{what} ({module}.{attr}) is not part of this installation yet")
    return fn


def _cycle(cycle_id: int, settings: Settings) -> Any:
    from ccrl.agent.db import session_scope
    from ccrl.agent.models import Cycle

    with session_scope(settings) as session:
        cycle = session.get(Cycle, cycle_id)
        if cycle is None:
            raise RuntimeError(f"cycle id {cycle_id} does not exist")
        session.expunge(cycle)
        return cycle


def run_dataset(cycle: Any, settings: Settings) -> dict[str, Any]:
    """Build a new dataset version from every trace captured so far."""
    build = require("ccrl.agent.datasets", "build_dataset", "the dataset builder")
    version = build(settings=settings)
    return {"dataset_version_id": version.id, "number": version.number, "trace_count": version.trace_count}


def run_sft(cycle: Any, settings: Settings) -> dict[str, Any]:
    """SFT on the cycle's dataset version (resuming this cycle's run if it was interrupted)."""
    train = require("ccrl.agent.training", "run_training", "the SFT trainer")
    run = train(phase="sft", dataset_version_id=cycle.dataset_version_id, cycle=cycle.number, settings=settings)
    return {"run_id": run.id, "metrics": run.metrics}


def run_rl(cycle: Any, settings: Settings) -> dict[str, Any]:
    """The RL phase (GRPO) on top of this cycle's SFT run."""
    train = require("ccrl.agent.training", "run_training", "the RL trainer")
    require("ccrl.trainers.rl", "train_rl", "the RL trainer")
    run = train(phase="rl", dataset_version_id=cycle.dataset_version_id, cycle=cycle.number,
                parent_run_id=cycle.sft_run_id, settings=settings)
    return {"run_id": run.id, "metrics": run.metrics}


def run_export(cycle: Any, settings: Settings) -> dict[str, Any]:
    """Export the cycle's final model (RL if it ran, else SFT) to GGUF as a new model version."""
    export = require("ccrl.agent.versions", "export_run", "the GGUF export")
    run_id = cycle.rl_run_id or cycle.sft_run_id
    version = export(run_id=run_id, settings=settings)
    return {"model_version_id": version.id, "number": version.number}


def run_evaluate(cycle: Any, settings: Settings) -> dict[str, Any]:
    """Evaluate the cycle's model and apply the deployment gate."""
    evaluate = require("ccrl.agent.evaluation", "evaluate_version", "the evaluation")
    report = evaluate(model_version_id=cycle.model_version_id, settings=settings)
    return {"passed": bool(report["passed"]), "gate": report}


def run_deploy(cycle: Any, settings: Settings) -> dict[str, Any]:
    """Register the cycle's model version with Ollama as cc-claude-agent."""
    deploy = require("ccrl.agent.deploy", "deploy_version", "the Ollama deploy")
    version = deploy(model_version_id=cycle.model_version_id, settings=settings)
    return {"model_version_id": version.id, "ollama_tag": version.ollama_tag}


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
    return fn(_cycle(cycle_id, settings), settings)
