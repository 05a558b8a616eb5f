"""What was built from purged data, and removing it (``ccrl purge --derived``).

Purged data is known by its tombstones (``purged_sessions``): a session purged whole, or one a
``--before`` purge thinned (its traces missing from the store are the purged ones). A purge
being previewed adds the traces it is about to delete.

Derived from it:

- **dataset versions** holding at least one purged trace: read from the version's own JSONL
  rows, which carry ``trace_id`` and ``session_id``;
- **training runs** on such a version, and runs started from such a run (``parent_run_id``:
  an RL run's SFT run; a cycle's SFT run continues from the accepted model's run), to any depth;
- **model versions** (GGUF files, Ollama tags) from such runs or datasets;
- **evaluations** (details files: per-decision results and generated plans) on such a dataset
  or of such a model or run, and the A/B votes on them.

Removing them deletes the Ollama tags first (through the deploy client; when the deployed model
goes, ``latest`` is rolled back to an earlier version built without purged data, or deleted),
then the rows in one transaction, then the files (only inside ``CCRL_HOME``, or a dataset
folder ``--out`` wrote, recognised by its layout). Cycles that point at removed rows keep their
history with those links cleared; an unfinished one is marked failed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import select

from ccrl.agent.core.config import Settings
from ccrl.agent.core.owned_paths import within
from ccrl.agent.store.db import session_scope

DERIVED_COMMAND = "ccrl purge --derived"
# What ``build_dataset`` writes into a version folder (an ``--out`` folder outside CCRL_HOME is
# emptied of exactly these, never of anything else the user keeps there).
DATASET_ENTRIES = ("dataset_dict.json", "train", "eval", "rl_prompts", "jsonl", "tools.json", "README.md")
_CHUNK = 500
LOCK_TIMEOUT_S = 600.0


class DerivedError(RuntimeError):
    """Derived artifacts could not be removed; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# Which traces are purged


@dataclass
class PurgedData:
    """Tells whether a dataset row (trace id, session id) is purged data."""

    whole: set[str] = field(default_factory=set)
    partial: set[str] = field(default_factory=set)
    traces: set[tuple[int, str]] = field(default_factory=set)  # about to be purged (a preview)
    stored: set[tuple[int, str]] = field(default_factory=set)  # the partial sessions' traces left

    def holds(self, trace_id: Any, session_id: Any) -> bool:
        if session_id in self.whole:
            return True
        key = (trace_id, session_id)
        return key in self.traces or (session_id in self.partial and key not in self.stored)

    @property
    def empty(self) -> bool:
        return not (self.whole or self.partial or self.traces)


def _chunks(items: Any) -> Any:
    items = list(items)
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


def purged_data(settings: Settings, sessions: set[str] = frozenset(),  # type: ignore[assignment]
                trace_ids: set[int] = frozenset()) -> PurgedData:  # type: ignore[assignment]
    """Every purge recorded so far (tombstones), plus ``sessions`` (whole) and ``trace_ids``
    that a purge not yet carried out will delete."""
    from ccrl.agent.store.models import PurgedSession, Trace

    data = PurgedData(whole=set(sessions))
    with session_scope(settings) as db:
        for session_id, before in db.exec(select(PurgedSession.session_id, PurgedSession.before)).all():
            (data.partial if before is not None else data.whole).add(session_id)
        for chunk in _chunks(trace_ids):
            data.traces.update(db.exec(select(Trace.id, Trace.session_id).where(Trace.id.in_(chunk))).all())
        data.partial -= data.whole
        for chunk in _chunks(data.partial):
            data.stored.update(db.exec(select(Trace.id, Trace.session_id).where(Trace.session_id.in_(chunk))).all())
    data.stored -= data.traces
    return data


# ---------------------------------------------------------------------------------------------
# Finding


@dataclass
class DatasetHit:
    id: int
    number: int
    path: str
    purged_traces: int  # distinct purged traces among its rows; -1: all of it (a purge of everything)


@dataclass
class RunHit:
    id: int
    phase: str
    output_dir: str
    why: str


@dataclass
class ModelHit:
    id: int
    number: int
    status: str
    gguf_path: str | None
    ollama_tags: list[str]


@dataclass
class EvaluationHit:
    id: int
    subject: str
    details_path: str | None


@dataclass
class Derived:
    """Everything that still holds purged data."""

    datasets: list[DatasetHit] = field(default_factory=list)
    runs: list[RunHit] = field(default_factory=list)
    models: list[ModelHit] = field(default_factory=list)
    evaluations: list[EvaluationHit] = field(default_factory=list)
    ab_votes: list[int] = field(default_factory=list)
    cycles: list[int] = field(default_factory=list)  # cycle numbers linking to any of the above
    unreadable: list[DatasetHit] = field(default_factory=list)  # rows gone: cannot tell

    @property
    def empty(self) -> bool:
        return not (self.datasets or self.runs or self.models or self.evaluations or self.ab_votes)

    def counts(self) -> dict[str, int]:
        return {"dataset_versions": len(self.datasets), "training_runs": len(self.runs),
                "model_versions": len(self.models), "ollama_tags": sum(len(m.ollama_tags) for m in self.models),
                "evaluations": len(self.evaluations), "ab_votes": len(self.ab_votes)}

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts()}


def _dataset_rows(path: Path) -> list[Path] | None:
    """The JSONL files that name every trace of a dataset version, or None when none are left.

    The builder writes exactly one RL prompt row per trace it keeps (next to its trajectory and
    workflow rows), so the two ``rl_prompts`` files name every trace at a fraction of the bytes;
    a version without them is read whole."""
    from ccrl.agent.core.dataset_config import JSONL_FILES

    present = [path / "jsonl" / name for name in JSONL_FILES if (path / "jsonl" / name).is_file()]
    per_trace = [p for p in present if p.name.startswith("rl_prompts.")]
    return per_trace or present or None


def _purged_traces(files: list[Path], purged: PurgedData) -> int:
    hits: set[tuple[Any, Any]] = set()
    for file in files:
        with open(file, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                key = (row.get("trace_id"), row.get("session_id"))
                if key not in hits and purged.holds(*key):
                    hits.add(key)
    return len(hits)


def _tags(version: Any, deployed_id: int | None) -> list[str]:
    tags = [version.ollama_tag] if version.ollama_tag else []
    if version.id == deployed_id:
        latest = ((version.metrics or {}).get("ollama") or {}).get("latest")
        if latest is None and version.ollama_tag:
            latest = version.ollama_tag.rsplit(":", 1)[0] + ":latest"
        if latest and latest not in tags:
            tags.append(latest)
    return tags


def find_derived(settings: Settings, purged: PurgedData, *, everything: bool = False) -> Derived:
    """What still holds ``purged`` data. ``everything``: every dataset version does (a local
    store purged whole), whether or not its rows can still be read."""
    from ccrl.agent.release.versions import deployed_version
    from ccrl.agent.store.models import ABVote, Cycle, DatasetVersion, Evaluation, ModelVersion, TrainingRun

    found = Derived()
    with session_scope(settings) as db:
        for version in db.exec(select(DatasetVersion).order_by(DatasetVersion.number)).all():
            hit = DatasetHit(id=version.id, number=version.number, path=version.path, purged_traces=-1)
            if everything:
                found.datasets.append(hit)
                continue
            files = _dataset_rows(Path(version.path))
            if files is None:
                found.unreadable.append(hit)
                continue
            hit.purged_traces = _purged_traces(files, purged) if not purged.empty else 0
            if hit.purged_traces:
                found.datasets.append(hit)
        dataset_ids = {d.id for d in found.datasets}
        number_of = {d.id: d.number for d in found.datasets}

        runs = {r.id: r for r in db.exec(select(TrainingRun).order_by(TrainingRun.id)).all()}
        why = {rid: f"trained on dataset v{number_of[r.dataset_version_id]}"
               for rid, r in runs.items() if r.dataset_version_id in dataset_ids}
        grew = True
        while grew:  # runs started from a tainted run, to any depth
            grew = False
            for rid, run in runs.items():
                if rid not in why and run.parent_run_id in why:
                    why[rid] = f"started from run {run.parent_run_id}"
                    grew = True
        found.runs = [RunHit(id=rid, phase=runs[rid].phase, output_dir=runs[rid].output_dir, why=why[rid])
                      for rid in sorted(why)]

        deployed = deployed_version(db)
        deployed_id = deployed.id if deployed else None
        for version in db.exec(select(ModelVersion).order_by(ModelVersion.number)).all():
            if version.dataset_version_id in dataset_ids or version.sft_run_id in why or version.rl_run_id in why:
                found.models.append(ModelHit(id=version.id, number=version.number, status=version.status,
                                             gguf_path=version.gguf_path, ollama_tags=_tags(version, deployed_id)))
        model_ids = {m.id for m in found.models}

        for evaluation in db.exec(select(Evaluation).order_by(Evaluation.id)).all():
            if (evaluation.dataset_version_id in dataset_ids or evaluation.model_version_id in model_ids
                    or evaluation.training_run_id in why):
                found.evaluations.append(EvaluationHit(id=evaluation.id, subject=evaluation.subject,
                                                       details_path=evaluation.details_path))
        evaluation_ids = {e.id for e in found.evaluations}
        found.ab_votes = sorted(
            vote.id for vote in db.exec(select(ABVote)).all()
            if vote.evaluation_id in evaluation_ids or vote.model_version_id in model_ids
            or vote.training_run_id in why)
        found.cycles = sorted(
            cycle.number for cycle in db.exec(select(Cycle)).all()
            if cycle.dataset_version_id in dataset_ids or cycle.sft_run_id in why or cycle.rl_run_id in why
            or cycle.model_version_id in model_ids)
    return found


# ---------------------------------------------------------------------------------------------
# Removing


@dataclass
class Removal:
    """What ``remove_derived`` did, and what it had to leave (with why)."""

    removed: Derived
    ollama_deleted: list[str] = field(default_factory=list)
    ollama_already_gone: list[str] = field(default_factory=list)
    latest: str | None = None  # what became of ``latest`` when the deployed model went
    files_removed: list[str] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"removed": self.removed.as_dict(), "ollama_deleted": self.ollama_deleted,
                "ollama_already_gone": self.ollama_already_gone, "latest": self.latest,
                "files_removed": self.files_removed, "remaining": self.remaining}


def unreadable_note(settings: Settings, dataset: DatasetHit) -> str:
    """Why a dataset version's membership is unknown, and what to do."""
    from ccrl.agent.store.remote import is_remote

    where = (f"are not on this machine (the store is shared: run `{DERIVED_COMMAND}` on the machine that trains)"
             if is_remote(settings) else f"are no longer at {dataset.path}")
    return (f"dataset v{dataset.number}: its rows {where}, so ccrl cannot tell whether it, or a model trained on it, "
            "holds purged data")


def _remove_from_ollama(settings: Settings, found: Derived, removal: Removal, host: str | None) -> None:
    """Delete the tags of the versions that go. The deployed one's ``latest`` goes back to the
    rollback target when that was built without purged data (``ccrl rollback``), else it is
    deleted too."""
    import ollama

    from ccrl.agent.release import deploy
    from ccrl.agent.release.versions import VersionError, deployed_version, rollback_target

    tainted = {m.id for m in found.models}
    tags = [tag for m in found.models for tag in m.ollama_tags]
    if not tags:
        return
    with session_scope(settings) as db:
        current, target = deployed_version(db), rollback_target(db)
        current_id = current.id if current else None
        clean_target = target is not None and target.id not in tainted
    if current_id in tainted:
        latest = next((t for m in found.models if m.id == current_id for t in m.ollama_tags if t.endswith(":latest")),
                      None)
        if clean_target:
            try:
                restored = deploy.rollback(settings=settings, host=host,
                                           reason="ccrl purge --derived: the deployed model was built from purged data")
            except VersionError:
                restored = None
            if restored is not None:
                tags = [t for t in tags if t != latest]
                removal.latest = f"{latest or 'latest'} now points at model v{restored.number} (built without purged data)"
        if removal.latest is None:
            removal.latest = f"{latest or 'latest'} deleted: no model is deployed now"
    client = deploy._client(host)  # the deploy module's client: same host resolution, same errors
    for tag in tags:
        try:
            client.delete(tag)
        except deploy._transport_errors() as exc:
            raise deploy._unreachable(host, exc, None) from exc
        except ollama.ResponseError as exc:
            if exc.status_code != 404:
                raise deploy._ollama_failed(host, f"delete {tag}", exc, None) from exc
            removal.ollama_already_gone.append(tag)
            continue
        removal.ollama_deleted.append(tag)


def _delete_rows(settings: Settings, found: Derived) -> None:
    from sqlalchemy import delete, update

    from ccrl.agent.daemon.cycle import OPEN_STATUSES
    from ccrl.agent.store.models import ABVote, Cycle, DatasetVersion, Evaluation, ModelVersion, TrainingRun, utcnow

    dataset_ids = {d.id for d in found.datasets}
    run_ids = {r.id for r in found.runs}
    model_ids = {m.id for m in found.models}
    with session_scope(settings) as db:
        for chunk in _chunks(found.ab_votes):
            db.exec(delete(ABVote).where(ABVote.id.in_(chunk)))
        for chunk in _chunks(e.id for e in found.evaluations):
            db.exec(delete(Evaluation).where(Evaluation.id.in_(chunk)))
        for cycle in db.exec(select(Cycle).where(Cycle.number.in_(found.cycles or [-1]))).all():
            for column, ids in (("dataset_version_id", dataset_ids), ("sft_run_id", run_ids),
                                ("rl_run_id", run_ids), ("model_version_id", model_ids)):
                if getattr(cycle, column) in ids:
                    setattr(cycle, column, None)
            if cycle.status in OPEN_STATUSES:
                cycle.status, cycle.outcome = "failed", "failed"
                cycle.error = "ccrl purge --derived removed what this cycle built from purged data"
                cycle.finished_at = cycle.updated_at = utcnow()
            db.add(cycle)
        db.flush()
        for chunk in _chunks(model_ids):
            db.exec(delete(ModelVersion).where(ModelVersion.id.in_(chunk)))
        for chunk in _chunks(run_ids):  # unlink first: a chunk may split a run from its parent
            db.exec(update(TrainingRun).where(TrainingRun.id.in_(chunk)).values(parent_run_id=None))
        for chunk in _chunks(run_ids):
            db.exec(delete(TrainingRun).where(TrainingRun.id.in_(chunk)))
        for chunk in _chunks(dataset_ids):
            db.exec(delete(DatasetVersion).where(DatasetVersion.id.in_(chunk)))


def _remove_path(path: Path, removal: Removal) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        removal.remaining.append(f"{path}: could not be deleted ({exc}); delete it yourself")
        return
    removal.files_removed.append(str(path))


def _remove_dataset_folder(settings: Settings, path: Path, removal: Removal) -> None:
    if not path.exists():
        return
    if within(path, settings.home / "datasets"):
        _remove_path(path, removal)
        return
    if not ((path / "jsonl").is_dir() and (path / "dataset_dict.json").is_file()):
        removal.remaining.append(f"{path}: recorded as a dataset version but not laid out as one; left as it is")
        return
    for name in DATASET_ENTRIES:  # an --out folder: only what the builder wrote there
        if (path / name).exists():
            _remove_path(path / name, removal)
    try:
        path.rmdir()
        removal.files_removed.append(str(path))
    except OSError:
        removal.remaining.append(f"{path}: the dataset's files were deleted; the folder holds other files and stays")


def _remove_files(settings: Settings, found: Derived, removal: Removal) -> None:
    from ccrl.agent.evaluation.gate import evals_dir
    from ccrl.agent.training.training import models_dir

    from ccrl.agent.store.remote import is_remote

    if is_remote(settings):  # a shared store: rows name files of the machine that made them
        recorded = [d.path for d in found.datasets] + [r.output_dir for r in found.runs] + \
            [m.gguf_path for m in found.models] + [e.details_path for e in found.evaluations]
        for path in filter(None, recorded):
            if not Path(path).exists():
                removal.remaining.append(f"{path}: not on this machine (the store is shared); delete it on the "
                                         "machine that made it")
    for dataset in found.datasets:
        _remove_dataset_folder(settings, Path(dataset.path), removal)
    owned = ([(r.output_dir, models_dir(settings), f"training run {r.id}") for r in found.runs]
             + [(m.gguf_path, models_dir(settings), f"model v{m.number}") for m in found.models]
             + [(e.details_path, evals_dir(settings), f"evaluation {e.id}") for e in found.evaluations])
    for recorded, root, what in owned:
        if not recorded:
            continue
        path = Path(recorded)
        if not path.exists():
            continue
        if within(path, root):
            _remove_path(path, removal)
        else:
            removal.remaining.append(f"{path} ({what}): outside {root}, so ccrl does not delete it; delete it yourself")


def remove_derived(settings: Settings, *, everything: bool = False, host: str | None = None) -> Removal:
    """Find (again, under the locks) and remove everything built from purged data.

    Holds the pipeline lock (no training, export, evaluation or deployment meanwhile), the
    dataset build lock (a build that started before the purge finishes first and is found) and,
    on a shared store, the trainer lock (no training agent on another machine meanwhile).
    Raises ``DerivedError`` when a lock stays busy, ``deploy.DeployError`` when Ollama cannot
    remove a tag (nothing else was removed then; run it again).
    """
    from ccrl.agent.core.lock import FileLock, LockBusy, pipeline_lock
    from ccrl.agent.store.db import ensure_private_dir

    pipeline = pipeline_lock(settings.home)
    build = FileLock(ensure_private_dir(settings.home / "datasets") / ".build.lock", name="dataset build")
    try:
        pipeline.acquire("ccrl purge --derived", wait=True, timeout=LOCK_TIMEOUT_S)
    except LockBusy as busy:
        raise DerivedError(f"{busy}: the agent is training, exporting or deploying; run `{DERIVED_COMMAND}` "
                           "again when it is done") from busy
    from ccrl.agent.training.trainer_lock import TrainerLockError, manual_trainer_lock

    try:
        with build.hold("ccrl purge --derived", wait=True, timeout=LOCK_TIMEOUT_S), manual_trainer_lock(settings):
            found = find_derived(settings, purged_data(settings), everything=everything)
            removal = Removal(removed=found)
            _remove_from_ollama(settings, found, removal, host)
            _delete_rows(settings, found)
            _remove_files(settings, found, removal)
            removal.remaining += [unreadable_note(settings, d) for d in found.unreadable]
    except LockBusy as busy:
        raise DerivedError(f"{busy}: a dataset is being built; run `{DERIVED_COMMAND}` again when it is done") from busy
    except TrainerLockError as exc:
        raise DerivedError(f"{exc}; run `{DERIVED_COMMAND}` on the machine that trains (its files and Ollama "
                           "models are there) when its agent is stopped") from exc
    finally:
        pipeline.release()
    return removal
