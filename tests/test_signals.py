"""Behaviour signals: each extractor on hand-written edge cases (fixture-based cases are in
the second half of this file)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccrl.trainers import signals as sig
from ccrl.trainers.signals import extract_signals


class TraceBuilder:
    """Builds a trace dict in the records.trace_json form, step by step."""

    def __init__(self, prompt: str = "fix the bug") -> None:
        self.steps: list[dict] = []
        self.prompt = prompt
        self._n = 0
        self._msg = 0

    def think(self, text: str) -> TraceBuilder:
        self.steps.append({"kind": "thinking", "text": text, "message_id": f"msg_{self._msg}"})
        return self

    def say(self, text: str) -> TraceBuilder:
        self.steps.append({"kind": "text", "text": text, "message_id": f"msg_{self._msg}"})
        return self

    def calls(self, *calls: tuple, errors: tuple[int, ...] = (), outputs: tuple[str, ...] = ()) -> TraceBuilder:
        """Parallel calls in one assistant message, then their results."""
        ids = []
        for name, tool_input in calls:
            self._n += 1
            ids.append(f"toolu_{self._n}")
            self.steps.append({"kind": "tool_use", "tool_use_id": ids[-1], "name": name,
                               "input": tool_input, "message_id": f"msg_{self._msg}"})
        for k, call_id in enumerate(ids):
            output = outputs[k] if k < len(outputs) else "ok"
            self.steps.append({"kind": "tool_result", "tool_use_id": call_id, "output": output,
                               "is_error": k in errors})
        self._msg += 1
        return self

    def call(self, name: str, tool_input: dict, *, error: bool = False, output: str = "ok") -> TraceBuilder:
        return self.calls((name, tool_input), errors=(0,) if error else (), outputs=(output,))

    def build(self, **extra) -> dict:
        trace = {"id": 1, "session_id": "s1", "parent_id": None, "prompt": self.prompt,
                 "response": "", "reasoning": [], "tool_calls": [], "steps": self.steps,
                 "signals": {}, "status": "complete", "cwd": "/repo"}
        trace.update(extra)
        return trace


def texts(items: list[dict]) -> list[str]:
    return [i["text"] for i in items]


# --------------------------------------------------------------------------------------------
# Tool sequence and transitions


def test_tool_sequence_keeps_call_order_including_parallel_calls():
    t = (TraceBuilder().say("Let me look.")
         .calls(("Read", {"file_path": "/a"}), ("Grep", {"pattern": "x"}))
         .call("Read", {"file_path": "/b"}).call("Edit", {"file_path": "/b", "old_string": "a", "new_string": "b"})
         .say("Done.").build())
    assert sig.tool_sequence(t) == ["Read", "Grep", "Read", "Edit"]
    assert sig.tool_transitions(t) == {"Grep -> Read": 1, "Read -> Edit": 1, "Read -> Grep": 1}


def test_tool_sequence_falls_back_to_tool_calls_without_steps():
    t = {"prompt": "p", "tool_calls": [{"id": "1", "name": "Glob", "input": {}},
                                       {"id": "2", "name": "Read", "input": {}}], "response": "r"}
    assert sig.tool_sequence(t) == ["Glob", "Read"]
    assert sig.tool_transitions(t) == {"Glob -> Read": 1}


# --------------------------------------------------------------------------------------------
# Reasoning chain


def test_reasoning_chain_ordinals_intentions_and_numbered_lists_in_order():
    t = (TraceBuilder()
         .think("The user wants a fix. First, I need to find where the config is loaded. "
                "Then I will change the default.")
         .say("Plan:\n1. Read `config.py`\n2. Change the default\n3. Run the tests")
         .call("Read", {"file_path": "/repo/config.py"})
         .say("Next, update the default value:")
         .call("Edit", {"file_path": "/repo/config.py", "old_string": "a = 1", "new_string": "a = 2"})
         .say("1. Changed the default\n2. Finally, all good. First of all it works.")
         .build())
    chain = sig.reasoning_chain(t)
    assert texts(chain) == [
        "First, I need to find where the config is loaded.",
        "Then I will change the default.",
        "Plan",
        "Read `config.py`",
        "Change the default",
        "Run the tests",
        "Next, update the default value",
    ]
    assert [i["step"] for i in chain] == [0, 0, 1, 1, 1, 1, 4]
    # The final answer's numbered summary is not part of the plan.
    assert "Changed the default" not in texts(chain)


def test_reasoning_chain_ignores_descriptions_and_code():
    t = (TraceBuilder()
         .say("The first item in the list is wrong. Now I have the full picture.\n"
              "```python\n# First, let me explain\nnext(iter(x))\n```\n> Then, quoted text")
         .call("Read", {"file_path": "/a"}).say("Done.").build())
    assert sig.reasoning_chain(t) == []


def test_reasoning_items_are_short_single_lines():
    t = TraceBuilder().say("Let me " + "really " * 80 + "look.").call("Read", {"file_path": "/a"}).say("ok").build()
    (item,) = sig.reasoning_chain(t)
    assert len(item["text"]) <= sig.MAX_ITEM_CHARS and "\n" not in item["text"]
    assert item["text"].endswith("…")


# --------------------------------------------------------------------------------------------
# Constraints, pruning, stated corrections


def test_constraints():
    t = (TraceBuilder()
         .think("I must read the config before editing it. Don't modify the generated files. "
                "Make sure the tests still pass. I modified nothing yet.")
         .call("Read", {"file_path": "/a"})
         .say("Let me check the callers before changing the signature.")
         .call("Grep", {"pattern": "f("}).say("Done.").build())
    assert texts(sig.constraints(t)) == [
        "I must read the config before editing it.",
        "Don't modify the generated files.",
        "Make sure the tests still pass.",
        "Let me check the callers before changing the signature.",
    ]


def test_pruning():
    t = (TraceBuilder()
         .think("Skipping the migration tests because they are unrelated. No need to check the docs. "
                "The skip list is empty. I have enough context now.")
         .call("Read", {"file_path": "/a"}).say("Done.").build())
    assert texts(sig.pruning(t)) == [
        "Skipping the migration tests because they are unrelated.",
        "No need to check the docs.",
        "I have enough context now.",
    ]


def test_stated_self_corrections():
    t = (TraceBuilder()
         .say("Actually, let me check the caller first. The files are actually in src.")
         .call("Read", {"file_path": "/a"})
         .say("I apologize, I misread the error. Let me try a different approach.")
         .call("Bash", {"command": "make"}).say("Done.").build())
    found = sig.self_corrections(t)
    assert texts(found) == [
        "Actually, let me check the caller first.",
        "I apologize, I misread the error.",
        "Let me try a different approach.",
    ]
    assert {i["kind"] for i in found} == {"stated"}


# --------------------------------------------------------------------------------------------
# No false positives from tool output or file contents


LOOKS_LIKE_REASONING = (
    "Actually, let me rethink this. First, read the file. Then edit it. I must not modify X "
    "before Y. Skipping the tests because they are slow. No need to check. I apologize.\n"
    "1. step one\n2. step two\nLet me try again."
)


def test_no_signal_from_tool_output_or_file_contents():
    t = (TraceBuilder()
         .call("Read", {"file_path": "/notes.md"}, output=LOOKS_LIKE_REASONING)
         .call("Bash", {"command": "cat log"}, output=LOOKS_LIKE_REASONING, error=True)
         .say("Done.")
         .build(tool_calls=[{"id": "toolu_1", "name": "Read", "input": {}, "output": LOOKS_LIKE_REASONING}]))
    s = extract_signals(t)
    assert s["reasoning_chain"] == []
    assert s["constraints"] == []
    assert s["pruning"] == []
    assert s["self_corrections"] == []


def test_no_signal_from_the_users_prompt():
    t = TraceBuilder(prompt=LOOKS_LIKE_REASONING).call("Read", {"file_path": "/a"}).say("Done.").build()
    s = extract_signals(t)
    assert (s["reasoning_chain"], s["constraints"], s["pruning"], s["self_corrections"]) == ([], [], [], [])


def test_quoted_and_fenced_text_in_claudes_message_is_not_its_reasoning():
    t = (TraceBuilder()
         .say("The README says:\n> Actually, let me rethink this. Don't modify vendored code.\n"
              "```\nFirst, skip the tests because...\n```")
         .call("Read", {"file_path": "/a"}).say("Done.").build())
    s = extract_signals(t)
    assert (s["reasoning_chain"], s["constraints"], s["pruning"], s["self_corrections"]) == ([], [], [], [])


# --------------------------------------------------------------------------------------------
# Action-based corrections


def test_failed_call_followed_by_a_changed_retry():
    t = (TraceBuilder()
         .call("Edit", {"file_path": "/a", "old_string": "x", "new_string": "y"}, error=True)
         .call("Read", {"file_path": "/a"})
         .call("Edit", {"file_path": "/a", "old_string": "x = 1", "new_string": "y = 1"})
         .say("Done.").build())
    assert sig.self_corrections(t) == [
        {"step": 4, "kind": "retry", "text": "retried Edit with a changed input after it failed"}]


def test_identical_retry_is_not_a_correction():
    t = (TraceBuilder()
         .call("Bash", {"command": "make"}, error=True)
         .call("Bash", {"command": "make"})
         .say("Done.").build())
    assert sig.self_corrections(t) == []


def test_parallel_calls_are_not_retries_of_each_other():
    t = (TraceBuilder()
         .calls(("Read", {"file_path": "/a"}), ("Read", {"file_path": "/b"}), errors=(0,))
         .say("Done.").build())
    assert sig.self_corrections(t) == []


def test_edit_redone_after_a_check():
    t = (TraceBuilder()
         .call("Write", {"file_path": "/p/app.py", "content": "def main():\n    return compute(1)\n"})
         .call("Bash", {"command": "pytest -q"}, error=True)
         .call("Edit", {"file_path": "/p/app.py", "old_string": "    return compute(1)",
                        "new_string": "    return compute(2)"})
         .say("Fixed.").build())
    assert sig.self_corrections(t) == [
        {"step": 4, "kind": "redo", "text": "redid its own earlier change to app.py after checking it"}]


def test_follow_up_edits_without_a_check_or_of_other_lines_are_not_redos():
    write = ("Write", {"file_path": "/p/app.py", "content": "def main():\n    return compute(1)\n"})
    no_check = (TraceBuilder().call(*write).call("Read", {"file_path": "/p/app.py"})
                .call("Edit", {"file_path": "/p/app.py", "old_string": "    return compute(1)",
                               "new_string": "    return compute(2)"}).say("ok").build())
    other_lines = (TraceBuilder().call(*write).call("Bash", {"command": "pytest"})
                   .call("Edit", {"file_path": "/p/app.py", "old_string": "import os",
                                  "new_string": "import sys"}).say("ok").build())
    assert sig.self_corrections(no_check) == []
    assert sig.self_corrections(other_lines) == []


def test_second_full_write_after_a_check_is_a_redo():
    t = (TraceBuilder().call("Write", {"file_path": "/p/a.ts", "content": "x"})
         .call("Bash", {"command": "tsc"}, error=True)
         .call("Write", {"file_path": "/p/a.ts", "content": "y"}).say("ok").build())
    assert sig.self_corrections(t) == [{"step": 4, "kind": "redo", "text": "rewrote a.ts after checking it"}]


# --------------------------------------------------------------------------------------------
# Exploration depth and complexity


@pytest.mark.parametrize(("explore", "change", "depth"), [
    (0, 0, "minimal"), (1, 0, "minimal"), (2, 0, "moderate"), (5, 0, "moderate"), (6, 0, "thorough"),
    (0, 1, "minimal"), (1, 2, "minimal"), (1, 1, "moderate"), (3, 1, "moderate"), (4, 1, "thorough"),
    (7, 3, "moderate"), (8, 3, "thorough"),
])
def test_depth_from_counts(explore, change, depth):
    assert sig.depth_from_counts(explore, change) == depth


@pytest.mark.parametrize(("command", "category"), [
    ("ls -la", "explore"), ("git status", "explore"), ("git log --oneline | head", "explore"),
    ("cat x 2>&1", "explore"), ("grep foo src > /dev/null", "explore"), ("cd /x && ls", "explore"),
    ("rm -rf build", "change"), ("git commit -m x", "change"), ("echo hi > f.txt", "change"),
    ("sed -i s/a/b/ f", "change"), ("pytest -q", "execute"), ("npm run build && ls", "execute"),
])
def test_bash_categories(command, category):
    assert sig.tool_category("Bash", {"command": command}) == category


def test_tool_categories():
    assert sig.tool_category("Read") == "explore"
    assert sig.tool_category("MultiEdit") == "change"
    assert sig.tool_category("TodoWrite") == "plan"
    assert sig.tool_category("Task") == "delegate"
    assert sig.tool_category("mcp__attio__search_records") == "explore"
    assert sig.tool_category("mcp__attio__create_record") == "change"
    assert sig.tool_category("SomethingNew") == "other"


def test_complexity_and_depth_of_a_trace():
    t = (TraceBuilder().say("Let me look around.")
         .calls(("Read", {"file_path": "/a.py"}), ("Read", {"file_path": "/b.py"}), ("Grep", {"pattern": "f"}))
         .call("Glob", {"pattern": "*.py"})
         .call("Edit", {"file_path": "/a.py", "old_string": "1", "new_string": "2"}, error=True)
         .call("Edit", {"file_path": "/a.py", "old_string": "one", "new_string": "two"})
         .call("Bash", {"command": "pytest"})
         .say("Done.").build())
    s = extract_signals(t)
    assert s["complexity"] == {
        "files_touched": 2, "files_read": 2, "files_changed": 1, "steps": 6, "tool_calls": 7,
        "distinct_tools": 5, "explore_calls": 4, "change_calls": 2, "failed_calls": 1,
        "parallel_batches": 1,
    }
    assert s["exploration_depth"] == "moderate"
    edit_only = TraceBuilder().call("Edit", {"file_path": "/a", "old_string": "1", "new_string": "2"}).say("ok").build()
    assert sig.exploration_depth(edit_only) == "minimal"
    survey = TraceBuilder()
    for n in range(4):
        survey.call("Read", {"file_path": f"/f{n}"})
    survey.call("Edit", {"file_path": "/f0", "old_string": "a", "new_string": "b"}).say("ok")
    assert sig.exploration_depth(survey.build()) == "thorough"


def test_extract_signals_shape_and_json():
    t = TraceBuilder().say("First, read it.").call("Read", {"file_path": "/a"}).say("ok").build()
    s = extract_signals(t)
    assert set(s) == {"version", "tool_sequence", "tool_transitions", "reasoning_chain", "constraints",
                      "pruning", "self_corrections", "exploration_depth", "complexity"}
    assert s["version"] == sig.SIGNALS_VERSION
    assert s["exploration_depth"] in sig.DEPTHS
    assert json.loads(json.dumps(s)) == s


def test_extract_signals_on_empty_and_malformed_traces():
    assert extract_signals({})["tool_sequence"] == []
    odd = {"steps": ["junk", None, {"kind": "tool_use", "name": "Edit", "input": "{not json"},
                     {"kind": "text", "text": None}, {"kind": "tool_result", "is_error": True}],
           "tool_calls": "nope"}
    s = extract_signals(odd)
    assert s["tool_sequence"] == ["Edit"]
    assert s["complexity"]["change_calls"] == 1


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=12)
_step = st.fixed_dictionaries({"kind": st.sampled_from(["thinking", "text", "tool_use", "tool_result", "x"])},
                              optional={"text": _json, "name": _json, "input": _json, "tool_use_id": _json,
                                        "is_error": _json, "output": _json})


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.one_of(_step, _json), max_size=12), extra=st.dictionaries(st.text(max_size=10), _json, max_size=3))
def test_extract_signals_never_raises(steps, extra):
    s = extract_signals({**extra, "steps": steps})
    json.dumps(s)


# --------------------------------------------------------------------------------------------
# Real traces: the Claude Code fixture transcripts, imported into a fresh store


@pytest.fixture(scope="module")
def fixture_traces(tmp_path_factory) -> dict[int, dict]:
    """Every fixture transcript imported with ``import_transcripts``; trace id -> trace_json."""
    from sqlmodel import Session as DBSession
    from sqlmodel import select

    from ccrl.agent.capture.importer import import_transcripts
    from ccrl.agent.core.config import reset_settings_cache
    from ccrl.agent.store.db import dispose_engines, get_engine
    from ccrl.agent.store.models import ToolCall, Trace
    from ccrl.agent.store.records import trace_json
    from conftest import TRANSCRIPTS

    home = tmp_path_factory.mktemp("signals") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CCRL_HOME", str(home))
        mp.setenv("XDG_CONFIG_HOME", str(home.parent / "xdg"))
        for name in ("CCRL_DATABASE_URL", "CCRL_CONFIG", "CCRL_DISABLE"):
            mp.delenv(name, raising=False)
        reset_settings_cache()
        dispose_engines()
        assert import_transcripts(TRANSCRIPTS).errors == []
        with DBSession(get_engine()) as db:
            calls: dict[int, list] = {}
            for call in db.exec(select(ToolCall)):
                calls.setdefault(call.trace_id, []).append(call)
            traces = {t.id: trace_json(t, calls.get(t.id, [])) for t in db.exec(select(Trace))}
        dispose_engines()
        reset_settings_cache()
    return traces


def by_prompt(traces: dict[int, dict], start: str) -> dict:
    (trace,) = [t for t in traces.values() if t["prompt"].startswith(start)]
    return trace


def test_fixtures_signals_are_stored_at_import(fixture_traces):
    assert len(fixture_traces) > 20
    for trace in fixture_traces.values():
        assert trace["signals"] == extract_signals(trace)


def test_fixture_greeting_prunes_tools(fixture_traces):
    s = extract_signals(by_prompt(fixture_traces, "how are you doing"))
    assert s["tool_sequence"] == [] and s["exploration_depth"] == "minimal"
    assert s["pruning"] == [{"step": 0, "text": "This is not a technical task, so I don't need to use the "
                                                 "TodoWrite tool or any other tools."}]


def test_fixture_crud_plan_and_no_false_redo(fixture_traces):
    s = extract_signals(by_prompt(fixture_traces, "create a file `JOKE.md`"))
    assert s["tool_sequence"] == ["TodoWrite", "Write", "TodoWrite", "Read", "TodoWrite", "Edit", "TodoWrite",
                                  "Bash", "TodoWrite"]
    chain = texts(s["reasoning_chain"])
    assert chain.index("Now let me create the JOKE.md file") < chain.index("Finally, let me delete the file")
    # the requested modification of a file it wrote is not a correction: no check came in between
    assert s["self_corrections"] == []
    assert s["complexity"]["files_changed"] == 1 and s["exploration_depth"] == "minimal"


def test_fixture_nextjs_subagent_states_constraint_and_corrections(fixture_traces):
    trace = by_prompt(fixture_traces, "Create a new Next.js project structure")
    assert trace["parent_id"] is not None and trace["agent_type"] == "general-purpose"
    s = extract_signals(trace)
    assert "I need to read the file first before editing it." in texts(s["constraints"])
    stated = [i["text"] for i in s["self_corrections"] if i["kind"] == "stated"]
    assert "Let me try a different approach by providing all the answers at once" in stated
    assert "I apologize for the confusion." in stated


def test_fixture_types_subagent_rewrites_and_retries(fixture_traces):
    s = extract_signals(by_prompt(fixture_traces, "Create TypeScript types and interfaces"))
    kinds = Counter(i["kind"] for i in s["self_corrections"])
    assert kinds["redo"] >= 3 and kinds["retry"] >= 1 and kinds["stated"] >= 1
    assert {"step": 28, "kind": "redo", "text": "rewrote index.ts after checking it"} in s["self_corrections"]


def test_fixture_explore_subagent_is_thorough_and_parallel_failures_are_not_retries(fixture_traces):
    trace = by_prompt(fixture_traces, "Very thorough exploration")
    assert trace["parent_id"] is not None and trace["agent_type"] == "Explore"
    s = extract_signals(trace)
    assert s["exploration_depth"] == "thorough" and s["complexity"]["change_calls"] == 0
    failed = {x["tool_use_id"] for x in trace["steps"] if x.get("kind") == "tool_result" and x.get("is_error")}
    first_turn = sig.split_turns(sig.trace_steps(trace))[0]
    # a parallel batch of reads, some of which failed
    assert len(first_turn.calls) > 1 and any(trace["steps"][i]["tool_use_id"] in failed for i in first_turn.calls)
    assert [i for i in s["self_corrections"] if i["step"] <= max(first_turn.calls)] == []


def test_fixture_research_stops_exploring(fixture_traces):
    s = extract_signals(by_prompt(fixture_traces, "Create beads (epic + tasks"))
    assert {"step": 18, "text": "Now I have enough context."} in s["pruning"]
    assert s["exploration_depth"] == "thorough"


def _flat(text: str) -> str:
    return " ".join(text.replace("**", "").split())


def test_fixture_items_point_at_claudes_own_words_or_calls(fixture_traces):
    for trace in fixture_traces.values():
        steps = sig.trace_steps(trace)
        s = extract_signals(trace)
        for name in ("reasoning_chain", "constraints", "pruning", "self_corrections"):
            for item in s[name]:
                step = steps[item["step"]]
                if item.get("kind") in ("retry", "redo"):
                    assert step["kind"] == "tool_use"
                    continue
                assert step["kind"] in ("thinking", "text"), (trace["id"], name, item)
                assert _flat(item["text"]).rstrip("…") in _flat(step["text"]), (trace["id"], name, item)


def test_fixture_signals_ignore_tool_output_entirely(fixture_traces):
    """Replacing every tool result of every real trace with reasoning-like text changes nothing."""
    for trace in fixture_traces.values():
        poisoned = json.loads(json.dumps(trace))
        for step in poisoned["steps"]:
            if step.get("kind") == "tool_result":
                step["output"] = LOOKS_LIKE_REASONING
        for call in poisoned["tool_calls"]:
            call["output"] = LOOKS_LIKE_REASONING
        assert extract_signals(poisoned) == extract_signals(trace)
