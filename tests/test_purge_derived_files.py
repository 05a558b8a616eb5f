"""``ccrl purge --derived`` on what a ``--before`` purge thinned, and on files it does not own.

Real traces, real dataset versions from the real builder (one in ``CCRL_HOME``, one written with
``--out`` elsewhere). A ``--before`` purge takes some of a session's traces: the dataset rows of
exactly those are found afterwards (the session's tombstone has a cut-off; its traces still
stored are not purged data). ``--derived`` removes the builder's files from an ``--out`` folder
but keeps the user's own, and leaves a run folder outside ``CCRL_HOME/models`` alone, saying so.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from sqlmodel import select
from typer.testing import CliRunner

from agent_helpers import add_usable_traces

JAN, MAR = datetime(2026, 1, 10, tzinfo=timezone.utc), datetime(2026, 3, 10, tzinfo=timezone.utc)


def _purge(*args: str) -> dict:
    from ccrl.agent.cli import app

    result = CliRunner().invoke(app, ["purge", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_before_purge_then_derived_alone(ccrl_home, tmp_path):
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.datasets.datasets import build_dataset
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import DatasetVersion, Session, Trace, TrainingRun

    settings = get_settings()
    ids = add_usable_traces(settings, 6)  # sess-00000: ids[0:3], sess-00001: ids[3:6]
    with session_scope(settings) as db:
        for trace in db.exec(select(Trace)).all():
            trace.started_at = JAN if trace.id in ids[:4] else MAR  # sess-00001 keeps two later turns
            db.add(trace)
        for session in db.exec(select(Session)).all():
            session.started_at = JAN
            db.add(session)
    inside = build_dataset(settings)
    outside_dir = tmp_path / "elsewhere" / "ds"
    outside = build_dataset(settings, out=outside_dir, force=True)
    (outside_dir / "my-notes.txt").write_text("mine")
    run_dir = tmp_path / "elsewhere" / "run-x"
    (run_dir / "merged").mkdir(parents=True)
    with session_scope(settings) as db:
        db.add(TrainingRun(phase="sft", status="completed", dataset_version_id=inside.id, output_dir=str(run_dir)))

    preview = _purge("--before", "2026-02-01", "--dry-run")
    assert [(d["number"], d["purged_traces"]) for d in preview["derived"]["found"]["datasets"]] == [
        (inside.number, 4), (outside.number, 4)]
    data = _purge("--before", "2026-02-01", "--yes")
    assert data["counts"]["traces"] == 4 and data["counts"]["sessions"] == 1
    found = data["derived"]["found"]
    assert [(d["number"], d["purged_traces"]) for d in found["datasets"]] == [(inside.number, 4), (outside.number, 4)]
    assert data["derived"]["command"] == "ccrl purge --derived"

    removed = _purge("--derived", "--yes")["derived"]
    assert removed["found"]["counts"]["dataset_versions"] == 2 and removed["found"]["counts"]["training_runs"] == 1
    assert not Path(inside.path).exists()
    assert sorted(p.name for p in outside_dir.iterdir()) == ["my-notes.txt"]
    assert run_dir.is_dir()
    assert sorted(removed["remaining"]) == sorted([
        f"{outside_dir}: the dataset's files were deleted; the folder holds other files and stays",
        f"{run_dir} (training run 1): outside {ccrl_home / 'models'}, so ccrl does not delete it; delete it yourself",
    ])
    with session_scope(settings) as db:
        assert db.exec(select(DatasetVersion)).all() == [] and db.exec(select(TrainingRun)).all() == []
        kept = sorted(t.id for t in db.exec(select(Trace)).all())
    assert kept == ids[4:]
    # What is left was built from nothing purged: a new version of the purged store is clean.
    rebuilt = build_dataset(settings)
    again = _purge("--derived", "--dry-run")["derived"]["found"]
    assert again["datasets"] == [] and rebuilt.trace_count == 2
