"""The behavioural reward: each component pinned on hand-built plans (a better plan scores
higher than a worse one on exactly the behaviour the component measures), the malformed-output
rules, the TRL reward-function interface, and Claude's own plans from the fixture transcripts
scored against themselves."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccrl.trainers import conversation as conv
from ccrl.trainers import reward as R
from ccrl.trainers.signals import extract_signals


def call(name: str, **args) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def plan_text(steps: list[tuple[str, list[dict]]], reasoning: list[str] | None = None,
              response: str = "Done: the change is in place.") -> str:
    """A workflow completion in the exact rendered form."""
    reasoning = ["First, find where the setting is read.", "Then change it and run the tests."] if reasoning is None else reasoning
    return conv.render_workflow(reasoning, [conv.PlanStep(reason, calls) for reason, calls in steps], response)


def reference(text: str, prompt: str = "Fix the timeout", **signals) -> R.Reference:
    """The reference for a Claude plan given as workflow text, with signal overrides."""
    measured = extract_signals(conv.workflow_to_trace(conv.parse_workflow(text)))
    measured.update(signals)
    return R.make_reference(json.dumps(measured), text, prompt)


READ = call("Read", file_path="/repo/cfg.py")
EDIT = call("Edit", file_path="/repo/cfg.py", old_string="timeout = 30", new_string="timeout = 60")
TEST = call("Bash", command="pytest -q tests/test_cfg.py")
GREP = call("Grep", pattern="timeout", path="/repo")
CLAUDE = plan_text([("Find it.", [GREP, READ]), ("Change it.", [EDIT]), ("Check it.", [TEST])])
REF = reference(CLAUDE)


def scores(text: str, ref: R.Reference = REF) -> dict[str, float]:
    return R.score_components(text, ref)


# --- weights -----------------------------------------------------------------------------------


def test_weights_follow_the_design_and_the_config():
    from ccrl.agent.core.config import RewardSettings

    w = R.RewardWeights()
    assert w.as_list() == [0.25, 0.20, 0.20, 0.15, 0.20] and abs(sum(w.as_list()) - 1) < 1e-9
    assert R.RewardWeights.from_settings(RewardSettings()) == w
    custom = R.RewardWeights.from_settings(RewardSettings(constraint=0.5, exploration=0.0))
    assert custom.as_dict()["constraint_adherence"] == 0.5 and custom.as_dict()["exploration_fit"] == 0.0
    with pytest.raises(ValueError, match="unknown reward component"):
        R.RewardWeights.from_dict({"constraints": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        R.RewardWeights(constraint_adherence=-1.0)
    parts = {name: 1.0 for name in R.COMPONENTS} | {"self_correction": 0.0}
    assert R.total_reward(parts) == pytest.approx(0.85)


def test_claudes_own_plan_scores_full_marks():
    assert scores(CLAUDE) == {name: 1.0 for name in R.COMPONENTS}


# --- constraint adherence --------------------------------------------------------------------------


def test_reading_before_editing_beats_editing_blind():
    reads_first = plan_text([("Look.", [READ]), ("Change.", [EDIT]), ("Check.", [TEST])])
    blind = plan_text([("Change.", [EDIT]), ("Check.", [TEST])])
    assert scores(reads_first)["constraint_adherence"] == 1.0
    assert scores(blind)["constraint_adherence"] == 0.0
    # The same file under a relative path counts as read.
    relative = plan_text([("Look.", [call("Read", file_path="cfg.py")]), ("Change.", [EDIT])])
    assert scores(relative)["constraint_adherence"] == 1.0


def test_overwriting_an_existing_file_needs_a_read_but_creating_one_does_not():
    overwrite = call("Write", file_path="/repo/cfg.py", content="timeout = 60\n")
    create = call("Write", file_path="/repo/new_module.py", content="x = 1\n")
    assert scores(plan_text([("Replace.", [overwrite])]))["constraint_adherence"] == 0.0
    assert scores(plan_text([("Look.", [READ]), ("Replace.", [overwrite])]))["constraint_adherence"] == 1.0
    assert scores(plan_text([("Create.", [create])]))["constraint_adherence"] == 1.0
    # A file the plan wrote itself may be edited without reading it back.
    own = call("Edit", file_path="/repo/new_module.py", old_string="x = 1", new_string="x = 2")
    assert scores(plan_text([("Create.", [create]), ("Fix.", [own])]))["constraint_adherence"] == 1.0


def test_looking_before_deleting_beats_deleting_blind():
    rm = call("Bash", command="rm -rf build/ && make")
    look = call("Bash", command="ls build/")
    assert scores(plan_text([("Clean.", [rm])]))["constraint_adherence"] == 0.0
    assert scores(plan_text([("Look.", [look]), ("Clean.", [rm])]))["constraint_adherence"] == 1.0
    assert R.deletes(R.parse_plan(plan_text([("x", [call("Bash", command="git rm old.py")])])).calls[0])
    assert not R.deletes(R.parse_plan(plan_text([("x", [call("Bash", command="grep -r rm .")])])).calls[0])


def test_checking_a_change_before_committing():
    commit = call("Bash", command="git add -A && git commit -m 'raise timeout'")
    unchecked = plan_text([("Look.", [READ]), ("Change.", [EDIT]), ("Commit.", [commit])])
    checked = plan_text([("Look.", [READ]), ("Change.", [EDIT]), ("Test.", [TEST]), ("Commit.", [commit])])
    assert scores(checked)["constraint_adherence"] == 1.0
    assert scores(unchecked)["constraint_adherence"] == 0.5  # read-before-edit holds, the commit check fails


def test_prohibitions_in_the_prompt_and_in_claudes_constraints():
    assert R.prohibited_targets("Please fix it but don't modify the tests. Leave README.md alone.") == ["tests", "readme.md"]
    assert R.prohibited_targets("Do not change anything else", "never touch it") == []
    assert R.prohibited_targets("Do not edit files in vendor/ please") == ["vendor"]
    test_read = call("Read", file_path="/repo/tests/test_cfg.py")
    test_edit = call("Edit", file_path="/repo/tests/test_cfg.py", old_string="30", new_string="60")
    ref = reference(CLAUDE, prompt="Raise the timeout to 60; don't modify the tests.")
    keeps = plan_text([("Look.", [READ, test_read]), ("Change.", [EDIT])])
    breaks = plan_text([("Look.", [READ, test_read]), ("Change.", [EDIT, test_edit])])
    assert scores(keeps, ref)["constraint_adherence"] == 1.0
    assert scores(breaks, ref)["constraint_adherence"] == pytest.approx(2 / 3)
    # Claude's own stated constraint counts the same way; a shell command can break it too.
    stated = reference(CLAUDE, constraints=[{"step": 0, "text": "I must not touch the migrations"}])
    shell = plan_text([("Reset.", [call("Bash", command="rm -f migrations/0003.py")])])
    assert [w for w, held in R.constraint_checks(R.parse_plan(shell), stated) if not held] == [
        "look before deleting", "leave migrations unchanged"]


# --- reasoning depth -------------------------------------------------------------------------------


def test_reasoning_depth_rewards_enough_steps_not_padding():
    ref = reference(CLAUDE, reasoning_chain=[{"step": 0, "text": t} for t in ("a", "b", "c")])
    right = ["Find where the timeout is read.", "Change the default in cfg.py.", "Run the config tests again."]
    steps = [("Look.", [READ]), ("Change.", [EDIT])]
    assert scores(plan_text(steps, right), ref)["reasoning_depth"] == 1.0
    assert scores(plan_text(steps, right[:1]), ref)["reasoning_depth"] == pytest.approx(1 / 3)
    assert scores(plan_text(steps, []), ref)["reasoning_depth"] == 0.0
    too_many = right + [f"Then also consider option number {i} carefully." for i in range(6)]
    assert scores(plan_text(steps, too_many), ref)["reasoning_depth"] == pytest.approx(3 / 9)
    padded = right + ["Plan", "Do it", right[0]]  # short items and a repeat are padding
    assert scores(plan_text(steps, padded), ref)["reasoning_depth"] == pytest.approx(3 / 6)


def test_reasoning_target_without_a_stated_chain_follows_complexity():
    assert R.reasoning_target({"reasoning_chain": [{"text": "x"}] * 30}) == R.MAX_REASONING_TARGET
    assert R.reasoning_target({"reasoning_chain": [], "complexity": {"tool_calls": 0}}) == 1
    assert R.reasoning_target({"reasoning_chain": [], "complexity": {"tool_calls": 7}}) == 3
    assert R.reasoning_target({"tool_sequence": ["Read"] * 40}) == 5


# --- tool efficiency -------------------------------------------------------------------------------


def test_tool_efficiency_is_edit_distance_on_tool_sequences():
    assert R.edit_distance(["Read", "Edit"], ["Read", "Edit"]) == 0
    assert R.edit_distance(["Read", "Grep", "Edit"], ["Read", "Edit"]) == 1
    assert R.edit_distance([], ["Read", "Edit"]) == 2
    assert R.edit_distance(["Bash", "Bash"], ["Read", "Edit"]) == 2
    assert R.sequence_similarity([], []) == 1.0
    same = plan_text([("a", [GREP, READ]), ("b", [EDIT]), ("c", [TEST])])
    one_off = plan_text([("a", [READ]), ("b", [EDIT]), ("c", [TEST])])
    wrong = plan_text([("a", [call("WebSearch", query="timeout")]), ("b", [call("Write", file_path="/x", content="")])])
    assert scores(same)["tool_efficiency"] == 1.0
    assert scores(one_off)["tool_efficiency"] == pytest.approx(0.75)
    assert scores(wrong)["tool_efficiency"] == 0.0


def test_pointless_repeats_cost_but_checking_again_after_a_change_does_not():
    repeated = plan_text([("a", [GREP, READ]), ("again", [READ]), ("b", [EDIT]), ("c", [TEST])])
    assert R.pointless_repeats(R.parse_plan(repeated)) == 1
    # 4 of 5 tools line up with Claude's (similarity 0.8) and 1 of 5 calls is a repeat.
    assert scores(repeated)["tool_efficiency"] == pytest.approx(0.8 * 0.8)
    retest = plan_text([("a", [READ]), ("b", [TEST]), ("c", [EDIT]), ("d", [TEST])])
    assert R.pointless_repeats(R.parse_plan(retest)) == 0


def test_unreadable_calls_count_as_wrong_tools():
    broken = CLAUDE.replace('<tool_call>{"name": "Bash"', '<tool_call>{"name": "Bash", oops')
    plan = R.parse_plan(broken)
    assert plan.unreadable_calls == 1 and [c.name for c in plan.calls] == ["Grep", "Read", "Edit"]
    assert scores(broken)["tool_efficiency"] == pytest.approx(0.75)


# --- self-correction -------------------------------------------------------------------------------


def test_acting_on_a_stated_mistake_beats_pressing_on():
    other = call("Read", file_path="/repo/settings.py")
    recovers = plan_text([("Look.", [READ]), ("Actually, the timeout is set in settings.py, not cfg.py.", [other])])
    presses_on = plan_text([("Look.", [READ]), ("Actually, the timeout is set in settings.py, not cfg.py.", [READ])])
    assert scores(recovers)["self_correction"] == 1.0
    assert scores(presses_on)["self_correction"] == 0.0
    # An apology in the final answer is a report, not a step to act on.
    reported = plan_text([("Look.", [READ])], response="I was wrong about cfg.py earlier; the value is in settings.py.")
    assert R.correction_checks(R.parse_plan(reported), REF) == []


def test_when_claude_had_to_correct_itself_the_plan_must_check_its_change():
    corrected = reference(CLAUDE, self_corrections=[{"step": 3, "text": "retried Edit", "kind": "retry"}])
    checks = plan_text([("Look.", [READ]), ("Change.", [EDIT]), ("Check.", [TEST])])
    rereads = plan_text([("Look.", [READ]), ("Change.", [EDIT]), ("Look again.", [READ])])
    trusts = plan_text([("Look.", [READ]), ("Change.", [EDIT])])
    assert scores(checks, corrected)["self_correction"] == 1.0
    assert scores(rereads, corrected)["self_correction"] == 1.0
    assert scores(trusts, corrected)["self_correction"] == 0.0
    # Nothing to judge: full marks when no correction was needed, half when one was.
    read_only = plan_text([("Look.", [READ])])
    assert scores(read_only)["self_correction"] == 1.0
    assert scores(read_only, corrected)["self_correction"] == R.NO_EVIDENCE_AFTER_CORRECTED_REFERENCE


# --- exploration fit -------------------------------------------------------------------------------


def test_exploration_depth_matching_the_reference():
    glob = call("Glob", pattern="**/*.py")
    thorough = plan_text([("a", [GREP, READ, glob, call("Read", file_path="/repo/a.py")]), ("b", [EDIT])])
    moderate = plan_text([("a", [GREP, READ]), ("b", [EDIT])])
    minimal = plan_text([("b", [EDIT])])
    ref = REF  # Claude: 2 exploring calls, 1 change -> moderate
    assert REF.depth == "moderate"
    assert scores(moderate, ref)["exploration_fit"] == 1.0
    assert scores(thorough, ref)["exploration_fit"] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 4)
    assert scores(minimal, ref)["exploration_fit"] == pytest.approx(0.5 * 0.5)
    assert scores(moderate, ref)["exploration_fit"] > scores(thorough, ref)["exploration_fit"] > scores(minimal, ref)["exploration_fit"]


# --- malformed output -------------------------------------------------------------------------------


@pytest.mark.parametrize("junk", [None, "", "hello there", "<tool_call>{oops", 42, b"\xff\x00", [{"role": "assistant"}],
                                  "<|im_end|>" * 50, "Reasoningless text about a Plan and a Response",
                                  "Let me read the config first.", "<tool_call>{\"arguments\": {}}</tool_call>"])
def test_malformed_generations_score_zero_and_never_raise(junk):
    assert scores(R.completion_text(junk)) == {name: 0.0 for name in R.COMPONENTS}


def test_a_plan_cut_off_before_its_response_keeps_five_sixths():
    cut = CLAUDE[: CLAUDE.index("Response:")]
    plan = R.parse_plan(cut)
    assert plan.sections == 2 and plan.format_factor == pytest.approx(R.FORMAT_FLOOR + (1 - R.FORMAT_FLOOR) * 2 / 3)
    assert scores(cut) == {name: pytest.approx(5 / 6) for name in R.COMPONENTS}
    assert R.parse_plan(CLAUDE.replace("Done: the change is in place.", "  ")).sections == 2  # empty response


def decision(text: str, *calls: dict) -> str:
    """One assistant decision in the trajectory format SFT teaches: text, then its calls."""
    return conv.render_assistant_text({"role": "assistant", "content": text, "tool_calls": list(calls)})


def test_a_decision_without_sections_keeps_the_floor_and_its_signal():
    """What a model fine-tuned on trajectories writes for a plan prompt: one decision. It costs
    the format (``FORMAT_FLOOR`` of the score) but the five components still tell a better
    decision from a worse one, so a group of such completions has a reward spread."""
    look = decision("Find where the timeout is set before changing it.", GREP, READ)
    blind = decision("Change the timeout.", EDIT)
    plan = R.parse_plan(look)
    assert plan.decision and plan.sections == 0 and plan.format_factor == R.FORMAT_FLOOR
    assert [c.name for c in plan.calls] == ["Grep", "Read"] and plan.workflow.reasoning == [
        "Find where the timeout is set before changing it."]
    good, bad = scores(look), scores(blind)
    assert 0 < R.total_reward(bad) < R.total_reward(good) < R.FORMAT_FLOOR
    assert good["tool_efficiency"] == pytest.approx(R.FORMAT_FLOOR * 2 / 4)  # half of Claude's sequence
    assert bad["constraint_adherence"] == 0.0 < good["constraint_adherence"]  # edits blind
    # The same content in the workflow format scores twice as much: the format still pays.
    whole = plan_text([("", [GREP, READ])], reasoning=["Find where the timeout is set before changing it."])
    assert R.total_reward(scores(whole)) == pytest.approx(2 * R.total_reward(good))
    # A call that cannot be read counts as a wrong tool, as in a plan.
    broken = look + '\n<tool_call>{"name": "Bash", "arguments": {oops}}</tool_call>'
    assert R.parse_plan(broken).unreadable_calls == 1
    two = reference(plan_text([("Look.", [GREP, READ])]))
    assert scores(broken, two)["tool_efficiency"] == pytest.approx(R.FORMAT_FLOOR * 2 / 3)
    assert scores(look, two)["tool_efficiency"] == R.FORMAT_FLOOR
    # Any heading means the text is read as a plan, not as a decision.
    assert not R.parse_plan("Plan:\n" + look).decision


def test_a_group_of_decisions_has_a_reward_spread():
    """The failure this floor fixes: with a factor of 0 every decision scored 0, the group's
    rewards had zero spread and GRPO's advantages were all 0."""
    group = [decision("Look first.", GREP), decision("Read the config, then fix it.", READ, EDIT),
             decision("Fix it.", EDIT), "I am not sure."]
    totals = [R.total_reward(scores(t)) for t in group]
    assert len(set(totals)) == len(totals) and totals[-1] == 0.0, totals


def test_a_fixed_plan_is_the_most_common_completion_and_never_beats_the_references(ccrl_home):
    """The training split's most common completion, written for every held-out prompt of the
    fixture transcripts' RL prompt set, scores below the prompts' own references (a constant
    output cannot pass for a learned policy)."""
    rows = [{"reference_completion": t, "reference_tool_sequence": s} for t, s in
            (("A", ["Read"]), ("B", ["Grep", "Read"]), ("C", ["Read"]), ("C", ["Read"]))]
    assert R.fixed_plan(rows) == "C" and R.fixed_plan([{"reference_completion": ""}]) is None
    assert R.fixed_plan([{"reference_completion": CLAUDE}]) == CLAUDE  # sequence parsed when not given

    train, held_out = _fixture_rl_rows()
    constant = R.fixed_plan(train)
    refs = [R.make_reference(r["reference_signals"], r["reference_completion"], r["prompt"]) for r in held_out]
    own = R.score_rows([r["reference_completion"] for r in held_out], refs)["reward"]
    fixed = R.score_rows([constant] * len(refs), refs)["reward"]
    assert fixed < own - 0.2, (fixed, own)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("Reasoning:Plan:Response:\n1.<tool_call>{}\"name\":Read,arguments -")), max_size=300))
def test_any_text_scores_within_bounds(text):
    for value in scores(text).values():
        assert 0.0 <= value <= 1.0


# --- the TRL interface -----------------------------------------------------------------------------


def test_reward_functions_follow_trls_calling_convention():
    assert [f.__name__ for f in R.REWARD_FUNCS] == list(R.COMPONENTS)
    prompt = [{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": "Fix it; don't modify the tests."}]
    blind = plan_text([("Change.", [EDIT])])
    completions = [[{"role": "assistant", "content": CLAUDE}], [{"role": "assistant", "content": blind}],
                   [{"role": "assistant", "content": "garbage"}]]
    columns = {"reference_signals": [json.dumps(REF.signals)] * 3, "reference_completion": [CLAUDE] * 3,
               "reference_tool_sequence": [REF.tool_sequence] * 3, "trace_id": [1, 1, 1],
               "trainer_state": object(), "log_extra": lambda *a, **k: None, "log_metric": lambda *a, **k: None}
    results = {f.__name__: f(prompts=[prompt] * 3, completions=completions, completion_ids=[[1]] * 3, **columns)
               for f in R.REWARD_FUNCS}
    assert all(len(v) == 3 and all(isinstance(x, float) for x in v) for v in results.values())
    # The blind edit fails read-before-edit; the prompt's "don't modify the tests" holds.
    assert results["constraint_adherence"] == [1.0, 0.5, 0.0]
    assert all(v[0] == 1.0 and v[2] == 0.0 for v in results.values())
    # Plain-text completions, and tool calls the tokenizer parsed out of the content, read the same.
    as_text = R.tool_efficiency(prompts=["Fix it"], completions=[CLAUDE], reference_signals=[json.dumps(REF.signals)])
    head, _, _ = CLAUDE.partition('<tool_call>{"name": "Bash"')
    parsed = [{"role": "assistant", "content": head.rstrip("\n"), "tool_calls": [TEST]}]
    tail = R.tool_efficiency(prompts=["Fix it"], completions=[parsed], reference_signals=[json.dumps(REF.signals)])
    assert as_text == [1.0] and tail == [pytest.approx(5 / 6)]  # the response was lost with the tail


def test_missing_or_bad_reference_columns():
    with pytest.raises(ValueError, match="no 'reference_signals' column"):
        R.reasoning_depth(prompts=["x"], completions=[CLAUDE])
    with pytest.raises(ValueError, match="2 values for 1 completions"):
        R.reasoning_depth(prompts=["x"], completions=[CLAUDE], reference_signals=["{}", "{}"])
    # Unreadable signals: scored against an empty reference, never a crash.
    [value] = R.exploration_fit(prompts=["x"], completions=[CLAUDE], reference_signals=["{not json"])
    assert 0.0 <= value <= 1.0


def test_score_rows_gives_mean_total_and_components():
    blind = plan_text([("Change.", [EDIT])])
    result = R.score_rows([CLAUDE, blind], [REF, REF])
    assert result["n"] == 2 and result["components"]["constraint_adherence"] == 0.5
    per = [R.total_reward(R.score_components(t, REF)) for t in (CLAUDE, blind)]
    assert result["reward"] == pytest.approx(sum(per) / 2) and per[0] == 1.0 > per[1]
    with pytest.raises(ValueError):
        R.score_rows([CLAUDE], [])


# --- Claude's own plans from the fixture transcripts ------------------------------------------------


def _fixture_rl_rows() -> tuple[list[dict], list[dict]]:
    """The RL prompt set's train and eval rows built from the fixture transcripts (needs ``ccrl_home``)."""
    from conftest import TRANSCRIPTS

    from ccrl.agent.capture.importer import import_transcripts
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.datasets.datasets import build_dataset

    import_transcripts(TRANSCRIPTS)
    version = build_dataset(get_settings())
    splits = []
    for split in ("train", "eval"):
        with open(f"{version.path}/jsonl/rl_prompts.{split}.jsonl", encoding="utf-8") as fh:
            splits.append([json.loads(line) for line in fh])
    return splits[0], splits[1]


def test_fixture_references_score_high_against_themselves_and_low_against_others(ccrl_home):
    """On the real RL prompt set: Claude's own plan for a prompt scores well, another prompt's
    plan scores lower on average, and junk scores 0."""
    train, held_out = _fixture_rl_rows()
    rows = train + held_out
    assert len(rows) >= 8
    refs = [R.make_reference(r["reference_signals"], r["reference_completion"], r["prompt"]) for r in rows]
    own = [R.total_reward(R.score_components(r["reference_completion"], ref)) for r, ref in zip(rows, refs)]
    shifted = [R.total_reward(R.score_components(rows[(i + 1) % len(rows)]["reference_completion"], ref))
               for i, ref in enumerate(refs)]
    assert min(own) >= 0.8, own
    assert sum(own) / len(own) > sum(shifted) / len(shifted) + 0.15, (own, shifted)
    assert all(R.total_reward(R.score_components("I am not sure.", ref)) == 0.0 for ref in refs)
