"""The conversation format: trajectory messages, tool calls as text and back, the workflow
format and its parser."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccrl.trainers import conversation as conv
from ccrl.trainers.signals import extract_signals
from test_signals import TraceBuilder


def sample_trace() -> dict:
    return (TraceBuilder("Make the default timeout configurable")
            .think("The user wants a configurable timeout. First, find where it is set.")
            .say("Let me find where the timeout is set.")
            .calls(("Grep", {"pattern": "timeout", "path": "/repo"}), ("Read", {"file_path": "/repo/cfg.py"}),
                   outputs=("cfg.py:3: timeout = 30", "x" * 5000))
            .say("Now update the default:")
            .call("Edit", {"file_path": "/repo/cfg.py", "old_string": "timeout = 30",
                           "new_string": "timeout = int(os.environ.get(\"T\", 30))"}, error=True,
                  output="File has not been read yet")
            .call("Edit", {"file_path": "/repo/cfg.py", "old_string": "timeout = 30 ",
                           "new_string": "timeout = 45 "})
            .say("The timeout now reads `T` from the environment.")
            .build())


# --------------------------------------------------------------------------------------------
# Trajectory


def test_trace_to_messages_structure():
    msgs = conv.trace_to_messages(sample_trace(), tool_result_tokens=100)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "tool", "assistant", "tool",
                                         "assistant", "tool", "assistant"]
    system, user, first = msgs[0], msgs[1], msgs[2]
    assert "Tools: Edit, Grep, Read" in system["content"] and "Working directory: /repo" in system["content"]
    assert user == {"role": "user", "content": "Make the default timeout configurable"}
    # thinking and text of the turn, then both parallel calls with their ids and JSON-string arguments
    assert first["content"] == ("The user wants a configurable timeout. First, find where it is set.\n\n"
                                "Let me find where the timeout is set.")
    assert [c["function"]["name"] for c in first["tool_calls"]] == ["Grep", "Read"]
    assert first["tool_calls"][0] == {"type": "function", "id": "toolu_1", "function": {
        "name": "Grep", "arguments": '{"path":"/repo","pattern":"timeout"}'}}
    # results in call order, linked by id, long output cut with a marker
    assert msgs[3] == {"role": "tool", "tool_call_id": "toolu_1", "name": "Grep", "content": "cfg.py:3: timeout = 30"}
    assert msgs[4]["tool_call_id"] == "toolu_2" and "[ccrl: 4600 characters omitted]" in msgs[4]["content"]
    assert len(msgs[4]["content"]) < 450
    assert msgs[6]["content"] == "[tool error]\nFile has not been read yet"
    assert msgs[-1] == {"role": "assistant", "content": "The timeout now reads `T` from the environment."}
    assert conv.next_action_decisions(msgs) == 4


def test_arguments_are_canonical_json_strings():
    """Ollama's form (Go's json.Marshal of a map): compact, keys sorted at every level, UTF-8
    kept, <, > and & escaped (so a call's arguments can never hold a literal </tool_call>)."""
    t = (TraceBuilder().call("Write", {"file_path": "/é.txt", "content": "naïve </tool_call> ok",
                                       "meta": {"z": [1.0, {"b": True, "a": None}], "a": "x&y"}})
         .say("ok").build())
    call = conv.trace_to_messages(t)[2]["tool_calls"][0]
    assert call["function"]["arguments"] == (
        '{"content":"naïve \\u003c/tool_call\\u003e ok","file_path":"/é.txt",'
        '"meta":{"a":"x\\u0026y","z":[1,{"a":null,"b":true}]}}')


@pytest.mark.parametrize(("value", "text"), [
    ({}, "{}"),
    ({"b": 1, "a": {"d": 2, "c": [3, {"f": 4, "e": 5}]}}, '{"a":{"c":[3,{"e":5,"f":4}],"d":2},"b":1}'),
    ({"é": 1, "e": 2, "~": 3, "A": 4}, '{"A":4,"e":2,"~":3,"é":1}'),  # code points = Go's UTF-8 byte order
    ({"s": "<a href='x'>&amp;</a>"}, '{"s":"\\u003ca href=\'x\'\\u003e\\u0026amp;\\u003c/a\\u003e"}'),
    ({"s": "é ü 😀 \u2028\u2029"}, '{"s":"é ü 😀 \\u2028\\u2029"}'),
    ({"s": "tab\tnl\n\"q\" \\ \x01\x1f\x7f\b\f"}, '{"s":"tab\\tnl\\n\\"q\\" \\\\ \\u0001\\u001f\x7f\\b\\f"}'),
    ({"s": "\ud800x"}, '{"s":"\ufffdx"}'),  # a lone surrogate cannot reach Ollama as UTF-8
    ({"n": [0, -3, 1.0, 1.5, 0.1, 1e-6, 1e-7, 2.5e-10, 1e20, 1e21, 3.14e100]},
     '{"n":[0,-3,1,1.5,0.1,0.000001,1e-7,2.5e-10,100000000000000000000,1e+21,3.14e+100]}'),
    ({"n": [2 ** 53, 2 ** 53 + 1, 12345678901234567890, 10 ** 25]},  # Ollama decodes numbers as float64
     '{"n":[9007199254740992,9007199254740992,12345678901234567000,1e+25]}'),
])
def test_tool_arguments_writes_what_go_json_marshal_writes(value, text):
    assert conv.tool_arguments(value) == text
    assert conv.tool_arguments(json.loads(text)) == text  # idempotent


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)) | st.sampled_from("<>&\u2028\u2029")),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(value=st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_tool_arguments_fast_path_agrees_with_the_reference_writer(value):
    """Most inputs go through json.dumps (fast); the rest through the Go-number writer. Both agree."""
    text = conv.tool_arguments(value)
    assert text == conv._go_json(value)
    if not re.search(r"[:,\[]-0[,\]}]", text):  # (Python's json reads -0 back as the integer 0)
        assert conv.tool_arguments(json.loads(text)) == text


def test_negative_zero_is_written_as_go_writes_it():
    assert conv.tool_arguments({"n": -0.0}) == '{"n":-0}'  # (Python's json reads -0 back as the integer 0)


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": float("inf")}, {"x": 10 ** 400}, {1: "a"}, {"x": {1, 2}}])
def test_tool_arguments_refuses_what_json_cannot_hold(bad):
    with pytest.raises((TypeError, ValueError)):
        conv.tool_arguments(bad)
    trace = TraceBuilder().call("Bash", bad).say("ok").build()
    with pytest.raises(conv.ConversionError, match="corrupt_tool_input"):
        conv.trace_to_messages(trace)


def test_truncate_result_keeps_head_and_tail():
    text = "HEAD" + "-" * 1000 + "TAIL"
    cut = conv.truncate_result(text, max_tokens=20)
    assert cut.startswith("HEAD") and cut.endswith("TAIL") and "[ccrl: 928 characters omitted]" in cut
    assert conv.truncate_result("short", 20) == "short"


def test_missing_result_and_response_fallback():
    t = TraceBuilder().call("Read", {"file_path": "/a"}).build(response="From the Stop hook.")
    t["steps"] = [s for s in t["steps"] if s["kind"] != "tool_result"]
    msgs = conv.trace_to_messages(t)
    assert msgs[3]["content"] == conv.NO_RESULT
    assert msgs[-1] == {"role": "assistant", "content": "From the Stop hook."}


def test_answer_without_tools_keeps_thinking():
    t = TraceBuilder("hi").think("A greeting; no tools needed.").say("Hello!").build()
    assert conv.trace_to_messages(t)[2:] == [{"role": "assistant", "content": "A greeting; no tools needed.\n\nHello!"}]


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda t: t.update(prompt="  "), "empty_prompt"),
    (lambda t: t["steps"][0].update(input="{broken"), "corrupt_tool_input"),
    (lambda t: t["steps"][0].update(input={"x": {1, 2}}), "corrupt_tool_input"),
    (lambda t: t["steps"].pop(), "empty_response"),
])
def test_bad_input_raises_conversion_error(mutate, reason):
    t = TraceBuilder().call("Read", {"file_path": "/a"}).say("ok").build()
    mutate(t)
    with pytest.raises(conv.ConversionError) as info:
        conv.trace_to_messages(t)
    assert info.value.reason == reason
    with pytest.raises(conv.ConversionError):
        conv.trace_to_workflow(t)


# --------------------------------------------------------------------------------------------
# Tool calls as text


def test_render_assistant_text_format():
    msg = conv.trace_to_messages(sample_trace())[2]
    text = conv.render_assistant_text(msg)
    assert text == (
        "The user wants a configurable timeout. First, find where it is set.\n\n"
        "Let me find where the timeout is set.\n"
        '<tool_call>{"name": "Grep", "arguments": {"path":"/repo","pattern":"timeout"}}</tool_call>\n'
        '<tool_call>{"name": "Read", "arguments": {"file_path":"/repo/cfg.py"}}</tool_call>'
    )
    assert conv.render_assistant_text({"role": "assistant", "content": "", "tool_calls": msg["tool_calls"][:1]}) \
        == '<tool_call>{"name": "Grep", "arguments": {"path":"/repo","pattern":"timeout"}}</tool_call>'
    # Arrow fills absent keys with None
    assert conv.render_assistant_text({"role": "assistant", "content": "Done.", "tool_calls": None}) == "Done."


def test_parse_round_trips_every_assistant_message():
    for msg in conv.trace_to_messages(sample_trace()):
        if msg["role"] != "assistant":
            continue
        parsed = conv.parse_assistant_text(conv.render_assistant_text(msg))
        content, calls = parsed
        assert content == msg["content"] and parsed.errors == []
        assert calls == [{"type": "function", "function": c["function"]} for c in msg.get("tool_calls", [])]


def test_arguments_containing_the_closing_tag_round_trip():
    arguments = conv.tool_arguments({"content": "a</tool_call>b<tool_call>"})
    call = {"type": "function", "function": {"name": "Write", "arguments": arguments}}
    text = conv.render_assistant_text({"content": "x", "tool_calls": [call]})
    assert text.count("<tool_call>") == 1 and text.count("</tool_call>") == 1  # escaped in the arguments
    assert conv.parse_assistant_text(text) == ("x", [call])
    # A model that writes the tags unescaped inside a string is still read right, canonically.
    raw = 'x\n<tool_call>{"name": "Write", "arguments": {"content": "a</tool_call>b<tool_call>"}}</tool_call>'
    assert conv.parse_assistant_text(raw) == ("x", [call])


@settings(max_examples=200, deadline=None)
@given(content=st.text().filter(lambda s: "<tool_call>" not in s),
       calls=st.lists(st.tuples(st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-]{0,20}", fullmatch=True),
                                st.dictionaries(st.text(max_size=10), st.text(max_size=30) | st.integers() | st.none(),
                                                max_size=4)), max_size=4))
def test_render_parse_round_trip_property(content, calls):
    tool_calls = [{"type": "function", "function": {"name": n, "arguments": conv.tool_arguments(a)}}
                  for n, a in calls]
    if not content and not tool_calls:
        return
    parsed = conv.parse_assistant_text(conv.render_assistant_text({"content": content, "tool_calls": tool_calls}))
    assert parsed == (content, tool_calls) and parsed.errors == []
    # Arguments in any other JSON layout (a model's own spacing and key order) parse canonically.
    spaced = [{"type": "function", "function": {"name": n, "arguments": json.dumps(a, ensure_ascii=False)}}
              for n, a in calls]
    assert conv.parse_assistant_text(conv.render_assistant_text({"content": content, "tool_calls": spaced})) \
        == (content, tool_calls)


def test_parse_tolerates_model_output():
    text = ('I will read it.\n<tool_call> {"name": "Read", "arguments": "{\\"file_path\\": \\"/a\\"}"} </tool_call>'
            '<tool_call>{"name":"Grep","parameters":{"pattern":"x"}}</tool_call>\nthen more')
    content, calls = parsed = conv.parse_assistant_text(text)
    assert content == "I will read it.\nthen more"
    assert calls == [{"type": "function", "function": {"name": "Read", "arguments": '{"file_path":"/a"}'}},
                     {"type": "function", "function": {"name": "Grep", "arguments": '{"pattern":"x"}'}}]
    assert parsed.errors == []
    assert conv.tool_call_input(calls[0]) == {"file_path": "/a"}


@pytest.mark.parametrize(("text", "n_calls", "error"), [
    ('<tool_call>{"name": "Read", "arguments": {"file_path": </tool_call>', 0, "invalid JSON"),
    ('<tool_call>{"arguments": {}}</tool_call>', 0, "no tool name"),
    ('<tool_call>{"name": "Read", "arguments": [1]}</tool_call>', 0, "not a JSON object"),
    ('<tool_call>{"name": "Read", "arguments": {"file_path": "/a"}}', 1, "no </tool_call>"),
    ('<tool_call>{"name": "Read", "arguments": {"a": 1}}</tool_call><tool_call>oops', 1, "invalid JSON"),
    ("<tool_call>", 0, "invalid JSON"),
])
def test_parse_reports_what_it_cannot_read(text, n_calls, error):
    parsed = conv.parse_assistant_text(text)
    assert len(parsed.calls) == n_calls
    assert len(parsed.errors) == 1 and error in parsed.errors[0]


def test_parse_never_raises_on_non_text():
    parsed = conv.parse_assistant_text(None)
    assert parsed == ("", []) and parsed.errors


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('<>/{}":,tool_call name arguments[]\\\n xyz01')), max_size=120))
def test_parse_assistant_text_never_raises(text):
    content, calls = conv.parse_assistant_text(text)
    assert isinstance(content, str) and isinstance(calls, list)


# --------------------------------------------------------------------------------------------
# Tools


def test_tool_catalog_infers_schemas_deterministically():
    a, b = conv.ToolCatalog(), conv.ToolCatalog()
    calls = [("Read", {"file_path": "/a", "limit": 10}), ("Read", {"file_path": "/b"}), ("Bash", {"command": "ls"}),
             ("Read", {"file_path": "/c", "limit": None})]
    for name, tool_input in calls:
        a.add(name, tool_input)
    for name, tool_input in reversed(calls):
        b.add(name, tool_input)
    assert a.tools() == b.tools()
    bash, read = a.tools()
    assert bash["function"]["name"] == "Bash" and bash["function"]["description"] == conv.TOOL_DESCRIPTIONS["Bash"]
    assert read["function"]["parameters"] == {
        "type": "object", "properties": {"file_path": {"type": "string"}, "limit": {"type": ["integer", "null"]}},
        "required": ["file_path"]}
    assert json.loads(conv.tools_json(a.tools())) == a.tools()


# --------------------------------------------------------------------------------------------
# Workflow


def test_workflow_text():
    msgs = conv.trace_to_workflow(sample_trace())
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert "Reasoning:" in msgs[0]["content"] and "Plan:" in msgs[0]["content"]
    assert msgs[2]["content"] == (
        "Reasoning:\n"
        "1. First, find where it is set.\n"
        "2. Let me find where the timeout is set.\n"
        "3. Now update the default\n"
        "Plan:\n"
        "1. Let me find where the timeout is set.\n"
        '<tool_call>{"name": "Grep", "arguments": {"path":"/repo","pattern":"timeout"}}</tool_call>\n'
        '<tool_call>{"name": "Read", "arguments": {"file_path":"/repo/cfg.py"}}</tool_call>\n'
        "2. Now update the default\n"
        '<tool_call>{"name": "Edit", "arguments": {"file_path":"/repo/cfg.py",'
        '"new_string":"timeout = int(os.environ.get(\\"T\\", 30))","old_string":"timeout = 30"}}</tool_call>\n'
        "3.\n"
        '<tool_call>{"name": "Edit", "arguments": {"file_path":"/repo/cfg.py",'
        '"new_string":"timeout = 45 ","old_string":"timeout = 30 "}}</tool_call>\n'
        "Response:\n"
        "The timeout now reads `T` from the environment."
    )


def test_workflow_round_trip_and_signals_of_a_parsed_plan():
    trace = sample_trace()
    text = conv.trace_to_workflow(trace)[2]["content"]
    wf = conv.parse_workflow(text)
    assert wf.errors == []
    assert conv.render_workflow(wf.reasoning, wf.plan, wf.response) == text
    assert wf.tool_sequence == ["Grep", "Read", "Edit", "Edit"]
    assert [len(s.calls) for s in wf.plan] == [2, 1, 1]
    s = extract_signals(conv.workflow_to_trace(wf, trace["prompt"]))
    ref = extract_signals(trace)
    assert s["tool_sequence"] == ref["tool_sequence"]
    assert s["complexity"]["parallel_batches"] == ref["complexity"]["parallel_batches"] == 1
    assert s["exploration_depth"] == ref["exploration_depth"]


def test_workflow_cuts_long_arguments():
    t = TraceBuilder().call("Write", {"file_path": "/a", "content": "y" * 1000}).say("ok").build()
    text = conv.trace_to_workflow(t, argument_max_chars=50)[2]["content"]
    call = conv.parse_workflow(text).plan[0].calls[0]
    assert conv.tool_call_input(call)["content"] == "y" * 50 + "…[ccrl: 950 characters omitted]"


def test_parse_workflow_tolerates_markdown_and_reports_missing_sections():
    text = ("## Reasoning\n- read first\n- then edit\n**Plan:**\n1) check\n"
            '<tool_call>{"name": "Read", "arguments": {"file_path": "/a"}}</tool_call>\n'
            "Answer: it is fixed.")
    wf = conv.parse_workflow(text)
    assert wf.reasoning == ["read first", "then edit"]
    assert [(s.reason, conv.tool_call_input(s.calls[0])) for s in wf.plan] == [("check", {"file_path": "/a"})]
    assert wf.response == "it is fixed." and wf.errors == []

    broken = conv.parse_workflow("I think we should edit main.py\n<tool_call>{bad}</tool_call>")
    assert set(broken.errors) == {"no Reasoning section", "no Plan section", "no Response section"}
    assert broken.plan == [] and broken.response == ""
    assert conv.parse_workflow(42).errors


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("Reasoning:Plan:Response:\n1. <tool_call>{}\"name\"")), max_size=150))
def test_parse_workflow_never_raises(text):
    wf = conv.parse_workflow(text)
    extract_signals(conv.workflow_to_trace(wf))
