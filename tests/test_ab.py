"""Blind A/B: canonical plans, blind pairs, the two-sample classifier check and its verdict, and
``ccrl ab`` / ``ccrl ab report`` recording and reporting real votes in a real store."""

from __future__ import annotations

import json
import random
import re

import pytest
from typer.testing import CliRunner

from ccrl.trainers import ab
from ccrl.trainers.conversation import PlanStep, render_workflow, tool_arguments
from ccrl.trainers.metrics import rate


def _plan(tools: list[str], reasoning: list[str], response: str, *, long_arg: int = 0) -> str:
    steps = []
    for i, name in enumerate(tools):
        args = {"file_path": f"/repo/f{i}.py"}
        if long_arg:
            args["content"] = "x" * long_arg
        steps.append(PlanStep(f"step {i} because it matters",
                              [{"type": "function", "function": {"name": name, "arguments": tool_arguments(args)}}]))
    return render_workflow(reasoning, steps, response)


# --- canonical plans and blind pairs ------------------------------------------------------------


def test_canonical_plan_hides_formatting_differences():
    claude = _plan(["Read", "Edit"], ["Find the bug first"], "Fixed it.")
    sloppy = ("## Reasoning\n- Find the bug first\n\n**Plan:**\n1) step 0 because it matters\n"
              '<tool_call>{"name": "Read", "arguments": {"file_path": "/repo/f0.py"}}</tool_call>\n'
              "2) step 1 because it matters\n"
              '<tool_call>{"name": "Edit", "arguments": {"file_path": "/repo/f1.py"}}</tool_call>\n'
              "Answer:\nFixed it.   \n")
    assert ab.canonical_plan(sloppy) == ab.canonical_plan(claude) == claude
    # Long arguments are cut the same way whoever wrote them, even when one side was cut already.
    from ccrl.trainers.conversation import workflow_text

    trace = {"prompt": "p", "response": "ok", "steps": [
        {"kind": "text", "text": "Write it."},
        {"kind": "tool_use", "tool_use_id": "w", "name": "Write", "input": {"file_path": "/repo/f0.py", "content": "x" * 900}},
        {"kind": "tool_result", "tool_use_id": "w", "output": ""},
        {"kind": "text", "text": "ok"}]}
    dataset_cut = workflow_text(trace)  # Claude's reference, cut when the dataset was built
    assert "characters omitted" in dataset_cut
    cut_value = re.search(r"x+…\[ccrl: \d+ characters omitted\]", dataset_cut).group(0)
    generated = dataset_cut.replace(cut_value, "x" * 900)
    assert ab.canonical_plan(dataset_cut) == ab.canonical_plan(generated)
    assert ab.CUT in ab.canonical_plan(generated) and "omitted" not in ab.canonical_plan(generated)
    # Text that is no plan at all keeps its words (as the response).
    assert "I am not sure" in ab.canonical_plan("I am not sure what to do.")


def test_blind_pair_order_is_random_and_remembered():
    rng = random.Random(3)
    claude, model = _plan(["Read"], ["a b c"], "A."), _plan(["Bash"], ["d e f"], "B.")
    positions = []
    for _ in range(40):
        pair = ab.blind_pair(claude, model, rng)
        shown = pair.first if pair.claude_position == 1 else pair.second
        other = pair.second if pair.claude_position == 1 else pair.first
        assert shown == ab.canonical_plan(claude) and other == ab.canonical_plan(model)
        positions.append(pair.claude_position)
    assert 10 < positions.count(1) < 30


# --- the two-sample check -------------------------------------------------------------------------


def test_plan_features():
    features = ab.plan_features(_plan(["Read", "Read", "Edit"], ["one", "two"], "Done."))
    assert features["tool=Read"] == 2 and features["tool=Edit"] == 1
    assert features["pair=<start>>Read"] == 1 and features["pair=Read>Read"] == 1
    assert features["pair=Edit><end>"] == 1
    assert features["len:calls"] == 3 and features["len:steps"] == 3 and features["len:reasoning_items"] == 2
    assert features["format:errors"] == 0


def _claude_like(i: int) -> str:
    return _plan(["Grep", "Read", "Edit", "Bash"][: 3 + i % 2], [f"look {i}", "then change", "then test"], f"Done {i}.")


def _terse(i: int) -> str:
    return _plan(["Bash"], [], f"ok {i}")


def test_classifier_tells_different_plans_apart():
    claude = [_claude_like(i) for i in range(12)]
    result = ab.two_sample_check(claude, [_terse(i) for i in range(12)], groups=[*range(12), *range(12)])
    assert result.accuracy is not None and result.accuracy.low > 0.5
    assert (result.n_claude, result.n_other, result.folds) == (12, 12, 5)


def test_classifier_cannot_tell_same_distribution():
    plans = [_claude_like(i) for i in range(12)]
    result = ab.two_sample_check(plans, list(plans), groups=[*range(12), *range(12)])
    assert result.accuracy is not None and result.accuracy.low <= 0.5 <= result.accuracy.high


def test_classifier_needs_enough_plans():
    result = ab.two_sample_check([_claude_like(0)], [_terse(0)])
    assert result.accuracy is None and "too few" in result.note and result.n_claude == 1


def test_verdict_needs_a_control_that_works():
    def result(successes: int, n: int) -> ab.TwoSampleResult:
        return ab.TwoSampleResult(rate(successes, n), n // 2, n // 2, 5)

    chance, clear = result(21, 40), result(38, 40)
    assert ab.verdict(clear, None)[0] == ab.DISTINGUISHABLE
    assert ab.verdict(chance, clear)[0] == ab.INDISTINGUISHABLE
    assert ab.verdict(chance, chance)[0] == ab.INCONCLUSIVE
    assert ab.verdict(chance, None)[0] == ab.INCONCLUSIVE
    assert ab.verdict(ab.TwoSampleResult(None, 1, 1, 0, "too few"), clear)[0] == ab.INCONCLUSIVE


# --- ccrl ab and ccrl ab report --------------------------------------------------------------------


@pytest.fixture
def evaluated(ccrl_home):
    """A store with one model version evaluated in one gate run: the candidate's and the base
    model's plans for six held-out prompts (plans written by hand, stored as the gate stores them)."""
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import DatasetVersion, Evaluation, ModelVersion
    from ccrl.trainers.evaluate import ModelEvaluation, write_details

    folder = ccrl_home / "evals"
    with session_scope() as session:
        dataset = DatasetVersion(number=1, path=str(ccrl_home / "datasets" / "v1"))
        session.add(dataset)
        session.flush()
        version = ModelVersion(number=1, dataset_version_id=dataset.id)
        session.add(version)
        session.flush()
        ids = {}
        for subject, writer in (("candidate", _claude_like), ("base", _terse)):
            plans = [{"trace_id": i, "prompt": f"Fix bug {i}", "reference_completion": _claude_like(i),
                      "completion": writer(i + 1)} for i in range(6)]
            row = Evaluation(dataset_version_id=dataset.id, model_version_id=version.id if subject == "candidate" else None,
                             subject=subject, kind="model", backend="hf", metrics={}, config={"gate_run": "run-1"})
            session.add(row)
            session.flush()
            row.details_path = str(write_details(ModelEvaluation(subject, "model", "hf", {}, plans=plans),
                                                 folder / f"e{row.id}-{subject}.json"))
            ids[subject] = row.id
    return ids


def test_ab_records_blind_votes_and_reports_wrong_guesses(evaluated):
    from sqlmodel import select

    from ccrl.agent.cli import app
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import ABVote

    runner = CliRunner()
    # Always answer "1": right exactly when Claude's plan was shown first.
    result = runner.invoke(app, ["ab", "--count", "4", "--seed", "7"], input="1\nx\n1\n1\ns\n")
    assert result.exit_code == 0, result.output
    assert "answer 1, 2, s or q" in result.output  # "x" was refused and asked again
    assert "3 vote(s) recorded" in result.output
    rng = random.Random(7)
    expected = [ab.blind_pair("a", "b", rng).claude_position for _ in range(4)]
    with session_scope() as session:
        votes = [v.model_copy() for v in session.exec(select(ABVote).order_by(ABVote.id))]
    assert [v.claude_position for v in votes] == expected[:3]
    assert all(v.guess == 1 and v.correct == (v.claude_position == 1) for v in votes)
    assert all(v.evaluation_id == evaluated["candidate"] for v in votes)
    # The first pair is held-out trace 0: Claude's plan ends "Done 0.", the model's "Done 1.";
    # Claude's is shown in the panel the vote records.
    assert votes[0].trace_id == 0
    first = result.output.split("pair 1 of")[1].split("pair 2 of")[0]
    in_first_panel = first.index("plan 1") < first.index("Done 0.") < first.index("plan 2")
    assert in_first_panel == (votes[0].claude_position == 1)

    report = runner.invoke(app, ["ab", "report", "--json"])
    assert report.exit_code == 0, report.output
    data = json.loads(report.output)
    wrong = sum(not v.correct for v in votes)
    assert data["votes"] == 3 and data["wrong"]["successes"] == wrong and data["wrong"]["n"] == 3
    assert data["wrong"]["low"] <= data["wrong"]["value"] <= data["wrong"]["high"]
    assert data["history"][0]["subject"] == "v1" and data["history"][0]["wrong"]["n"] == 3
    # Six plans a kind: enough for the check; the terse base plans are told apart.
    auto = data["automatic"]
    assert auto["model"]["n_claude"] == 6 and auto["control"]["n_claude"] == 6
    assert auto["control"]["accuracy"]["value"] > 0.5
    human = runner.invoke(app, ["ab", "report"])
    assert "wrong guesses" in human.output and "v1" in human.output


def test_ab_without_an_evaluation_says_what_to_run(ccrl_home):
    from ccrl.agent.cli import app

    result = CliRunner().invoke(app, ["ab"], input="q\n")
    assert result.exit_code == 1
    assert "run `ccrl eval` first" in result.output
    report = CliRunner().invoke(app, ["ab", "report", "--json"])
    assert report.exit_code == 0 and json.loads(report.output)["votes"] == 0
