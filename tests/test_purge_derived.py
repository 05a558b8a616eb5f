"""``ccrl purge`` names what was built from purged data, and ``--derived`` removes it.

A real store (traces as ingest stores them), real dataset versions from the real builder, and
the lineage a few cycles leave behind, recorded as the product records it: SFT runs on each
version (a later one continued from the accepted model's run), an RL run on an SFT run, model
versions with real GGUF files deployed to Ollama through ``deploy_version`` (against
``tests/ollama_server.py``), evaluations with their details files (``write_details``), an A/B
vote and a cycle. Purging one session must then name exactly the dataset, runs, models, Ollama
tags and evaluations that hold or descend from it, and ``--derived`` must remove exactly those:
``latest`` rolls back to the model built without it, and the purged prompts are gone from
every file under ``CCRL_HOME``.
"""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
from pathlib import Path

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from agent_helpers import add_usable_traces
from export_helpers import overfit_gguf, tiny_base
# The deploy tests' fixtures: the shared tiny model and GGUF files, and the Ollama API server.
from test_deploy import go_binary, ollama_server, shared  # noqa: F401

NAME = "cc-claude-agent"
PURGED = "sess-00003"  # the session purged: only in dataset v2


def _run(settings, *, phase: str, dataset_id: int, parent: int | None, base: Path) -> int:
    """A finished training run as ``training.py``/``rl_training.py`` record it, with its folder
    (``CCRL_HOME/models/<phase>/run-<id>``: a checkpoint and the merged model)."""
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import TrainingRun, utcnow
    from ccrl.agent.training.training import models_dir

    with session_scope(settings) as db:
        run = TrainingRun(phase=phase, status="running", dataset_version_id=dataset_id, parent_run_id=parent,
                          base_model="tiny-random-llama", started_at=utcnow())
        db.add(run)
        db.flush()
        out = models_dir(settings) / phase / f"run-{run.id}"
        run.output_dir, run.status, run.finished_at = str(out), "completed", utcnow()
        run_id = run.id
    shutil.copytree(base, out / "merged")
    shutil.copytree(base, out / "checkpoint-1")
    return run_id


def _model_version(settings, info: dict, number: int, *, sft: int, rl: int | None, dataset_id: int) -> None:
    """A model version as ``ccrl export`` records it, evaluated as the gate leaves it (passed, on
    exactly these weights), so ``deploy_version`` takes it."""
    from ccrl.agent.release.versions import add_history, gguf_dir
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import ModelVersion
    from ccrl.trainers.evaluate import weights_digest

    quant = ("q8_0", "q4_k_m", "f16")[number - 1]
    variant = info["variants"][quant]
    out = gguf_dir(settings)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{NAME}-v{number}-{quant}.gguf"
    shutil.copy2(variant["path"], path)
    export = {**info["result"], "quant": quant}
    export.pop("path")
    with session_scope(settings) as db:
        version = ModelVersion(number=number, sft_run_id=sft, rl_run_id=rl, dataset_version_id=dataset_id,
                               base_model="tiny-random-llama", gguf_path=str(path), gguf_sha256=variant["sha256"],
                               quant=quant, size_bytes=variant["size"], metrics={"export": export},
                               gate={"passed": True, "reason": "beats the base model and the baselines",
                                     "judged": "candidate-gguf", "weights_sha256": weights_digest(path)})
        add_history(version, "exported", quant=quant)
        db.add(version)


def _evaluation(settings, dataset, *, subject: str, model_version_id: int | None) -> int:
    """An evaluation as the gate records it: a row and its details file, whose plans are the
    dataset version's held-out prompts."""
    from ccrl.agent.evaluation.gate import evals_dir
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import Evaluation
    from ccrl.trainers.evaluate import ModelEvaluation, write_details

    plans = []
    for name in ("rl_prompts.train.jsonl", "rl_prompts.eval.jsonl"):
        for line in (Path(dataset.path) / "jsonl" / name).read_text().splitlines():
            row = json.loads(line)
            plans.append({"trace_id": row["trace_id"], "prompt": row["prompt"][-1]["content"],
                          "reference_completion": row["reference_completion"], "completion": "Read, then Bash."})
    with session_scope(settings) as db:
        row = Evaluation(dataset_version_id=dataset.id, model_version_id=model_version_id, subject=subject,
                         kind="model", backend="hf", metrics={}, config={})
        db.add(row)
        db.flush()
        row.details_path = str(write_details(ModelEvaluation(subject, "model", "hf", {}, plans=plans),
                                             evals_dir(settings) / f"e{row.id}-{subject}.json"))
        return row.id


@pytest.fixture
def lineage(ccrl_home, shared, ollama_server):
    """Two dataset versions (v1 without the purged session, v2 with it) and what three cycles
    built from them:

    - run 1: SFT on v1 from the base → model v1, deployed first (then the rollback target);
    - run 2: SFT on v2, continued from run 1 (the accepted model) → run 3: RL on run 2 →
      model v2, deployed (``latest``);
    - run 4: SFT on v1, continued from run 3 (the accepted model v2) → model v3, a candidate;
    - evaluations: the base on v2, model v3 on v1, model v1 on v1; an A/B vote on the first;
    - cycle 1: dataset v2, run 2, run 3, model v2.
    """
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.datasets.datasets import build_dataset
    from ccrl.agent.release.deploy import deploy_version
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import ABVote, Cycle, DatasetVersion, ModelVersion, Trace

    settings = get_settings()
    info = overfit_gguf(shared)
    base = tiny_base(shared)
    add_usable_traces(settings, 6)
    v1 = build_dataset(settings)
    add_usable_traces(settings, 6)
    v2 = build_dataset(settings)
    with session_scope(settings) as db:
        d1, d2 = db.get(DatasetVersion, v1.id), db.get(DatasetVersion, v2.id)
        db.expunge_all()
        prompts = [t.prompt for t in db.exec(select(Trace).where(Trace.session_id == PURGED))]
    assert len(prompts) == 3
    run1 = _run(settings, phase="sft", dataset_id=v1.id, parent=None, base=base)
    run2 = _run(settings, phase="sft", dataset_id=v2.id, parent=run1, base=base)
    run3 = _run(settings, phase="rl", dataset_id=v2.id, parent=run2, base=base)
    run4 = _run(settings, phase="sft", dataset_id=v1.id, parent=run3, base=base)
    _model_version(settings, info, 1, sft=run1, rl=None, dataset_id=v1.id)
    _model_version(settings, info, 2, sft=run2, rl=run3, dataset_id=v2.id)
    _model_version(settings, info, 3, sft=run4, rl=None, dataset_id=v1.id)
    deploy_version(number=1, settings=settings)
    deploy_version(number=2, settings=settings)
    with session_scope(settings) as db:
        ids = {v.number: v.id for v in db.exec(select(ModelVersion))}
    e_base_v2 = _evaluation(settings, d2, subject="base", model_version_id=None)
    e_v3 = _evaluation(settings, d1, subject="candidate", model_version_id=ids[3])
    e_v1 = _evaluation(settings, d1, subject="candidate", model_version_id=ids[1])
    with session_scope(settings) as db:
        db.add(ABVote(evaluation_id=e_base_v2, claude_position=1, guess=1, correct=True))
        db.add(Cycle(number=1, status="completed", outcome="deployed", dataset_version_id=v2.id, sft_run_id=run2,
                     rl_run_id=run3, model_version_id=ids[2]))
    return {"settings": settings, "home": ccrl_home, "datasets": {1: d1, 2: d2}, "runs": (run1, run2, run3, run4),
            "models": ids, "evaluations": {"base_v2": e_base_v2, "v3": e_v3, "v1": e_v1}, "prompts": prompts,
            "server": ollama_server}


def app():
    from ccrl.agent.cli import app as cli

    return cli


def _purge(*args: str) -> dict:
    result = CliRunner().invoke(app(), ["purge", *args, "--yes", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _ollama_models() -> dict[str, str]:
    import ollama

    return {m.model: m.digest for m in ollama.Client().list().models}


def _rows(home: Path) -> dict[str, set]:
    from ccrl.agent.store.db import dispose_engines

    dispose_engines()
    db = sqlite3.connect(home / "ccrl.db")
    try:
        return {table: {r[0] for r in db.execute(f"SELECT {key} FROM {table}")}
                for table, key in (("dataset_versions", "number"), ("training_runs", "id"),
                                   ("model_versions", "number"), ("evaluations", "id"), ("ab_votes", "id"))}
    finally:
        db.close()


def _files_holding(home: Path, texts: list[str]) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file() and any(t.encode() in p.read_bytes() for t in texts)]


def test_purge_names_what_was_built_from_the_data_and_derived_removes_exactly_that(lineage):
    home, runs, models, evals = lineage["home"], lineage["runs"], lineage["models"], lineage["evaluations"]
    run1, run2, run3, run4 = runs
    before_ollama = _ollama_models()
    assert set(before_ollama) == {f"{NAME}:v1", f"{NAME}:v2", f"{NAME}:latest"}
    assert before_ollama[f"{NAME}:latest"] == before_ollama[f"{NAME}:v2"]

    data = _purge("--session", PURGED)
    assert data["counts"]["sessions"] == 1 and data["counts"]["traces"] == 3
    derived = data["derived"]
    assert derived["removed"] is False and derived["command"] == "ccrl purge --derived"
    found = derived["found"]
    assert [(d["number"], d["purged_traces"]) for d in found["datasets"]] == [(2, 3)]
    assert [(r["id"], r["why"]) for r in found["runs"]] == [
        (run2, "trained on dataset v2"), (run3, "trained on dataset v2"), (run4, f"started from run {run3}")]
    assert [(m["number"], m["status"], m["ollama_tags"]) for m in found["models"]] == [
        (2, "deployed", [f"{NAME}:v2", f"{NAME}:latest"]), (3, "candidate", [])]
    assert sorted(e["id"] for e in found["evaluations"]) == sorted([evals["base_v2"], evals["v3"]])
    assert len(found["ab_votes"]) == 1 and found["cycles"] == [1]
    # Nothing derived was touched without --derived; the purged prompts are still in those files.
    assert _ollama_models() == before_ollama
    holding = _files_holding(home, lineage["prompts"])
    assert holding and all("datasets/v2" in str(p) or "evals" in str(p) for p in holding)

    text = CliRunner().invoke(app(), ["purge", "--derived", "--dry-run"])
    assert text.exit_code == 0, text.output
    flat = " ".join(text.stdout.split())
    assert f"model v2 (deployed; Ollama: {NAME}:v2, {NAME}:latest)" in flat and "dataset v2 (3 purged trace(s))" in flat
    assert "ccrl purge --derived" in flat

    removed = _purge("--derived")["derived"]
    assert removed["removed"] is True and removed["command"] is None
    assert removed["found"]["counts"] == {"dataset_versions": 1, "training_runs": 3, "model_versions": 2,
                                          "ollama_tags": 2, "evaluations": 2, "ab_votes": 1}
    assert removed["ollama_deleted"] == [f"{NAME}:v2"]
    assert removed["latest"] == f"{NAME}:latest now points at model v1 (built without purged data)"
    assert removed["remaining"] == []
    after = _ollama_models()
    assert set(after) == {f"{NAME}:v1", f"{NAME}:latest"} and after[f"{NAME}:latest"] == after[f"{NAME}:v1"]

    assert _rows(home) == {"dataset_versions": {1}, "training_runs": {run1}, "model_versions": {1},
                           "evaluations": {evals["v1"]}, "ab_votes": set()}
    assert _files_holding(home, lineage["prompts"]) == []
    assert Path(lineage["datasets"][1].path).is_dir() and not Path(lineage["datasets"][2].path).exists()
    assert (home / "models" / "sft" / f"run-{run1}").is_dir()
    assert not any((home / "models" / phase / f"run-{r}").exists()
                   for phase, r in (("sft", run2), ("rl", run3), ("sft", run4)))
    assert [p.name for p in (home / "models" / "gguf").iterdir()] == [f"{NAME}-v1-q8_0.gguf"]
    db = sqlite3.connect(home / "ccrl.db")
    try:
        assert db.execute("SELECT dataset_version_id, sft_run_id, rl_run_id, model_version_id, status FROM cycles"
                          ).fetchall() == [(None, None, None, None, "completed")]
        assert db.execute("SELECT status FROM model_versions").fetchall() == [("deployed",)]
    finally:
        db.close()
    assert _purge("--derived")["derived"]["found"]["counts"]["dataset_versions"] == 0


def test_derived_stops_before_removing_anything_when_ollama_cannot_be_reached(lineage, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    _purge("--session", PURGED)
    home = lineage["home"]
    before = _rows(home)
    monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{port}")
    result = CliRunner().invoke(app(), ["purge", "--derived", "--yes"])
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert "cannot reach Ollama" in message and "run `ccrl purge --derived` again" in message
    assert _rows(home) == before and Path(lineage["datasets"][2].path).is_dir()


def test_when_every_model_holds_the_data_latest_is_deleted_too(lineage):
    """A session in both dataset versions: every run, model and tag descends from it."""
    data = _purge("--session", "sess-00000", "--derived")
    assert data["counts"]["traces"] == 3
    derived = data["derived"]
    assert derived["found"]["counts"] == {"dataset_versions": 2, "training_runs": 4, "model_versions": 3,
                                          "ollama_tags": 3, "evaluations": 3, "ab_votes": 1}
    assert sorted(derived["ollama_deleted"]) == [f"{NAME}:latest", f"{NAME}:v1", f"{NAME}:v2"]
    assert derived["latest"] == f"{NAME}:latest deleted: no model is deployed now"
    assert _ollama_models() == {}
    assert _rows(lineage["home"]) == {"dataset_versions": set(), "training_runs": set(), "model_versions": set(),
                                      "evaluations": set(), "ab_votes": set()}
    assert not any((lineage["home"] / "models").rglob("*.gguf"))
