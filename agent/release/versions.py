"""Model versions: every exported GGUF is a numbered row of ``model_versions``, with its life.

Statuses:

- ``candidate``: exported and verified, not serving. ``ccrl deploy`` (or the agent, when
  auto-deploy is on and the evaluation gate passed) makes it the deployed one.
- ``deployed``: the version ``cc-claude-agent:latest`` points at. At most one at a time.
- ``retired``: out of service: replaced by a newer deployment (it can be rolled back to), or
  a candidate whose file retention removed (it can no longer be deployed).
- ``rejected``: the evaluation gate said no, or it was rolled back. Deploying it again needs
  ``--force`` with a reason.

``deployed_at`` is the last time a version became ``latest``; ``ccrl rollback`` returns to the
retired version deployed most recently before the current one. Every change is appended to
``metrics["history"]`` (time, event, details), so a version's story can be read back.

Retention keeps the GGUF files of the newest ``keep_model_versions`` versions and always those
of the deployed version and of the rollback target; rows are never deleted, and it deletes only
files inside ``CCRL_HOME/models``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session as DBSession
from sqlmodel import select

from ccrl.agent.core.config import Settings, get_settings
from ccrl.agent.core.owned_paths import remove_owned_file
from ccrl.agent.store.db import ensure_private_dir, session_scope
from ccrl.agent.store.models import DatasetVersion, ModelVersion, TrainingRun, utcnow

CANDIDATE = "candidate"
DEPLOYED = "deployed"
RETIRED = "retired"
REJECTED = "rejected"
STATUSES = (CANDIDATE, DEPLOYED, RETIRED, REJECTED)
MODEL_NAME = "cc-claude-agent"


class VersionError(RuntimeError):
    """A version operation cannot be done; the message says why and what to do."""


def models_root(settings: Settings) -> Path:
    """``CCRL_HOME/models``: the only folder whose files retention deletes."""
    return settings.home / "models"


def gguf_dir(settings: Settings) -> Path:
    """``CCRL_HOME/models/gguf``: where published GGUF files live."""
    return models_root(settings) / "gguf"


def cache_dir(settings: Settings) -> Path:
    """``CCRL_HOME/cache``: downloads kept between runs (llama.cpp's converter)."""
    return settings.home / "cache"


# ---------------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------------


def list_versions(session: DBSession) -> list[ModelVersion]:
    """Every version, oldest first."""
    return list(session.exec(select(ModelVersion).order_by(ModelVersion.number)))  # type: ignore[arg-type]


def get_version(session: DBSession, number: int) -> ModelVersion:
    """The version numbered ``number`` (a clear error when there is none)."""
    version = session.exec(select(ModelVersion).where(ModelVersion.number == number)).first()
    if version is None:
        raise VersionError(f"there is no model version {number}; `ccrl models list` shows the versions")
    return version


def latest_version(session: DBSession) -> ModelVersion | None:
    """The newest version, whatever its status."""
    return session.exec(select(ModelVersion).order_by(ModelVersion.number.desc())).first()  # type: ignore[attr-defined]


def deployed_version(session: DBSession) -> ModelVersion | None:
    """The version ``latest`` points at, if any."""
    return session.exec(
        select(ModelVersion).where(ModelVersion.status == DEPLOYED)
        .order_by(ModelVersion.deployed_at.desc(), ModelVersion.number.desc())  # type: ignore[union-attr]
    ).first()


def rollback_target(session: DBSession) -> ModelVersion | None:
    """The version ``ccrl rollback`` returns to: of the versions deployed before and since
    replaced (retired), the one deployed most recently, as long as its file is still there."""
    current = deployed_version(session)
    candidates = session.exec(
        select(ModelVersion).where(ModelVersion.status == RETIRED, ModelVersion.deployed_at.is_not(None))  # type: ignore[union-attr]
        .order_by(ModelVersion.deployed_at.desc(), ModelVersion.number.desc())  # type: ignore[union-attr]
    )
    for version in candidates:
        if current is not None and version.id == current.id:
            continue
        if version.gguf_path and Path(version.gguf_path).is_file():
            return version
    return None


def next_number(session: DBSession) -> int:
    """The number the next exported version gets."""
    latest = latest_version(session)
    return 1 if latest is None else latest.number + 1


def history(version: ModelVersion) -> list[dict[str, Any]]:
    """The recorded events of a version, oldest first."""
    return list((version.metrics or {}).get("history", []))


def add_history(version: ModelVersion, event: str, **details: Any) -> None:
    """Append an event to the version's history (a new dict, so the JSON column is saved)."""
    metrics = dict(version.metrics or {})
    metrics["history"] = [*metrics.get("history", []),
                          {"at": utcnow().isoformat(timespec="seconds"), "event": event, **details}]
    version.metrics = metrics


def version_json(version: ModelVersion) -> dict[str, Any]:
    """A version as JSON (``ccrl models show --json``)."""
    data = json.loads(version.model_dump_json())
    data["file_present"] = bool(version.gguf_path and Path(version.gguf_path).is_file())
    return data


# ---------------------------------------------------------------------------------------------
# Status changes
# ---------------------------------------------------------------------------------------------


def mark_deployed(session: DBSession, version: ModelVersion, tag: str, *, event: str = "deployed",
                  forced_reason: str | None = None, **details: Any) -> ModelVersion | None:
    """Record ``version`` as the one ``latest`` points at; the previously deployed version (if
    another) is retired. Returns that previous version."""
    previous = deployed_version(session)
    if previous is not None and previous.id != version.id:
        previous.status = RETIRED
        add_history(previous, "replaced", by=version.number)
        session.add(previous)
    version.status = DEPLOYED
    version.ollama_tag = tag
    version.deployed_at = utcnow()
    extra = {"forced": True, "reason": forced_reason} if forced_reason else {}
    add_history(version, event, tag=tag, **extra, **details)
    session.add(version)
    return previous if previous is not None and previous.id != version.id else None


def mark_rolled_back(session: DBSession, current: ModelVersion, target: ModelVersion, tag: str,
                     reason: str | None = None) -> None:
    """``latest`` went back from ``current`` to ``target``: current is rejected."""
    current.status = REJECTED
    add_history(current, "rolled back", to=target.number, **({"reason": reason} if reason else {}))
    session.add(current)
    mark_deployed(session, target, tag, event="restored by rollback", rolled_back_from=current.number)


class Retention(NamedTuple):
    """What one pass of retention did: ``(number, path)`` of the files it deleted, and of those
    it left in place because they are not files inside ``CCRL_HOME/models``."""

    removed: list[tuple[int, str]]
    left_outside: list[tuple[int, str]]


def apply_retention(session: DBSession, keep: int, models_root: Path) -> Retention:
    """Delete the GGUF files of versions beyond the newest ``keep``, except the deployed one and
    the rollback target. Only files inside ``models_root`` (``CCRL_HOME/models``; resolved,
    symlinks followed) are deleted: a path the database names anywhere else is left as it is,
    logged, and noted in the version's history. Either way the version no longer points at a
    file, and a candidate is retired (it cannot be deployed any more)."""
    if keep < 1:
        raise VersionError("retention must keep at least 1 version")
    versions = list_versions(session)
    protected = {v.id for v in versions[-keep:]}
    for version in (deployed_version(session), rollback_target(session)):
        if version is not None:
            protected.add(version.id)
    result = Retention([], [])
    for version in versions:
        if version.id in protected or not version.gguf_path:
            continue
        path = Path(version.gguf_path)
        if remove_owned_file(path, models_root):
            result.removed.append((version.number, str(path)))
            add_history(version, "file removed by retention", path=str(path), keep=keep)
        else:
            result.left_outside.append((version.number, str(path)))
            add_history(version, "file left in place by retention: not a file inside ccrl's models folder",
                        path=str(path), models_folder=str(models_root), keep=keep)
            structlog.get_logger("ccrl.versions").warning(
                "retention left a file alone", version=version.number, path=str(path),
                why=f"not a file inside {models_root}: ccrl deletes only its own files; delete it yourself if unneeded")
        version.gguf_path = None
        if version.status == CANDIDATE:
            version.status = RETIRED
        session.add(version)
    return result


# ---------------------------------------------------------------------------------------------
# Export a training run as a new version
# ---------------------------------------------------------------------------------------------


def _latest_completed_run(session: DBSession) -> TrainingRun:
    run = session.exec(
        select(TrainingRun).where(TrainingRun.status == "completed")
        .order_by(TrainingRun.finished_at.desc(), TrainingRun.id.desc())  # type: ignore[union-attr]
    ).first()
    if run is None:
        raise VersionError("there is no completed training run to export: run `ccrl train` first")
    return run


def model_source(run: TrainingRun) -> tuple[str, Path]:
    """What to export from a run: ``("merged", folder)`` when it wrote a merged model, else
    ``("adapter", folder)`` for its final LoRA adapter."""
    out = Path(run.output_dir or "")
    if (out / "merged" / "config.json").is_file():
        return "merged", out / "merged"
    if (out / "final" / "adapter_config.json").is_file():
        return "adapter", out / "final"
    raise VersionError(
        f"training run {run.id} has neither a merged model nor a final adapter under {out or '(no output folder)'}; "
        "it cannot be exported (train again with `ccrl train`)"
    )


def export_run(
    run_id: int | None = None,
    *,
    settings: Settings | None = None,
    quant: str = "auto",
    keep: int | None = None,
    require_stop: bool = True,
    probe: list[dict[str, Any]] | None = None,
    expected_reply: str | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ModelVersion:
    """Export a completed training run (default: the newest) to a verified GGUF and record it
    as a new candidate version; then apply retention (``keep``, default the
    ``keep_model_versions`` setting). Raises ``VersionError`` or ``ExportError`` (nothing is
    recorded then)."""
    from ccrl.trainers.export import export_adapter, export_model

    settings = settings or get_settings()
    keep = keep if keep is not None else settings.agent.keep_model_versions
    with session_scope(settings) as session:
        run = session.get(TrainingRun, run_id) if run_id is not None else _latest_completed_run(session)
        if run is None:
            raise VersionError(f"there is no training run {run_id}")
        if run.status != "completed":
            raise VersionError(f"training run {run.id} is {run.status}, not completed: only a finished run is exported")
        kind, source = model_source(run)
        exported_run_id = run.id
        number = next_number(session)
        sft_run_id = run.id if run.phase == "sft" else run.parent_run_id
        rl_run_id = run.id if run.phase == "rl" else None
        dataset_version_id, base_model, phase = run.dataset_version_id, run.base_model, run.phase
        dataset = session.get(DatasetVersion, dataset_version_id) if dataset_version_id else None
        dataset_number = dataset.number if dataset else None

    out_dir = ensure_private_dir(gguf_dir(settings))
    common = dict(name=f"{MODEL_NAME}-v{number}", cache_dir=ensure_private_dir(cache_dir(settings)), quant=quant,
                  probe=probe, expected_reply=expected_reply, require_stop=require_stop, threads=threads,
                  progress=progress)
    if kind == "merged":
        result = export_model(source, out_dir, **common)
    else:
        result = export_adapter(source, out_dir, **common)

    export_info = result.to_dict()
    export_info.pop("path")
    try:
        with session_scope(settings) as session:
            version = ModelVersion(
                number=number, status=CANDIDATE, sft_run_id=sft_run_id, rl_run_id=rl_run_id,
                dataset_version_id=dataset_version_id, base_model=base_model, gguf_path=str(result.path),
                gguf_sha256=result.sha256, quant=result.quant, size_bytes=result.size_bytes,
                metrics={"export": {**export_info, "run_id": exported_run_id, "phase": phase,
                                    "source": kind, "dataset_version": dataset_number}},
            )
            add_history(version, "exported", run=exported_run_id, quant=result.quant, sha256=result.sha256)
            session.add(version)
            session.flush()
            apply_retention(session, keep, models_root(settings))
            session.flush()
            session.expunge(version)
    except IntegrityError as exc:
        # Another export took the number meanwhile (the pipeline lock normally prevents this):
        # drop our file rather than leave one no version points at.
        os.unlink(result.path)
        raise VersionError(f"model version {number} was recorded by another export meanwhile; run the export again") from exc
    except BaseException:
        os.unlink(result.path)
        raise
    if progress is not None:
        progress(f"model version {number} recorded as a candidate ({result.quant}, {result.path.name})")
    return version
