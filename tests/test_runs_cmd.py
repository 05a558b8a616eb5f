"""``ccrl runs list|show``: cycles and training runs with dataset version, config, duration,
metrics, outcome and plots, from the rows the pipeline writes."""

from __future__ import annotations

import json
from datetime import timedelta

from typer.testing import CliRunner

from ccrl.agent.cli import app
from ccrl.agent.core.config import Settings
from ccrl.agent.daemon.cycle import plan_steps
from ccrl.agent.store.db import session_scope
from ccrl.agent.store.models import Cycle, DatasetVersion, ModelVersion, TrainingRun, utcnow

runner = CliRunner()


def _history(ccrl_home):
    settings = Settings()
    out = ccrl_home / "models" / "sft" / "run-1"
    out.mkdir(parents=True)
    (out / "loss_curve.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (out / "loss_curve.json").write_text('{"train": [], "eval": []}')
    start = utcnow() - timedelta(minutes=5)
    with session_scope(settings) as db:
        dataset = DatasetVersion(number=1, path=str(ccrl_home / "datasets" / "v1"), trace_count=60)
        db.add(dataset)
        db.flush()
        sft = TrainingRun(phase="sft", status="completed", dataset_version_id=dataset.id, base_model="smollm2",
                          output_dir=str(out), cycle=1, config={"sft": {"lora_r": 16}},
                          metrics={"train_loss": 1.5, "eval_loss_after": 1.25, "global_step": 30,
                                   "artifacts": {"loss_curve_png": str(out / "loss_curve.png"),
                                                 "loss_curve_json": str(out / "loss_curve.json")}},
                          started_at=start, finished_at=start + timedelta(seconds=150))
        manual = TrainingRun(phase="sft", status="failed", base_model="smollm2", error="CUDA out of memory",
                             started_at=start, finished_at=start + timedelta(seconds=3))
        db.add(sft)
        db.add(manual)
        db.flush()
        version = ModelVersion(number=1, status="candidate", sft_run_id=sft.id, dataset_version_id=dataset.id)
        db.add(version)
        db.flush()
        steps = plan_steps(1, settings.agent)
        for name in ("dataset", "sft", "export", "evaluate"):
            steps[name] = {"status": "done", "attempts": 0, "result": {}}
        db.add(Cycle(number=1, status="completed", outcome="candidate", steps=steps, new_traces=60,
                     dataset_version_id=dataset.id, sft_run_id=sft.id, model_version_id=version.id,
                     created_at=start, finished_at=start + timedelta(seconds=200)))
        return sft.id, manual.id


def test_list_shows_every_cycle_and_run(ccrl_home):
    sft_id, manual_id = _history(ccrl_home)
    result = runner.invoke(app, ["runs", "list", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    [cycle] = data["cycles"]
    assert (cycle["number"], cycle["outcome"], cycle["runs"], cycle["dataset_version_number"],
            cycle["model_version_number"], cycle["duration_s"]) == (1, "candidate", [sft_id], 1, 1, 200.0)
    runs = {r["id"]: r for r in data["runs"]}
    assert runs[sft_id]["outcome"] == "completed; exported as v1 (candidate)"
    assert runs[sft_id]["dataset_version"]["number"] == 1 and runs[sft_id]["duration_s"] == 150.0
    assert runs[manual_id]["cycle"] is None and runs[manual_id]["error"] == "CUDA out of memory"
    table = runner.invoke(app, ["runs", "list"])
    assert table.exit_code == 0 and "Cycles" in table.stdout and "Training runs" in table.stdout
    assert "eval_loss_after=1.25" in table.stdout


def test_show_a_run_and_a_cycle(ccrl_home):
    sft_id, _ = _history(ccrl_home)
    run = json.loads(runner.invoke(app, ["runs", "show", str(sft_id), "--json"]).stdout)
    assert run["config"] == {"sft": {"lora_r": 16}} and run["metrics"]["global_step"] == 30
    assert run["plots"] == [str(ccrl_home / "models/sft/run-1/loss_curve.png"),
                            str(ccrl_home / "models/sft/run-1/loss_curve.json")]
    human = runner.invoke(app, ["runs", "show", str(sft_id)])
    assert human.exit_code == 0 and "loss_curve.png" in human.stdout and "2m30s" in human.stdout
    cycle = json.loads(runner.invoke(app, ["runs", "show", "1", "--cycle", "--json"]).stdout)
    assert cycle["number"] == 1 and [r["id"] for r in cycle["training_runs"]] == [sft_id]
    assert cycle["steps"]["rl"]["status"] == "skipped"
    missing = runner.invoke(app, ["runs", "show", "99"])
    assert missing.exit_code == 1 and "no training run 99" in missing.stderr


def test_empty_history_says_so(ccrl_home):
    result = runner.invoke(app, ["runs", "list"])
    assert result.exit_code == 0 and "No cycles or training runs yet" in result.stdout
    assert json.loads(runner.invoke(app, ["runs", "list", "--json"]).stdout) == {"cycles": [], "runs": []}
