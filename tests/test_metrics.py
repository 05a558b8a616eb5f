"""The evaluation metrics on hand-built traces and sequences with answers worked out by hand."""

from __future__ import annotations

import json

import random

import pytest

from ccrl.trainers import metrics as m
from ccrl.trainers.conversation import render_assistant_text, trace_to_messages, tools_for_trace


def _call(i: int, name: str, args: dict) -> dict:
    return {"type": "function", "id": f"toolu_{i}", "function": {"name": name, "arguments": json.dumps(args)}}


# --- intervals ---------------------------------------------------------------------------------


def test_wilson_interval_known_values():
    # Worked by hand (z = 1.95996): 8 of 10 -> centre 0.7390, half-width 0.2290.
    low, high = m.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)
    # At the edges it stays inside [0, 1] and is not degenerate.
    low, high = m.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = m.wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)
    assert m.wilson_interval(0, 0) == (0.0, 1.0)
    # A higher confidence gives a wider interval; more data a narrower one.
    assert m.wilson_interval(8, 10, 0.99)[0] < 0.4902
    assert m.wilson_interval(80, 100)[1] - m.wilson_interval(80, 100)[0] < high - low + 1
    with pytest.raises(ValueError):
        m.wilson_interval(11, 10)


def test_rate_and_mean_intervals():
    r = m.rate(3, 4)
    assert r.value == 0.75 and r.to_dict()["n"] == 4 and r.low < 0.75 < r.high
    assert m.rate(0, 0).value is None
    mean = m.mean_interval([0.0, 1.0, 1.0, 0.0])
    assert mean.value == 0.5 and 0.0 <= mean.low < 0.5 < mean.high <= 1.0
    # Seeded: the same values give the same interval.
    assert m.mean_interval([0.0, 1.0, 1.0, 0.0]) == mean
    one = m.mean_interval([0.4])
    assert one.value == 0.4 and one.low is None and one.high is None
    assert m.mean_interval([]).value is None
    constant = m.mean_interval([0.3, 0.3, 0.3])
    assert constant.low == pytest.approx(0.3) and constant.high == pytest.approx(0.3)


def test_paired_difference():
    better = [1, 1, 1, 1, 0, 1, 1, 1]
    worse = [0, 0, 1, 0, 0, 0, 1, 0]
    diff = m.paired_difference(better, worse)
    assert diff.value == pytest.approx(5 / 8) and diff.low > 0
    with pytest.raises(ValueError):
        m.paired_difference([1], [1, 0])


def _correlated_sessions(n_sessions: int = 10, size: int = 10) -> tuple[list[int], list[str]]:
    """Half the sessions all right, half all wrong: decisions within a session move together."""
    outcomes, sessions = [], []
    for s in range(n_sessions):
        outcomes += [int(s % 2 == 0)] * size
        sessions += [f"s{s}"] * size
    return outcomes, sessions


def test_session_interval_is_wider_when_decisions_within_a_session_are_correlated():
    outcomes, sessions = _correlated_sessions()
    clustered = m.session_rate(outcomes, sessions)
    wilson = m.rate(sum(outcomes), len(outcomes))
    decision_bootstrap = m.mean_interval(outcomes)
    assert clustered.value == wilson.value == 0.5 and clustered.n == 100 and clustered.sessions == 10
    assert clustered.method == m.SESSION_BOOTSTRAP and decision_bootstrap.method == m.DECISION_BOOTSTRAP
    width = clustered.high - clustered.low
    # 100 "independent" decisions claim about +-0.1; ten sessions really only support about +-0.3.
    assert width > 1.5 * (wilson.high - wilson.low)
    assert width > 1.5 * (decision_bootstrap.high - decision_bootstrap.low)
    # Independent decisions (every decision its own session): close to the Wilson interval.
    independent = m.session_rate(outcomes, [str(i) for i in range(100)])
    assert abs((independent.high - independent.low) - (wilson.high - wilson.low)) < 0.05


def test_session_bootstrap_is_reproducible_with_a_seed():
    rng = random.Random(7)
    outcomes = [rng.random() < 0.6 for _ in range(90)]
    sessions = [f"s{rng.randrange(12)}" for _ in range(90)]
    first = m.session_rate(outcomes, sessions, seed=3)
    assert m.session_rate(outcomes, sessions, seed=3) == first
    assert m.cluster_bootstrap([int(o) for o in outcomes], sessions, seed=3) == (first.low, first.high)
    # The seed is what fixes it: other seeds draw other resamples.
    assert len({(m.session_rate(outcomes, sessions, seed=s).low, m.session_rate(outcomes, sessions, seed=s).high)
                for s in range(5)}) > 1


def test_single_session_falls_back_and_says_so():
    one = m.session_rate([1, 1, 0, 1], ["only"] * 4)
    assert one.method == m.WILSON_ONE_SESSION and (one.low, one.high) == m.wilson_interval(3, 4)
    assert m.session_rate([1, 0], None).method == m.WILSON_NO_SESSIONS
    assert m.session_rate([1, 0], ["a", None]).method == m.WILSON_NO_SESSIONS  # one unknown: no clustering
    nothing = m.session_rate([], [])
    assert nothing.value is None and nothing.low is None and nothing.high is None
    diff = m.paired_difference([1, 1, 0], [0, 1, 0], sessions=["only"] * 3)
    assert diff.method == m.DECISION_BOOTSTRAP_ONE_SESSION and diff.low is not None
    with pytest.raises(ValueError):
        m.session_rate([1, 0], ["a"])


def test_paired_difference_resamples_sessions():
    """Model A beats B on every decision of one session out of ten and ties elsewhere: per
    decision the gain looks certain; per session it rests on one session and the interval
    reaches zero."""
    a, b, sessions = [], [], []
    for s in range(10):
        a += [1] * 20
        b += [0 if s == 0 else 1] * 20
        sessions += [f"s{s}"] * 20
    by_decision = m.paired_difference(a, b)
    by_session = m.paired_difference(a, b, sessions=sessions)
    assert by_decision.value == by_session.value == pytest.approx(0.1)
    assert by_decision.low > 0.0
    assert by_session.low <= 0.0 < by_session.high and by_session.method == m.SESSION_BOOTSTRAP
    assert by_session.sessions == 10
    # The same seed, the same interval.
    assert m.paired_difference(a, b, sessions=sessions) == by_session


def test_summarise_decisions_by_session():
    outcomes, sessions = _correlated_sessions()
    scores = [m.DecisionScore(bool(o), None if i % 4 == 0 else bool(o), False) for i, o in enumerate(outcomes)]
    out = m.summarise_decisions(scores, sessions=sessions)
    assert out["next_action"].method == m.SESSION_BOOTSTRAP and out["next_action"].sessions == 10
    assert out["tool_name"].n == 75 and out["tool_name"].sessions == 10
    plain = m.summarise_decisions(scores)
    assert plain["next_action"].successes == out["next_action"].successes
    assert out["next_action"].high - out["next_action"].low > plain["next_action"].high - plain["next_action"].low


# --- actions and arguments -----------------------------------------------------------------------


def test_actions_from_messages_and_model_text():
    message = {"role": "assistant", "content": "Look first.",
               "tool_calls": [_call(1, "Read", {"file_path": "/r/a.py"}), _call(2, "Grep", {"pattern": "x"})]}
    reference = m.action_from_message(message)
    assert reference.tool_names == ["Read", "Grep"] and reference.label == ("Grep", "Read")
    assert not reference.is_answer
    # What the model writes is read back with the conversation format's parser.
    generated = m.action_from_text(render_assistant_text(message))
    assert generated.calls == reference.calls
    answer = m.action_from_text("All done: the bug was in parse().")
    assert answer.is_answer and answer.label == (m.ANSWER,)
    broken = m.action_from_text('Let me look.\n<tool_call>{"name": "Read", "arguments": {"file_path": </tool_call>')
    assert broken.is_answer and broken.parse_errors
    assert m.action_from_label(("Read",)).calls == (m.Call("Read", None),)
    assert m.action_from_label((m.ANSWER,)).is_answer


def test_a_call_cut_off_by_the_token_budget_counts_by_its_name_only():
    reference = m.Action((m.Call("Read", {"file_path": "/r/a.py"}),))
    # The budget ran out inside the arguments: the model had decided on Read.
    cut = m.action_from_text('Reading it.\n<tool_call>{"name": "Read", "arguments": {"file_path": "/r/a')
    assert cut.calls == (m.Call("Read", None),)
    score = m.score_decision(cut, reference)
    assert score.decision and score.tool_name and not score.arguments and score.next_action
    # A complete call before the cut one keeps its arguments; both count.
    both = m.action_from_text('<tool_call>{"name": "Grep", "arguments": {"pattern": "x"}}</tool_call>\n'
                              '<tool_call>{"name": "Read", "arg')
    assert both.calls == (m.Call("Grep", {"pattern": "x"}), m.Call("Read", None))
    # Cut before the name was complete: no call can be read, so the turn counts as an answer.
    assert m.action_from_text('Reading it.\n<tool_call>{"name": "Re').is_answer
    # A closed call with broken JSON is not a cut-off call: the model finished writing it.
    assert m.action_from_text('<tool_call>{"name": "Read", "arguments": {"file_path": </tool_call>').is_answer


def test_path_normalisation_and_working_directory():
    assert m.working_directory("Intro.\n\nWorking directory: /home/u/proj\n\nTools: Read") == "/home/u/proj"
    assert m.working_directory("no directory here") is None
    assert m.normalise_path("src/./a.py", "/repo") == "/repo/src/a.py"
    assert m.normalise_path("/repo//src/../src/a.py") == "/repo/src/a.py"
    assert m.normalise_path("/repo/dir/", None) == "/repo/dir"
    assert m.normalise_value("file_path", " ./a.py ", "/r") == "/r/a.py"
    assert m.normalise_value("command", "  ls -la ") == "ls -la"
    assert m.normalise_value("limit", 10) == m.normalise_value("limit", 10.0)
    assert m.normalise_value("flag", True) is True


def test_arguments_match_bfcl_style():
    schema = m.ToolSchema(required=frozenset({"file_path"}), properties=frozenset({"file_path", "offset", "limit"}))
    reference = {"file_path": "/repo/src/a.py", "limit": 50}
    ok = dict(schema=schema, cwd="/repo")
    # The same file named relatively, the optional limit left out: the same action.
    assert m.arguments_match({"file_path": "src/a.py"}, reference, **ok)
    # A different file, a required argument missing, a known optional with another value.
    assert not m.arguments_match({"file_path": "src/b.py"}, reference, **ok)
    assert not m.arguments_match({"limit": 50}, reference, **ok)
    assert not m.arguments_match({"file_path": "src/a.py", "limit": 10}, reference, **ok)
    # A known optional Claude did not give is allowed; an invented key is not.
    assert m.arguments_match({"file_path": "src/a.py", "offset": 3}, reference, **ok)
    assert not m.arguments_match({"file_path": "src/a.py", "mode": "fast"}, reference, **ok)
    assert not m.arguments_match(None, reference, **ok)
    # Without a schema every key of Claude's call is required and nothing else may appear.
    assert m.arguments_match({"pattern": "x"}, {"pattern": "x"})
    assert not m.arguments_match({"pattern": "x", "path": "."}, {"pattern": "x"})
    assert not m.arguments_match({}, {"pattern": "x"})


def test_tool_schemas_from_the_dataset_tools_column():
    trace = {"prompt": "p", "steps": [
        {"kind": "tool_use", "tool_use_id": "a", "name": "Read", "input": {"file_path": "/x", "limit": 3}},
        {"kind": "tool_result", "tool_use_id": "a", "output": "…"},
        {"kind": "tool_use", "tool_use_id": "b", "name": "Read", "input": {"file_path": "/y"}},
        {"kind": "tool_result", "tool_use_id": "b", "output": "…"},
        {"kind": "text", "text": "done"}]}
    schemas = m.tool_schemas(json.dumps(tools_for_trace(trace)))
    assert schemas["Read"].required == {"file_path"}
    assert schemas["Read"].properties == {"file_path", "limit"}
    assert m.tool_schemas("not json") == {}


# --- scoring decisions -----------------------------------------------------------------------------


def test_score_decision_cases():
    ref_read = m.Action((m.Call("Read", {"file_path": "/r/a.py"}),))
    ref_answer = m.Action()
    # Same tool, same file (relative): everything agrees.
    s = m.score_decision(m.Action((m.Call("Read", {"file_path": "a.py"}),)), ref_read, cwd="/r")
    assert (s.next_action, s.decision, s.tool_name, s.arguments) == (True, True, True, True)
    # Same tool, other file: the next action agrees (names), the arguments do not.
    s = m.score_decision(m.Action((m.Call("Read", {"file_path": "b.py"}),)), ref_read, cwd="/r")
    assert (s.next_action, s.tool_name, s.arguments) == (True, True, False)
    # Another tool.
    s = m.score_decision(m.Action((m.Call("Grep", {"pattern": "x"}),)), ref_read)
    assert (s.next_action, s.decision, s.tool_name) == (False, True, False)
    # Answering where Claude called, and calling where Claude answered.
    s = m.score_decision(ref_answer, ref_read)
    assert (s.next_action, s.decision, s.tool_name, s.arguments) == (False, False, False, False)
    s = m.score_decision(ref_read, ref_answer)
    assert (s.next_action, s.decision, s.tool_name, s.arguments) == (False, False, None, None)
    s = m.score_decision(ref_answer, ref_answer)
    assert (s.next_action, s.decision, s.tool_name) == (True, True, None)


def test_parallel_calls_match_in_any_order_one_to_one():
    ref = m.Action((m.Call("Read", {"file_path": "/a"}), m.Call("Read", {"file_path": "/b"}), m.Call("Grep", {"pattern": "p"})))
    swapped = m.Action((m.Call("Grep", {"pattern": "p"}), m.Call("Read", {"file_path": "/b"}), m.Call("Read", {"file_path": "/a"})))
    s = m.score_decision(swapped, ref)
    assert s.tool_name and s.arguments
    # Both reads of the same file: names agree, but /b is never read (no one-to-one pairing).
    twice = m.Action((m.Call("Read", {"file_path": "/a"}), m.Call("Read", {"file_path": "/a"}), m.Call("Grep", {"pattern": "p"})))
    s = m.score_decision(twice, ref)
    assert s.tool_name and not s.arguments
    # One call fewer: the multiset of names differs.
    fewer = m.Action(ref.calls[:2])
    s = m.score_decision(fewer, ref)
    assert not s.tool_name and not s.next_action


def test_summarise_decisions_denominators():
    scores = [
        m.DecisionScore(True, True, True),     # right call, right arguments
        m.DecisionScore(True, True, False),    # right call, wrong arguments
        m.DecisionScore(True, False, False),   # wrong tool
        m.DecisionScore(False, False, False),  # answered too early
        m.DecisionScore(True, None, None),     # answered when Claude did
    ]
    out = m.summarise_decisions(scores)
    assert (out["next_action"].successes, out["next_action"].n) == (3, 5)
    assert (out["decision"].successes, out["decision"].n) == (4, 5)
    assert (out["tool_name"].successes, out["tool_name"].n) == (2, 4)
    assert (out["arguments"].successes, out["arguments"].n) == (1, 4)


# --- decision points of a real conversation ----------------------------------------------------------


def _trace() -> dict:
    return {
        "id": 7, "prompt": "Fix the failing test in src/m.py", "cwd": "/repo", "response": "Fixed it.",
        "steps": [
            {"kind": "text", "text": "Let me look at the file and the test."},
            {"kind": "tool_use", "tool_use_id": "t1", "name": "Read", "input": {"file_path": "/repo/src/m.py"}},
            {"kind": "tool_use", "tool_use_id": "t2", "name": "Grep", "input": {"pattern": "def test_"}},
            {"kind": "tool_result", "tool_use_id": "t1", "output": "x = 1"},
            {"kind": "tool_result", "tool_use_id": "t2", "output": "tests/t.py:3"},
            {"kind": "text", "text": "The constant is wrong."},
            {"kind": "tool_use", "tool_use_id": "t3", "name": "Edit",
             "input": {"file_path": "/repo/src/m.py", "old_string": "x = 1", "new_string": "x = 2"}},
            {"kind": "tool_result", "tool_use_id": "t3", "output": "ok"},
            {"kind": "text", "text": "Fixed it."},
        ],
    }


def test_decision_points_of_a_trajectory():
    trace = _trace()
    tools = tools_for_trace(trace)
    messages = trace_to_messages(trace, tools=tools)
    points = m.decision_points(messages, trace_id=7, tools=json.dumps(tools))
    assert [p.reference.label for p in points] == [("Grep", "Read"), ("Edit",), (m.ANSWER,)]
    assert [p.previous for p in points] == [(m.START,), ("Grep", "Read"), ("Edit",)]
    assert all(p.cwd == "/repo" for p in points)
    # The prefix is Claude's real history up to the decision: system, prompt, then its turns
    # and the tool results; the decision's own message is not in it.
    assert [msg["role"] for msg in points[1].prefix] == ["system", "user", "assistant", "tool", "tool"]
    assert points[0].prompt_tokens < points[1].prompt_tokens < points[2].prompt_tokens
    assert points[1].schemas["Edit"].required == {"file_path", "old_string", "new_string"}
    assert m.action_labels(messages) == [("Grep", "Read"), ("Edit",), (m.ANSWER,)]


# --- plans ----------------------------------------------------------------------------------------------


def test_edit_distance_and_lcs_known_values():
    assert m.levenshtein("kitten", "sitting") == 3
    assert m.levenshtein([], ["Read"]) == 1
    assert m.normalised_edit_distance(["Read", "Edit"], ["Read", "Edit"]) == 0.0
    assert m.normalised_edit_distance(["Read", "Grep", "Edit"], ["Read", "Edit"]) == pytest.approx(1 / 3)
    assert m.normalised_edit_distance([], []) == 0.0
    assert m.normalised_edit_distance(["Bash"], ["Read", "Edit"]) == 1.0
    assert m.lcs_length(["Read", "Grep", "Read", "Edit"], ["Grep", "Read", "Edit", "Bash"]) == 3


def test_in_order_precision_recall():
    # Claude: Read, Grep, Edit, Bash. The model: Read, Edit, Write -> in order it shares
    # Read, Edit: precision 2/3, recall 2/4.
    p, r = m.in_order_precision_recall(["Read", "Edit", "Write"], ["Read", "Grep", "Edit", "Bash"])
    assert (p, r) == (pytest.approx(2 / 3), 0.5)
    # Order matters: the same tools reversed share one in order.
    p, r = m.in_order_precision_recall(["Edit", "Read"], ["Read", "Edit"])
    assert (p, r) == (0.5, 0.5)
    assert m.in_order_precision_recall([], []) == (1.0, 1.0)
    assert m.in_order_precision_recall([], ["Read"]) == (0.0, 0.0)
    assert m.in_order_precision_recall(["Read"], []) == (0.0, 1.0)


def test_plan_summary():
    scores = [m.score_plan(["Read", "Edit"], ["Read", "Edit"]),
              m.score_plan(["Bash"], ["Read", "Edit"], well_formed=False)]
    out = m.summarise_plans(scores)
    assert out["plan_edit_distance"].value == pytest.approx(0.5)
    assert out["plan_precision"].value == pytest.approx(0.5)
    assert out["plan_recall"].value == pytest.approx(0.5)
    assert (out["plan_format"].successes, out["plan_format"].n) == (1, 2)


# --- baselines -------------------------------------------------------------------------------------------


def test_baselines_on_hand_built_sequences():
    A, B, C, ANS = ("Read",), ("Grep",), ("Edit",), (m.ANSWER,)
    train = [[A, B, C, ANS], [A, C, ANS], [B, C, C, ANS]]
    tools = [["Read", "Grep", "Edit"], ["Read", "Edit"], ["Grep", "Edit", "Edit"]]
    most = m.MostFrequentBaseline(train, tools)
    # Counts: Edit 4, answer 3, Read 2, Grep 2.
    assert most.predict(A) == C and most.predict(None) == C
    assert most.plan() == ["Edit", "Edit", "Edit"]  # median plan length 3
    bigram = m.BigramBaseline(train, tools)
    assert bigram.predict((m.START,)) == A          # start -> Read twice, Grep once
    assert bigram.predict(A) == C                   # Read -> Grep 1, Edit 1: a tie goes to the smaller label
    assert bigram.predict(C) == ANS                 # Edit -> answer 3, Edit 1
    assert bigram.predict(("Bash",)) == C           # never seen: the overall most frequent
    # Plan chain: start -> Read (2) -> Edit? Read -> Grep 1 / Edit 1 (tie: Edit < Grep) -> Edit -> end.
    assert bigram.plan() == ["Read", "Edit"]
    with pytest.raises(ValueError):
        m.MostFrequentBaseline([], [])


def test_bigram_beats_most_frequent_on_a_regular_pattern():
    A, B, ANS = ("TodoWrite",), ("Bash",), (m.ANSWER,)
    train = [[A, B, A, B, A, ANS]] * 3
    held_out = [m.DecisionPoint(1, i, i, [], m.action_from_label(label), prev, None)
                for i, (prev, label) in enumerate(zip([(m.START,), A, B, A, B], [A, B, A, B, A]))]
    for baseline, expected in ((m.MostFrequentBaseline(train), 3), (m.BigramBaseline(train), 5)):
        scores = [m.score_decision(m.action_from_label(baseline.predict(p.previous)), p.reference) for p in held_out]
        assert sum(s.next_action for s in scores) == expected
