"""The deployment gate: the decision rules on given numbers, and the whole gate on real models in
a real store: it passes a tiny model that learned the held-out task, blocks the same model with
noise added to its weights even when the stored numbers say it is excellent, is not fooled by
stored numbers edited to look bad, compares with the deployed version, and records and logs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from eval_helpers import train_tiny_agent, write_dataset_version  # noqa: E402

from ccrl.agent.core.eval_config import EvalSettings  # noqa: E402
from ccrl.agent.evaluation import gate  # noqa: E402
from ccrl.trainers.metrics import SESSION_BOOTSTRAP  # noqa: E402


def metrics(next_action: float | None, reward: float | None = None) -> dict:
    out = {"next_action": {"value": next_action, "successes": 0, "n": 10, "low": 0.0, "high": 1.0}}
    if reward is not None:
        out["reward"] = {"value": reward, "n": 5, "low": None, "high": None}
    return out


BASELINES = {"most_frequent": metrics(0.3), "bigram": metrics(0.5)}


# --- the decision rules -------------------------------------------------------------------------


def test_passes_when_it_beats_base_and_baselines():
    decision = gate.decide(metrics(0.8), base=metrics(0.1), baselines=BASELINES)
    assert decision.passed and [c.passed for c in decision.checks] == [True, True, True]
    assert decision.to_dict()["primary_metric"] == "next_action"


@pytest.mark.parametrize("value, failing", [(0.5, "beats the bigram baseline"), (0.3, "beats the most-frequent baseline"),
                                             (0.1, "beats the base model")])
def test_fails_when_it_does_not_beat_each_of_them(value, failing):
    decision = gate.decide(metrics(value), base=metrics(0.1), baselines=BASELINES)
    assert not decision.passed
    assert failing in [c.name for c in decision.checks if not c.passed]
    assert failing in decision.reason


def test_min_gain_is_configurable():
    strict = EvalSettings(gate_min_gain=0.2)
    assert gate.decide(metrics(0.6), base=metrics(0.1), baselines=BASELINES).passed
    decision = gate.decide(metrics(0.6), base=metrics(0.1), baselines=BASELINES, settings=strict)
    assert not decision.passed and "+ 0.2" in decision.reason


def test_deployed_version_with_margin():
    settings = EvalSettings(gate_margin=0.05)
    common = dict(base=metrics(0.1), baselines=BASELINES, has_deployed=True, settings=settings)
    assert gate.decide(metrics(0.76), deployed=metrics(0.8), **common).passed          # within the margin
    decision = gate.decide(metrics(0.74), deployed=metrics(0.8), **common)
    assert not decision.passed and "not worse than the deployed version" in decision.reason
    # A deployed version that could not be measured cannot be shown not to be better.
    decision = gate.decide(metrics(0.9), deployed=None, errors={"deployed": "weights gone"}, **common)
    assert not decision.passed and "weights gone" in decision.reason
    # No deployed version at all: nothing to compare with.
    assert gate.decide(metrics(0.9), base=metrics(0.1), baselines=BASELINES).passed


def test_rl_candidate_must_raise_the_reward_over_its_sft_parent():
    common = dict(base=metrics(0.1), baselines=BASELINES, is_rl=True)
    assert gate.decide(metrics(0.8, reward=0.62), rl_parent=metrics(0.8, reward=0.55), **common).passed
    decision = gate.decide(metrics(0.8, reward=0.55), rl_parent=metrics(0.7, reward=0.55), **common)
    assert not decision.passed and "behavioural reward" in decision.reason
    decision = gate.decide(metrics(0.8, reward=0.6), rl_parent=None, errors={"rl-parent": "no parent weights"}, **common)
    assert not decision.passed and "no parent weights" in decision.reason
    stricter = EvalSettings(gate_rl_min_reward_gain=0.1)
    assert not gate.decide(metrics(0.8, reward=0.62), rl_parent=metrics(0.8, reward=0.55), settings=stricter, **common).passed


def test_nothing_measured_fails():
    decision = gate.decide(metrics(None), base=metrics(0.1), baselines=BASELINES)
    assert not decision.passed and "no held-out decision" in decision.reason
    decision = gate.decide(None, base=metrics(0.1), baselines=BASELINES, errors={"candidate": "cannot load"})
    assert not decision.passed and "cannot load" in decision.reason
    decision = gate.decide(metrics(0.9), base=None, baselines=BASELINES, errors={"base": "hub unreachable"})
    assert not decision.passed and "hub unreachable" in decision.reason


# --- the whole gate on real models ------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The tiny random base, the same model trained on the dataset's train split, and a copy of
    the trained model with noise added to every weight matrix (degraded)."""
    import torch
    from safetensors.torch import load_file, save_file

    from ccrl.trainers.base_models import build_tiny_llama

    from conftest import embedded_tokenizer_dir

    root = tmp_path_factory.mktemp("gate")
    data = write_dataset_version(root / "datasets" / "v1")
    base = build_tiny_llama(root / "base-model", embedded_tokenizer_dir(), hidden_size=64,
                            intermediate_size=128, num_heads=2, num_kv_heads=1)
    trained = train_tiny_agent(base, data, root / "trained")
    degraded = root / "degraded"
    shutil.copytree(trained, degraded)
    weights = degraded / "model.safetensors"
    tensors = load_file(str(weights))
    generator = torch.Generator().manual_seed(0)
    noisy = {k: v + torch.randn(v.shape, generator=generator) * v.float().std() * 3 if v.ndim == 2 else v
             for k, v in tensors.items()}
    save_file(noisy, str(weights), metadata={"format": "pt"})
    return {"data": data, "base": base, "trained": trained, "degraded": degraded}


TEST_FOLD_DECISIONS = 8
SMALL = {"CCRL_EVAL__DECISION_MAX_NEW_TOKENS": "40", "CCRL_EVAL__PLAN_MAX_NEW_TOKENS": "48", "CCRL_EVAL__MAX_PLANS": "3",
         "CCRL_EVAL__THREADS": "1", "CCRL_EVAL__EVALUATE_GGUF": "false"}


@pytest.fixture
def store(ccrl_home, monkeypatch, models):
    """A store with the dataset version and a function to add a trained run + model version."""
    from ccrl.agent.core.config import reset_settings_cache
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import DatasetVersion, ModelVersion, TrainingRun

    for key, value in SMALL.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    with session_scope() as session:
        dataset = DatasetVersion(number=1, path=str(models["data"]))
        session.add(dataset)
        session.flush()
        dataset_id = dataset.id

    def add_version(weights: Path, number: int, *, status: str = "candidate", stored: dict | None = None) -> int:
        out = ccrl_home / "models" / "sft" / f"run-{number}"
        shutil.copytree(weights, out / "merged")
        with session_scope() as session:
            run = TrainingRun(phase="sft", status="completed", dataset_version_id=dataset_id, output_dir=str(out),
                              base_model="tiny", config={"model_source": str(models["base"])})
            session.add(run)
            session.flush()
            version = ModelVersion(number=number, status=status, sft_run_id=run.id, dataset_version_id=dataset_id,
                                   **(stored or {}))
            session.add(version)
            session.flush()
            return version.id

    return add_version


def _version(version_id: int):
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import ModelVersion

    with session_scope() as session:
        return session.get(ModelVersion, version_id).model_copy()


def _evaluations() -> list:
    from sqlmodel import select

    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import Evaluation

    with session_scope() as session:
        return [row.model_copy() for row in session.exec(select(Evaluation).order_by(Evaluation.id))]


FLATTERING = {
    "metrics": {"evaluation": {"subjects": {"candidate": {"next_action": {"value": 1.0, "n": 12}}}}},
    "gate": {"passed": True, "reason": "next_action 1.000 passes every check", "judged": "candidate",
             "weights_sha256": "0" * 64},
}


def test_gate_passes_a_model_that_learned_and_records_everything(store, models, capsys):
    version_id = store(models["trained"], 1)
    report = gate.evaluate_candidate(version_id)
    subjects = report["subjects"]
    candidate = subjects["candidate"]["metrics"]["next_action"]
    assert report["passed"], report["reason"]
    # The gate judges on the held-out test fold: sessions 25-28 (24 and 29 are the dev fold).
    assert candidate["n"] == TEST_FOLD_DECISIONS
    assert candidate["value"] > subjects["bigram"]["metrics"]["next_action"]["value"]
    assert report["fold"] == "test" and report["interval_method"] == SESSION_BOOTSTRAP
    assert candidate["method"] == SESSION_BOOTSTRAP and candidate["sessions"] == 4
    assert report["paired"]["bigram"]["method"] == SESSION_BOOTSTRAP
    assert candidate["value"] > subjects["base"]["metrics"]["next_action"]["value"]
    assert set(subjects) == {"candidate", "base", "most_frequent", "bigram"}
    # The weights judged are the ones on disk.
    from ccrl.trainers.evaluate import weights_digest

    assert report["weights_sha256"] == weights_digest(models["trained"])
    # Recorded: the version's gate and metrics, one evaluation row per subject with its details.
    version = _version(version_id)
    assert version.gate["passed"] is True and version.gate["judged"] == "candidate"
    assert version.metrics["evaluation"]["subjects"]["candidate"]["next_action"]["value"] == candidate["value"]
    assert version.status == "candidate" and version.metrics["history"][-1]["event"] == "gate passed"
    rows = _evaluations()
    assert sorted(r.subject for r in rows) == ["base", "bigram", "candidate", "most_frequent"]
    assert len({r.config["gate_run"] for r in rows}) == 1
    details = json.loads(Path(next(r for r in rows if r.subject == "candidate").details_path).read_text())
    assert len(details["decisions"]) == TEST_FOLD_DECISIONS and details["plans"][0]["reference_completion"]
    assert {d["session_id"] for d in details["decisions"]} == {f"session-eval-{i}" for i in range(25, 29)}
    # Logged.
    captured = capsys.readouterr()
    assert "gate.decision" in captured.out + captured.err


def test_gate_blocks_degraded_weights_whatever_the_store_says(store, models):
    """Noise on the weights; the stored numbers and decision claim perfection: the gate measures
    the weights and refuses."""
    version_id = store(models["degraded"], 1, stored=FLATTERING)
    report = gate.evaluate_candidate(version_id)
    assert not report["passed"]
    assert "beats the bigram baseline" in report["reason"]
    assert report["subjects"]["candidate"]["metrics"]["next_action"]["value"] <= 5 / 8  # the bigram's
    version = _version(version_id)
    assert version.gate["passed"] is False and version.status == "rejected"
    assert version.metrics["evaluation"]["subjects"]["candidate"]["next_action"]["value"] < 1.0
    # require_pass (what deploy asks) does not take the recorded decision for other weights.
    assert gate.require_pass(version_id)["passed"] is False


def test_gate_is_not_fooled_by_stored_numbers_edited_to_look_bad(store, models):
    bad = {"metrics": {"evaluation": {"subjects": {"candidate": {"next_action": {"value": 0.0, "n": 12}}}}},
           "gate": {"passed": False, "reason": "edited", "judged": "candidate", "weights_sha256": "f" * 64}}
    version_id = store(models["trained"], 1, stored=bad)
    assert gate.require_pass(version_id)["passed"] is True  # the recorded digest is not these weights
    version = _version(version_id)
    assert version.gate["passed"] is True and version.gate["weights_sha256"] != "f" * 64


def test_require_pass_reuses_a_decision_only_for_the_same_weights(store, models, ccrl_home):
    version_id = store(models["trained"], 1)
    assert gate.evaluate_candidate(version_id)["passed"]
    runs = len(_evaluations())
    assert gate.require_pass(version_id)["passed"] is True
    assert len(_evaluations()) == runs  # same digest: the recorded decision stands
    # The weights are swapped for degraded ones after the gate passed them: measured again.
    merged = ccrl_home / "models" / "sft" / "run-1" / "merged"
    shutil.copy2(models["degraded"] / "model.safetensors", merged / "model.safetensors")
    assert gate.require_pass(version_id)["passed"] is False
    assert len(_evaluations()) > runs


def test_candidate_compared_with_the_deployed_version(store, models):
    deployed = store(models["trained"], 1, status="deployed")
    candidate = store(models["degraded"], 2)
    report = gate.evaluate_candidate(candidate)
    assert "deployed" in report["subjects"] and not report["passed"]
    failed = {c["name"] for c in report["checks"] if not c["passed"]}
    assert "not worse than the deployed version" in failed
    assert report["paired"]["deployed"]["value"] < 0  # per decision, the candidate is worse
    assert _version(deployed).status == "deployed"


def test_override_is_recorded(store, models):
    version_id = store(models["degraded"], 1)
    with pytest.raises(gate.GateError, match="needs a reason"):
        gate.record_override(version_id, "  ")
    gate.record_override(version_id, "demo for the team")
    version = _version(version_id)
    assert version.gate["override"]["reason"] == "demo for the team"
    assert version.metrics["history"][-1]["event"] == "gate overridden"


def test_ccrl_eval_shows_the_table_and_plots(store, models, ccrl_home, monkeypatch):
    from typer.testing import CliRunner

    from ccrl.agent.cli import app
    from ccrl.agent.core.config import reset_settings_cache

    from ccrl.agent.cli import eval_cmd

    # The CLI's console read the terminal width when it was imported (by whichever test came
    # first in this process): give it a wide one, as COLUMNS would in a fresh process.
    monkeypatch.setattr(eval_cmd._out, "width", 160)
    monkeypatch.setenv("CCRL_EVAL__MAX_DECISIONS", "6")
    monkeypatch.setenv("CCRL_EVAL__MAX_PLANS", "1")
    reset_settings_cache()
    store(models["trained"], 1)
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["model_version"] == 1
    assert Path(report["plot"]).is_file() and report["plot"].endswith(".png")
    human = runner.invoke(app, ["eval", "--version", "1"])
    assert human.exit_code == 0, human.output
    for text in ("next-action agreement", "base model", "bigram", "candidate (HF)", "gate: PASSED"):
        assert text in human.stdout
    missing = runner.invoke(app, ["eval", "--version", "9"])
    assert missing.exit_code == 1 and "no model version 9" in missing.output


def test_hf_candidate_can_be_left_out_when_the_gguf_is_judged(store, models, tmp_path, monkeypatch):
    from ccrl.agent.core.config import get_settings, reset_settings_cache

    gguf = tmp_path / "candidate.gguf"
    gguf.write_bytes(b"GGUF")  # planning only checks that the file exists; nothing is loaded
    version_id = store(models["trained"], 1, stored={"gguf_path": str(gguf)})
    monkeypatch.setenv("CCRL_EVAL__EVALUATE_GGUF", "true")
    reset_settings_cache()
    both = gate.plan_evaluation(get_settings(), model_version_id=version_id)
    assert [s.name for s in both.subjects] == ["candidate", "candidate-gguf", "base"]
    monkeypatch.setenv("CCRL_EVAL__EVALUATE_HF_CANDIDATE", "false")
    reset_settings_cache()
    gguf_only = gate.plan_evaluation(get_settings(), model_version_id=version_id)
    assert [s.name for s in gguf_only.subjects] == ["candidate-gguf", "base"]
    assert any("evaluate_hf_candidate is off" in note for note in gguf_only.notes)


def test_the_dev_fold_is_measured_but_never_recorded(store, models, monkeypatch):
    """Settings are tuned on the dev fold (sessions 24 and 29 here); the gate's verdict and the
    reported figures come from the test fold only, so a dev-fold run records nothing."""
    from typer.testing import CliRunner

    from ccrl.agent.cli import app

    version_id = store(models["trained"], 1)
    result = CliRunner().invoke(app, ["eval", "--fold", "dev", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["fold"] == "dev" and report["subjects"]["candidate"]["metrics"]["next_action"]["n"] == 4
    assert report["evaluation_ids"] == {} and any("'dev' fold" in note for note in report["notes"])
    assert _evaluations() == [] and not _version(version_id).gate
    bad = CliRunner().invoke(app, ["eval", "--fold", "train"])
    assert bad.exit_code == 2 and "unknown fold" in bad.output
