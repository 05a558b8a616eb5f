"""What the agent is doing, for ``ccrl agent status`` and the agent part of ``ccrl status``.

Cheap to gather (a few queries, two lock probes, two small files); never imports torch. The
keys of ``agent_status`` are a stable interface: keys may be added, never renamed or removed.
"""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import select

from ccrl.agent.core.config import Settings
from ccrl.agent.core.lock import agent_lock, pipeline_lock
from ccrl.agent.daemon.child import progress_path
from ccrl.agent.daemon.cycle import cycle_json, describe, open_cycle, threshold
from ccrl.agent.daemon.scheduler import read_state
from ccrl.agent.store.db import session_scope
from ccrl.agent.store.models import Cycle, DatasetVersion, ModelVersion, TrainingRun


def _run_summary(run: TrainingRun) -> dict[str, Any]:
    duration = None
    if run.started_at and run.finished_at:
        duration = round((run.finished_at - run.started_at).total_seconds(), 3)
    return {"id": run.id, "phase": run.phase, "status": run.status, "cycle": run.cycle,
            "dataset_version_id": run.dataset_version_id, "metrics": run.metrics, "duration_s": duration,
            "error": run.error}


def agent_status(settings: Settings, recent: int = 5) -> dict[str, Any]:
    """The agent's state: running or not, thresholds, the current cycle and step, recent cycles
    and runs, the deployed version and the last error."""
    holder = agent_lock(settings.home).holder()
    busy = pipeline_lock(settings.home).holder()
    state = read_state(settings)
    with session_scope(settings) as session:
        current = open_cycle(session)
        th = threshold(session, settings.agent, settings)
        cycles = session.exec(select(Cycle).order_by(Cycle.number.desc()).limit(recent)).all()  # type: ignore[attr-defined]
        runs = session.exec(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(recent)).all()  # type: ignore[union-attr]
        dataset = session.exec(select(DatasetVersion).order_by(DatasetVersion.number.desc())).first()  # type: ignore[attr-defined]
        deployed = session.exec(
            select(ModelVersion).where(ModelVersion.status == "deployed").order_by(ModelVersion.number.desc())  # type: ignore[attr-defined]
        ).first()
        progress = None
        if current is not None and current.step and current.status == "running" and busy:
            try:
                progress = json.loads(progress_path(settings.home, current.id or 0, current.step).read_text())
            except (OSError, ValueError):
                progress = None
        last_error = None
        if current is not None and current.error:
            last_error = f"cycle {current.number}: {current.error}"
        elif cycles and cycles[0].status == "failed":
            last_error = f"cycle {cycles[0].number}: {cycles[0].error}"
        elif state.get("last_error"):
            last_error = state["last_error"]
        return {
            "running": holder is not None,
            "pid": (holder or {}).get("pid"),
            "since": (holder or {}).get("since"),
            "pipeline_busy": busy,
            "status_line": describe(current, progress) if current else
            f"idle: {th.new}/{th.required} {th.basis.split(' (')[0]} for the next cycle",
            "threshold": th.as_dict(),
            "current_cycle": cycle_json(current) if current else None,
            "progress": progress,
            "recent_cycles": [cycle_json(c) for c in cycles],
            "recent_runs": [_run_summary(r) for r in runs],
            "latest_dataset": None if dataset is None else {
                "number": dataset.number, "usable_traces": dataset.trace_count,
                "created_at": dataset.created_at.isoformat() if dataset.created_at else None,
            },
            "deployed_version": None if deployed is None else {
                "number": deployed.number, "ollama_tag": deployed.ollama_tag,
                "deployed_at": deployed.deployed_at.isoformat() if deployed.deployed_at else None,
            },
            "last_error": last_error,
            "last_ingest_at": state.get("last_ingest_at"),
            "last_cycle_check_at": state.get("last_cycle_check_at"),
        }


def _metric(metrics: dict[str, Any]) -> str:
    for key in ("eval_loss_after", "heldout_reward_after", "train_loss"):
        value = (metrics or {}).get(key)
        if isinstance(value, (int, float)):
            return f" {key}={value:.4g}"
    return ""


def agent_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """``agent_status`` as (label, value) rows for ``ccrl status``'s table."""
    if report.get("error"):
        return [("agent", report["error"])]
    rows = [("agent", f"running (pid {report['pid']}, since {report['since']})" if report["running"]
             else "not running (`ccrl service install`, or `ccrl agent run`)")]
    rows.append(("agent now", report["status_line"]))
    th = report["threshold"]
    dataset = report.get("latest_dataset")
    usable = f"{th['new']}{'+' if th.get('new_at_least') else ''} new since the last cycle"  # counted up to the threshold
    if dataset:
        usable = f"{dataset['usable_traces']} in dataset v{dataset['number']}; " + usable
    rows.append(("usable traces", usable))
    rows.append(("next cycle", "due now" if th["due"] else f"at {th['required']} new ({th['remaining']} to go)"))
    for run in report["recent_runs"]:
        cycle = f"cycle {run['cycle']}" if run["cycle"] else "by hand"
        rows.append((f"run {run['id']}", f"{run['phase']} ({cycle}) {run['status']}{_metric(run['metrics'])}"))
    deployed = report["deployed_version"]
    rows.append(("deployed", f"v{deployed['number']} ({deployed['ollama_tag']})" if deployed else "none"))
    if report["last_error"]:
        rows.append(("last error", report["last_error"]))
    return rows
