"""The agent's side of training: choose what to train from and on, record the run, run the
trainer, record how it ended. The trainers (``ccrl.trainers``) never touch the database; this
module is where runs become ``TrainingRun`` rows.

Continuity across cycles (SFT)
------------------------------
A cycle's SFT starts from the latest accepted model, i.e. the model version currently deployed
(its RL run's merged model if it had one, else its SFT run's), so what an earlier RL phase
gained is kept rather than retrained from scratch. It then trains on the traces that model has
not seen plus a replay sample of older ones (``REPLAY_FRACTION``), which guards against
forgetting without paying for every old trace again. With no accepted model yet, with
``from_base=True`` (``ccrl train --from-base``) or with an explicit base model, the run starts
from the base model and trains on the whole dataset version.

Resuming
--------
A run that was killed (SIGKILL, power loss) or stopped stays ``running``/``interrupted`` in the
store. The next ``run_training`` for the same phase and cycle finds it, sees that no live
process holds its folder's lock, and continues it from its last checkpoint with its original
settings, dataset and start model, so it ends at the same total number of steps.

torch, transformers and datasets are imported only inside the functions that train.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import select

from ccrl.agent.core.config import Settings, get_settings
from ccrl.agent.store.db import ensure_private_dir, session_scope
from ccrl.agent.store.models import DatasetVersion, ModelVersion, TrainingRun, utcnow

REPLAY_FRACTION = 0.3
"""Old examples replayed per new example when continuing from an accepted model."""
RESUMABLE = ("running", "interrupted")
TRACE_KEY_COLUMNS = ("trace_key", "trace_id")
"""Dataset columns that identify the trace a row came from (used to find new rows)."""

Emit = Callable[[dict[str, Any]], None]


class TrainingError(RuntimeError):
    """Training cannot start or failed for an expected reason; the message says what to do."""


class TrainingStopped(RuntimeError):
    """The run ended early because ``should_stop`` asked it to (it resumes from its checkpoint);
    a cycle's step runner turns this into its own ``StepStopped``."""


@dataclass
class StartPoint:
    """The model a run starts from."""

    source: str
    """What the trainer loads: a local folder or a hub id."""
    name: str
    """Shown to the user and stored as the run's ``base_model``."""
    reason: str
    """Why this model."""
    parent_run_id: int | None = None
    """The run that produced the start model, when continuing from an accepted model."""
    seen_dataset_version_id: int | None = None
    """The dataset version the start model was trained on (for new-vs-replay rows)."""


def _log_emit() -> Emit:
    import structlog

    log = structlog.get_logger("ccrl.training")

    def emit(event: dict[str, Any]) -> None:
        fields = dict(event)
        name = fields.pop("event", "training")
        if name == "notice":
            log.info(fields.pop("message", ""), **fields)
        else:
            log.info(name, **fields)

    return emit


def _with_child_progress(emit: Emit, report_progress: Callable[..., None] | None) -> Emit:
    """Also report progress through ``report_progress`` (the step runner's, when this runs as a
    cycle step; None otherwise)."""
    if report_progress is None:
        return emit

    def wrapped(event: dict[str, Any]) -> None:
        if event.get("event") == "train.progress" and event.get("max_steps"):
            step, total = event.get("step", 0), event["max_steps"]
            label = "RL" if event.get("phase") == "rl" else "SFT"
            report_progress(step / total, f"{label} step {step}/{total}", step=step, max_steps=total)
        emit(event)

    return wrapped


def models_dir(settings: Settings) -> Path:
    """``CCRL_HOME/models``."""
    return settings.home / "models"


def latest_dataset_version(settings: Settings, dataset_version_id: int | None = None) -> DatasetVersion:
    """The dataset version to train on: the one asked for, else the newest."""
    with session_scope(settings) as session:
        if dataset_version_id is not None:
            version = session.get(DatasetVersion, dataset_version_id)
            if version is None:
                raise TrainingError(f"dataset version id {dataset_version_id} does not exist (see `ccrl status`)")
        else:
            version = session.exec(select(DatasetVersion).order_by(DatasetVersion.number.desc())).first()
            if version is None:
                raise TrainingError("there is no dataset yet: run `ccrl build-dataset` first (after `ccrl import`)")
        session.expunge(version)
        return version


def sft_dataset_path(version: DatasetVersion) -> Path:
    """The folder of a dataset version that SFT loads (a ``save_to_disk`` DatasetDict).

    The version folder itself when it is one, else its ``sft`` (mixture) or ``trajectory``
    sub-folder.
    """
    root = Path(version.path)
    for candidate in (root, root / "sft", root / "trajectory"):
        if (candidate / "dataset_dict.json").is_file() or (candidate / "dataset_info.json").is_file():
            return candidate
    raise TrainingError(
        f"dataset version {version.number} at {root} holds no dataset the SFT trainer can load "
        "(expected a datasets `save_to_disk` folder); rebuild it with `ccrl build-dataset`"
    )


def accepted_model(settings: Settings) -> StartPoint | None:
    """The latest accepted model: the deployed model version's run output, if its merged
    weights are still on disk."""
    with session_scope(settings) as session:
        deployed = session.exec(
            select(ModelVersion)
            .where(ModelVersion.status == "deployed")
            .order_by(ModelVersion.deployed_at.desc(), ModelVersion.number.desc())
        ).first()
        if deployed is None:
            return None
        run_id = deployed.rl_run_id or deployed.sft_run_id
        run = session.get(TrainingRun, run_id) if run_id else None
        if run is None or not run.output_dir:
            return None
        merged = Path(run.output_dir) / "merged"
        if not (merged / "config.json").is_file():
            return None
        return StartPoint(
            source=str(merged),
            name=f"model v{deployed.number} (run {run.id})",
            reason=f"continuing from the accepted (deployed) model v{deployed.number}, so earlier gains are kept",
            parent_run_id=run.id,
            seen_dataset_version_id=run.dataset_version_id,
        )


def choose_start(settings: Settings, *, from_base: bool, base_model: str | None) -> StartPoint:
    """Where a new SFT run starts: the accepted model, or the base model (and why)."""
    from ccrl.trainers.base_models import choose_base_model

    if not from_base and not base_model:
        accepted = accepted_model(settings)
        if accepted is not None:
            return accepted
        why_base = "no accepted model yet"
    elif from_base:
        why_base = "--from-base"
    else:
        why_base = "base model given explicitly"
    choice = choose_base_model(base_model, models_dir(settings) / "base")
    return StartPoint(source=choice.source, name=choice.name, reason=f"{why_base}; {choice.reason}")


def _trace_keys(dataset: Any) -> list[str] | None:
    for column in TRACE_KEY_COLUMNS:
        if column in dataset.column_names:
            return [str(v) for v in dataset[column]]
    return None


def build_continuation_dataset(
    new_path: Path, seen_path: Path, out_dir: Path, *, replay_fraction: float = REPLAY_FRACTION, seed: int = 0
) -> tuple[Path, dict[str, int]] | None:
    """The train split for a continued run: rows of ``new_path`` whose trace the start model has
    not seen (not in ``seen_path``'s train split) plus a replay sample of the others. The eval
    split is kept whole. Returns None when rows cannot be told apart (no trace key column), in
    which case the caller trains on the whole version.
    """
    from datasets import DatasetDict, concatenate_datasets, load_from_disk

    new, seen = load_from_disk(str(new_path)), load_from_disk(str(seen_path))
    train = new["train"] if isinstance(new, DatasetDict) else new
    seen_train = seen["train"] if isinstance(seen, DatasetDict) else seen
    keys, seen_keys = _trace_keys(train), _trace_keys(seen_train)
    if keys is None or seen_keys is None:
        return None
    seen_set = set(seen_keys)
    fresh = [i for i, k in enumerate(keys) if k not in seen_set]
    old = [i for i, k in enumerate(keys) if k in seen_set]
    rng = random.Random(seed)
    replay = sorted(rng.sample(old, min(len(old), max(1, round(len(fresh) * replay_fraction))))) if old and fresh else []
    if not fresh:
        raise TrainingError(
            "the accepted model has already seen every trace of this dataset version: nothing new to learn "
            "(capture more sessions, or retrain with --from-base)"
        )
    rows = concatenate_datasets([train.select(fresh), train.select(replay)]) if replay else train.select(fresh)
    splits = {"train": rows}
    if isinstance(new, DatasetDict):
        for name in new:
            if name != "train":
                splits[name] = new[name]
    ensure_private_dir(out_dir.parent)
    DatasetDict(splits).save_to_disk(str(out_dir))
    return out_dir, {"new_examples": len(fresh), "replay_examples": len(replay), "skipped_seen": len(old) - len(replay)}


def _sft_config(settings: Settings, stored: dict[str, Any] | None, quant: str | None, max_steps: int | None) -> Any:
    from ccrl.trainers.sft import SFTRunConfig

    if stored is not None:
        return SFTRunConfig.from_dict(stored)
    train = settings.train
    config = SFTRunConfig(
        lora_r=train.lora_r,
        learning_rate=train.learning_rate,
        num_train_epochs=float(train.num_epochs),
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        max_length=train.max_length,
    )
    if quant is not None:
        config.quant = quant
    if max_steps is not None:
        config.max_steps = max_steps
    return config


def resumable_run(settings: Settings, phase: str, cycle: int | None) -> TrainingRun | None:
    """The unfinished run of this phase (and cycle) that no live process is training, if any.

    Raises ``TrainingError`` when one is being trained right now by another process.
    """
    from ccrl.trainers.sft import run_dir_is_locked

    with session_scope(settings) as session:
        query = select(TrainingRun).where(TrainingRun.phase == phase, TrainingRun.status.in_(RESUMABLE))
        query = query.where(TrainingRun.cycle == cycle) if cycle is not None else query.where(TrainingRun.cycle.is_(None))
        run = session.exec(query.order_by(TrainingRun.id.desc())).first()
        if run is None:
            return None
        session.expunge(run)
    if run.output_dir and run_dir_is_locked(Path(run.output_dir)):
        raise TrainingError(f"training run {run.id} is in progress in another process ({run.output_dir})")
    return run


def _update(settings: Settings, run_id: int, **values: Any) -> TrainingRun:
    with session_scope(settings) as session:
        run = session.get(TrainingRun, run_id)
        for key, value in values.items():
            setattr(run, key, value)
        session.add(run)
        session.flush()
        session.refresh(run)
        session.expunge(run)
        return run


def _launch_plan(settings: Settings) -> Any:
    """``[train] accelerate_config`` as a launch plan (None: one process), checked before a run
    is recorded: a name that does not exist, DeepSpeed missing or too few GPUs fail here."""
    from ccrl.trainers.launch import LaunchError, resolve_launch

    try:
        return resolve_launch(settings.train.accelerate_config, settings.train.num_processes)
    except LaunchError as exc:
        raise TrainingError(str(exc)) from exc


def _run_sft(
    settings: Settings,
    *,
    dataset_version_id: int | None,
    cycle: int | None,
    from_base: bool,
    quant: str | None,
    max_steps: int | None,
    base_model: str | None,
    resume: bool,
    emit: Emit,
    progress_bar: bool | None,
    should_stop: Callable[[], bool] | None,
    options: dict[str, Any] | None = None,
) -> TrainingRun:
    from ccrl.trainers.base_models import BaseModelError
    from ccrl.trainers.sft import SFTError, SFTStopped, train_sft, train_sft_launched

    plan = _launch_plan(settings)
    previous = resumable_run(settings, "sft", cycle)
    if previous is not None and not {"sft", "dataset_path", "model_source"} <= set(previous.config or {}):
        _update(settings, previous.id, status="failed", error="interrupted before training started",
                finished_at=utcnow())
        previous = None
    if previous is not None:
        try:
            _sft_config(settings, previous.config["sft"], None, None)
        except SFTError as exc:  # saved by another ccrl version with settings this one lacks
            _update(settings, previous.id, status="failed", error=f"cannot resume: {exc}", finished_at=utcnow())
            emit({"event": "notice", "message": f"SFT run {previous.id} cannot be resumed ({exc}); starting a new run."})
            previous = None
    if previous is not None and not resume:
        _update(settings, previous.id, status="failed", error="abandoned: a new run was started with --no-resume",
                finished_at=utcnow())
        previous = None

    if previous is not None:
        run = previous
        stored = run.config
        config = _sft_config(settings, stored["sft"], None, None)
        dataset_path, source = Path(stored["dataset_path"]), stored["model_source"]
        emit({"event": "notice", "message": f"Resuming SFT run {run.id} from its last checkpoint "
              f"with its original settings (start model: {run.base_model})."})
        run = _update(settings, run.id, status="running", error=None)
    else:
        from ccrl.trainers.base_models import cuda_available
        from ccrl.trainers.sft import resolve_quant

        try:  # before anything is recorded: a run that cannot start leaves no row behind
            resolve_quant(quant or "auto", cuda_available())
        except SFTError as exc:
            raise TrainingError(str(exc)) from exc
        version = latest_dataset_version(settings, dataset_version_id)
        dataset_path = sft_dataset_path(version)
        try:
            start = choose_start(settings, from_base=from_base, base_model=base_model)
        except BaseModelError as exc:
            raise TrainingError(str(exc)) from exc
        config = _sft_config(settings, None, quant, max_steps)
        if options:  # per-run overrides of any SFTRunConfig field (e.g. `ccrl demo`'s budgets)
            try:
                config = config.from_dict({**config.to_dict(), **options})
            except SFTError as exc:
                raise TrainingError(str(exc)) from exc
        continuation: dict[str, int] = {}
        with session_scope(settings) as session:
            run = TrainingRun(
                phase="sft", status="running", dataset_version_id=version.id, parent_run_id=start.parent_run_id,
                base_model=start.name, cycle=cycle, started_at=utcnow(),
            )
            session.add(run)
            session.flush()
            run_id = run.id
        output_dir = ensure_private_dir(models_dir(settings) / "sft") / f"run-{run_id}"
        if start.seen_dataset_version_id is not None:
            seen = latest_dataset_version(settings, start.seen_dataset_version_id)
            built = build_continuation_dataset(dataset_path, sft_dataset_path(seen), output_dir / "data")
            if built is not None:
                dataset_path, continuation = built
            else:
                emit({"event": "notice", "message": "The dataset has no trace keys: training on the whole version."})
        record = {
            "sft": config.to_dict(), "dataset_path": str(dataset_path), "model_source": start.source,
            "start": {"name": start.name, "reason": start.reason}, "dataset_version": version.number,
            **({"continuation": continuation} if continuation else {}),
        }
        run = _update(settings, run_id, output_dir=str(output_dir), config=record)
        source = start.source
        emit({"event": "start", "run_id": run.id, "phase": "sft", "base_model": start.name, "reason": start.reason,
              "dataset_version": version.number, "output_dir": str(output_dir)})

    try:
        if plan is not None:  # several processes (GPUs): accelerate launch runs the same trainer per rank
            result = train_sft_launched(plan, dataset_path, Path(run.output_dir), source, config, emit=emit,
                                        should_stop=should_stop)
        else:
            result = train_sft(dataset_path, Path(run.output_dir), source, config, emit=emit,
                               progress_bar=progress_bar, should_stop=should_stop)
    except SFTStopped as exc:
        _update(settings, run.id, status="interrupted", error=str(exc))
        raise TrainingStopped(str(exc)) from exc
    except KeyboardInterrupt:
        _update(settings, run.id, status="interrupted", error="interrupted (Ctrl-C); `ccrl train` resumes it")
        raise
    except (SFTError, BaseModelError) as exc:
        _update(settings, run.id, status="failed", error=str(exc), finished_at=utcnow())
        raise TrainingError(str(exc)) from exc
    except Exception as exc:
        _update(settings, run.id, status="failed", error=f"{type(exc).__name__}: {exc}", finished_at=utcnow())
        raise
    metrics = {**result.metrics, "artifacts": result.artifacts}
    return _update(settings, run.id, status="completed", metrics=json.loads(json.dumps(metrics, default=str)),
                   error=None, finished_at=utcnow())


def run_training(
    phase: str = "sft",
    *,
    dataset_version_id: int | None = None,
    cycle: int | None = None,
    parent_run_id: int | None = None,
    from_base: bool = False,
    quant: str | None = None,
    max_steps: int | None = None,
    base_model: str | None = None,
    resume: bool = True,
    settings: Settings | None = None,
    emit: Emit | None = None,
    progress_bar: bool | None = None,
    should_stop: Callable[[], bool] | None = None,
    options: dict[str, Any] | None = None,
    report_progress: Callable[..., None] | None = None,
) -> TrainingRun:
    """Run (or resume) one training run of ``phase`` and return its ``TrainingRun`` row.

    ``dataset_version_id`` defaults to the newest version; ``cycle`` ties the run to an agent
    cycle (an interrupted run of the same cycle is resumed); ``quant`` is ``auto``/``4bit``/
    ``none``; ``max_steps`` caps the run. ``emit`` receives events (start, notices, progress);
    by default they are logged with structlog. ``should_stop`` is polled during training (a cycle
    step passes the agent's stop request; a stop raises ``TrainingStopped``) and
    ``report_progress(fraction, message, **fields)`` receives step progress (the cycle step's
    reporter). ``phase="rl"`` (GRPO, ``ccrl.agent.training.rl_training``)
    starts from ``parent_run_id`` (an SFT run) or the latest completed SFT run; ``options``
    override fields of the phase's ``SFTRunConfig`` / ``RLConfig`` for this run (a resumed run
    keeps its original settings). Raises ``TrainingError`` for expected problems.
    """
    if phase not in PHASES:
        raise TrainingError(f"the {phase!r} training phase is not available here; phases: {', '.join(PHASES)}")
    if parent_run_id is not None and phase == "sft":
        raise TrainingError("an SFT run starts from the accepted model or the base, not from a parent run")
    if options and phase == "sft":
        from ccrl.trainers.sft import SFTError, SFTRunConfig

        try:  # unknown keys fail here, before a base model is prepared or a run recorded
            SFTRunConfig.from_dict(options)
        except SFTError as exc:
            raise TrainingError(str(exc)) from exc
    settings = settings or get_settings()
    return PHASES[phase](
        settings,
        dataset_version_id=dataset_version_id,
        cycle=cycle,
        from_base=from_base,
        quant=quant,
        max_steps=max_steps,
        base_model=base_model,
        resume=resume,
        emit=_with_child_progress(emit or _log_emit(), report_progress),
        progress_bar=progress_bar,
        should_stop=should_stop,
        options=options or {},
        **({} if phase == "sft" else {"parent_run_id": parent_run_id}),
    )


def _run_rl(settings: Settings, **kwargs: Any) -> TrainingRun:
    """The RL phase (GRPO against the behavioural reward): ``ccrl.agent.training.rl_training``."""
    from ccrl.agent.training.rl_training import run_rl

    if settings.train.accelerate_config:
        kwargs["emit"]({"event": "notice", "message": "train.accelerate_config applies to SFT only: "
                        "the RL phase runs in one process (on the first GPU)."})

    return run_rl(settings, **kwargs)


PHASES: dict[str, Callable[..., TrainingRun]] = {"sft": _run_sft, "rl": _run_rl}
"""Training phases by name."""


def run_json(run: TrainingRun) -> dict[str, Any]:
    """A run as JSON (what ``ccrl train --json`` prints)."""
    return json.loads(run.model_dump_json())
