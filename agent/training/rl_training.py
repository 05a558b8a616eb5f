"""The RL phase of training (``ccrl train --phase rl``, the cycle's ``rl`` step): choose the SFT
model and the RL prompt set, record the run, run ``ccrl.trainers.rl.train_rl``, record how it
ended. ``ccrl.agent.training.training.run_training`` dispatches here.

What runs: GRPO (TRL's ``GRPOTrainer``), PPO's clipped objective with group-relative
advantages instead of a value model, against the behavioural reward; TRL 1.16 has no PPO
trainer. ``algorithm="rloo"`` selects TRL's ``RLOOTrainer``.

Start model: the SFT run given as ``parent_run_id`` (the cycle passes its own SFT run), else
the latest completed SFT run. Its merged model is the base of a new LoRA adapter and the KL
reference; an SFT run without ``merged/`` has its adapter merged first. The prompts are the RL
prompt set of the dataset version asked for, else the newest (``<version>/rl_prompts``).

Settings: ``[train] num_episodes`` (episodes, 100), ``[train] lora_r`` and ``[reward]`` (the
five weights) feed ``RLConfig``; everything else keeps ``RLConfig``'s defaults (notably the RL
learning rate 1.4e-5: ``[train] learning_rate`` is SFT's). ``options`` override any
``RLConfig`` field for one run (``ccrl train --episodes/--num-generations/--algorithm``).

A killed or stopped run stays ``running``/``interrupted`` and the next start of the phase (same
cycle) resumes it from its last checkpoint with its original settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlmodel import select

from ccrl.agent.core.config import Settings
from ccrl.agent.store.db import ensure_private_dir, session_scope
from ccrl.agent.store.models import DatasetVersion, TrainingRun, utcnow
from ccrl.agent.training.training import (
    Emit,
    TrainingError,
    TrainingStopped,
    _update,
    latest_dataset_version,
    models_dir,
    resumable_run,
)

ADAPTER_DIR = "final"
MERGED_DIR = "merged"


def sft_run_for_rl(settings: Settings, parent_run_id: int | None) -> TrainingRun:
    """The SFT run the RL phase starts from: ``parent_run_id``, else the latest completed one."""
    with session_scope(settings) as session:
        if parent_run_id is not None:
            run = session.get(TrainingRun, parent_run_id)
            if run is None or run.phase != "sft":
                raise TrainingError(f"run {parent_run_id} is not an SFT run: the RL phase starts from an SFT model")
            if run.status != "completed":
                raise TrainingError(f"SFT run {parent_run_id} has not completed ({run.status}): finish it first "
                                    "(`ccrl train --phase sft` resumes it)")
        else:
            run = session.exec(select(TrainingRun).where(TrainingRun.phase == "sft", TrainingRun.status == "completed")
                               .order_by(TrainingRun.id.desc())).first()
            if run is None:
                raise TrainingError("there is no completed SFT run to start from: run `ccrl train --phase sft` first")
        session.expunge(run)
    sft_start_model(run)
    return run


def sft_start_model(run: TrainingRun) -> Path:
    """The SFT run's merged model, else its adapter (which the trainer merges first)."""
    root = Path(run.output_dir or "")
    for candidate, marker in ((root / MERGED_DIR, "config.json"), (root / ADAPTER_DIR, "adapter_config.json")):
        if (candidate / marker).is_file():
            return candidate
    raise TrainingError(f"SFT run {run.id} left no model in {root} (neither {MERGED_DIR}/ nor {ADAPTER_DIR}/): "
                        "train a new one with `ccrl train --phase sft`")


def rl_prompts_path(version: DatasetVersion) -> Path:
    """The RL prompt set of a dataset version (a ``save_to_disk`` DatasetDict)."""
    path = Path(version.path) / "rl_prompts"
    if not (path / "dataset_dict.json").is_file():
        raise TrainingError(f"dataset version {version.number} at {version.path} has no RL prompt set "
                            "(rl_prompts/); rebuild it with `ccrl build-dataset`")
    return path


def rl_config(settings: Settings, *, quant: str | None, max_steps: int | None, options: dict[str, Any]) -> Any:
    """``RLConfig`` from the settings, the command's options and the per-run overrides."""
    from ccrl.trainers.reward import RewardWeights
    from ccrl.trainers.rl import RLConfig, RLError

    try:
        values = RLConfig(episodes=settings.train.num_episodes, lora_r=settings.train.lora_r,
                          lora_alpha=2 * settings.train.lora_r,
                          reward_weights=RewardWeights.from_settings(settings.reward).as_dict()).to_dict()
        if quant is not None:
            values["quant"] = quant
        if max_steps is not None:
            values["max_steps"] = max_steps
        values.update(options)
        return RLConfig.from_dict(values)
    except (RLError, ValueError) as exc:
        raise TrainingError(str(exc)) from None


def run_rl(
    settings: Settings,
    *,
    dataset_version_id: int | None,
    cycle: int | None,
    parent_run_id: int | None,
    from_base: bool,
    quant: str | None,
    max_steps: int | None,
    base_model: str | None,
    resume: bool,
    emit: Emit,
    progress_bar: bool | None,
    should_stop: Any,
    options: dict[str, Any] | None = None,
) -> TrainingRun:
    """Run (or resume) one RL run and return its ``TrainingRun`` row (see the module docstring)."""
    from ccrl.trainers.base_models import BaseModelError
    from ccrl.trainers.rl import RLError, RLStopped, train_rl

    if from_base or base_model:
        raise TrainingError("the RL phase starts from the latest SFT model; --from-base and --base-model "
                            "choose where --phase sft starts")
    previous = resumable_run(settings, "rl", cycle)
    if previous is not None and not {"rl", "prompts_path", "start_model"} <= set(previous.config or {}):
        _update(settings, previous.id, status="failed", error="interrupted before training started", finished_at=utcnow())
        previous = None
    if previous is not None and not resume:
        _update(settings, previous.id, status="failed", error="abandoned: a new run was started with --no-resume",
                finished_at=utcnow())
        previous = None

    if previous is not None:
        run = previous
        stored = run.config
        config = rl_config(settings, quant=None, max_steps=None, options=stored["rl"])
        prompts, start = Path(stored["prompts_path"]), stored["start_model"]
        emit({"event": "notice", "message": f"Resuming RL run {run.id} from its last checkpoint with its original "
              f"settings (start model: {run.base_model})."})
        run = _update(settings, run.id, status="running", error=None)
    else:
        sft = sft_run_for_rl(settings, parent_run_id)
        version = latest_dataset_version(settings, dataset_version_id)
        prompts = rl_prompts_path(version)
        start = str(sft_start_model(sft))
        config = rl_config(settings, quant=quant, max_steps=max_steps, options=dict(options or {}))
        name = f"SFT run {sft.id} ({sft.base_model})"
        with session_scope(settings) as session:
            row = TrainingRun(phase="rl", status="running", dataset_version_id=version.id, parent_run_id=sft.id,
                              base_model=name, cycle=cycle, started_at=utcnow())
            session.add(row)
            session.flush()
            run_id = row.id
        output_dir = ensure_private_dir(models_dir(settings) / "rl") / f"run-{run_id}"
        record = {"rl": config.to_dict(), "prompts_path": str(prompts), "start_model": start,
                  "dataset_version": version.number, "sft_run_id": sft.id}
        run = _update(settings, run_id, output_dir=str(output_dir), config=record)
        emit({"event": "start", "run_id": run.id, "phase": "rl", "algorithm": config.algorithm, "base_model": name,
              "reason": "the RL phase refines the latest SFT model (a new LoRA adapter on its merged weights; "
                        "the KL reference is that SFT model)",
              "dataset_version": version.number, "output_dir": str(output_dir), "episodes": config.episodes})

    try:
        result = train_rl(prompts, Path(run.output_dir), start, config, emit=emit,
                          progress_bar=progress_bar, should_stop=should_stop)
    except RLStopped as exc:
        _update(settings, run.id, status="interrupted", error=str(exc))
        raise TrainingStopped(str(exc)) from exc
    except KeyboardInterrupt:
        _update(settings, run.id, status="interrupted", error="interrupted (Ctrl-C); `ccrl train --phase rl` resumes it")
        raise
    except (RLError, BaseModelError) as exc:
        _update(settings, run.id, status="failed", error=str(exc), finished_at=utcnow())
        raise TrainingError(str(exc)) from exc
    except Exception as exc:
        _update(settings, run.id, status="failed", error=f"{type(exc).__name__}: {exc}", finished_at=utcnow())
        raise
    metrics = {**result.metrics, "artifacts": result.artifacts}
    return _update(settings, run.id, status="completed", metrics=json.loads(json.dumps(metrics, default=str)),
                   error=None, finished_at=utcnow())
