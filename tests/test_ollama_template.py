"""The Ollama Go templates render a conversation to exactly the text the training templates do.

Go's ``text/template`` is the reference implementation of Ollama templates: ``tests/go_render``
renders them the way Ollama does (its message types, JSON encoder, collation, and the plain-map
arguments its templates see: ``render`` as Ollama v0.14+, ``render-legacy`` as v0.2.6 to v0.13),
and the training side is rendered by transformers from ``trainers/templates/<family>.jinja``.
"""

from __future__ import annotations

import json

import pytest

from ccrl.trainers import chat_templates
from ccrl.trainers.conversation import ToolCatalog, parse_assistant_text, tool_arguments, trace_to_messages
from ccrl.trainers.ollama_template import (
    FAMILIES,
    detect_family,
    family,
    ollama_arguments_json,
    ollama_messages,
    ollama_parameters,
    strip_generation_markers,
)
from ollama_server import build_go_renderer, go_render

BOS = {"chatml": "", "llama3": "<|begin_of_text|>"}
# What follows a finished assistant message in training text (Ollama leaves the last one open).
CLOSE = {"chatml": "<|im_end|>\n", "llama3": "<|eot_id|>"}


@pytest.fixture(scope="module")
def go_binary(tmp_path_factory):
    return build_go_renderer(tmp_path_factory.mktemp("go"))


def call(name: str, arguments: dict, call_id: str) -> dict:
    return {"type": "function", "id": call_id,
            "function": {"name": name, "arguments": tool_arguments(arguments)}}


def agent_conversation() -> list[dict]:
    """A multi-turn agent conversation in the dataset format: parallel calls, a call without
    text, arguments with nested objects, lists, Unicode and characters Go escapes."""
    return [
        {"role": "system", "content": "You are a coding agent.\n\nTools: Read, Bash, TodoWrite"},
        {"role": "user", "content": "Fix the failing test in src/app.py, then run it."},
        {"role": "assistant", "content": "I'll read the file and the test first.",
         "tool_calls": [call("Read", {"file_path": "/repo/src/app.py"}, "toolu_1"),
                        call("Bash", {"command": "pytest -q tests/ 2>&1 | tail -5 && echo <done>",
                                      "description": "Run the tests"}, "toolu_2")]},
        {"role": "tool", "tool_call_id": "toolu_1", "name": "Read", "content": "def add(a, b):\n    return a - b\n"},
        {"role": "tool", "tool_call_id": "toolu_2", "name": "Bash", "content": "1 failed: test_add (3 != -1)"},
        {"role": "assistant", "content": "",
         "tool_calls": [call("TodoWrite", {"todos": [{"content": "Fix add() — sign", "status": "in_progress",
                                                      "activeForm": "Fixing"}], "merge": False, "n": 3}, "toolu_3")]},
        {"role": "tool", "tool_call_id": "toolu_3", "name": "TodoWrite", "content": "ok"},
        {"role": "assistant", "content": "The subtraction should be an addition. Fixed; the test passes now."},
        {"role": "user", "content": "Thanks! Anything else?"},
        {"role": "assistant", "content": "No, that was the only failure."},
    ]


def jinja(family_name: str, messages: list[dict], *, add_generation_prompt: bool, tools=None) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages], tools=tools, chat_template=chat_templates.load_template(family_name),
        add_generation_prompt=add_generation_prompt, bos_token=BOS[family_name],
        eos_token=FAMILIES[family_name].end_of_turn,
    )
    return rendered[0]


def go(binary, family_name: str, messages: list[dict], tools=None, *, mode: str = "render") -> str:
    return go_render(binary, mode, family(family_name).template, ollama_messages(messages), tools)


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_every_prompt_of_an_agent_conversation_renders_identically(go_binary, family_name):
    messages = agent_conversation()
    prompts = [k for k in range(1, len(messages) + 1) if messages[k - 1]["role"] in ("user", "tool")]
    assert len(prompts) == 5
    for k in prompts:
        expected = jinja(family_name, messages[:k], add_generation_prompt=True)
        assert BOS[family_name] + go(go_binary, family_name, messages[:k]) == expected, f"first {k} messages"


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_a_whole_conversation_renders_identically_up_to_the_open_last_turn(go_binary, family_name):
    """Ollama leaves a final assistant message open (the model continues it); training closes it."""
    messages = agent_conversation()
    full = jinja(family_name, messages, add_generation_prompt=False)
    assert BOS[family_name] + go(go_binary, family_name, messages) + CLOSE[family_name] == full
    # The tool calls really are in the text, in the model's own format.
    assert '<tool_call>{"name": "Read", "arguments": {"file_path":"/repo/src/app.py"}}</tool_call>\n<tool_call>' in full
    # A final message with calls is left open after its last call.
    ends_in_calls = messages[:6]
    assert (BOS[family_name] + go(go_binary, family_name, ends_in_calls) + CLOSE[family_name]
            == jinja(family_name, ends_in_calls, add_generation_prompt=False))


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_conversations_from_the_dataset_builder_render_identically(go_binary, family_name):
    """Messages made by ``conversation.trace_to_messages`` (the dataset's own system prompt,
    ids, tool names and arguments), unchanged."""
    trace = {
        "prompt": "List the Python files and count their lines.",
        "cwd": "/home/dev/project",
        "response": "There are 2 Python files with 42 lines in total.",
        "steps": [
            {"kind": "text", "text": "Let me find the files."},
            {"kind": "tool_use", "tool_use_id": "t1", "name": "Glob", "input": {"pattern": "**/*.py"}},
            {"kind": "tool_result", "tool_use_id": "t1", "output": "a.py\nb.py"},
            {"kind": "tool_use", "tool_use_id": "t2", "name": "Bash", "input": {"command": "wc -l a.py b.py"}},
            {"kind": "tool_result", "tool_use_id": "t2", "output": " 20 a.py\n 22 b.py\n 42 total"},
            {"kind": "text", "text": "There are 2 Python files with 42 lines in total."},
        ],
    }
    messages = trace_to_messages(trace)
    assert [m["role"] for m in messages][:3] == ["system", "user", "assistant"]
    for k in range(1, len(messages) + 1):
        if messages[k - 1]["role"] in ("user", "tool"):
            assert (BOS[family_name] + go(go_binary, family_name, messages[:k])
                    == jinja(family_name, messages[:k], add_generation_prompt=True))
    assert (BOS[family_name] + go(go_binary, family_name, messages) + CLOSE[family_name]
            == jinja(family_name, messages, add_generation_prompt=False))


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_without_a_system_message_no_system_turn_is_written(go_binary, family_name):
    messages = [{"role": "user", "content": "hi"}]
    text = go(go_binary, family_name, messages)
    assert BOS[family_name] + text == jinja(family_name, messages, add_generation_prompt=True)
    assert "system" not in text


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_the_tool_list_is_written_in_the_training_layout(go_binary, family_name):
    """Same text around the tool list and the same tools, one JSON object per line. Each line is
    Ollama's JSON encoding of the tool (compact, its own field order), so the lines are compared
    as JSON values."""
    catalog = ToolCatalog()
    catalog.add("Read", {"file_path": "/a", "limit": 10})
    catalog.add("Bash", {"command": "ls"})
    tools = catalog.tools()
    for messages in (agent_conversation()[:2], agent_conversation()[1:2]):
        expected = jinja(family_name, messages, add_generation_prompt=True, tools=tools)
        actual = BOS[family_name] + go(go_binary, family_name, messages, tools)
        expected_lines, actual_lines = expected.split("\n"), actual.split("\n")
        assert len(expected_lines) == len(actual_lines)
        tool_lines = [i for i, line in enumerate(expected_lines) if line.startswith('{"type": "function"')]
        assert len(tool_lines) == len(tools)
        for i, (want, got) in enumerate(zip(expected_lines, actual_lines)):
            if i in tool_lines:
                assert json.loads(got) == json.loads(want)
            else:
                assert got == want


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_ollama_finds_the_tool_call_tag_and_sees_tool_support(go_binary, family_name):
    template = family(family_name).template
    assert go_render(go_binary, "tag", template) == "<tool_call>"
    assert {"messages", "tools", "toolcalls"} <= set(go_render(go_binary, "vars", template).split())


def test_stop_tokens_and_end_of_turn_agree_with_the_training_families():
    assert set(FAMILIES) == set(chat_templates.FAMILIES)
    for name, info in chat_templates.FAMILIES.items():
        assert family(name).stop == info.stop_tokens
        assert family(name).end_of_turn == info.end_of_turn
        assert detect_family(chat_templates.load_template(name)) == name
    assert ollama_parameters("llama3", num_ctx=8192) == {
        "stop": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"], "num_ctx": 8192}


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_removing_the_generation_markers_keeps_the_rendering(family_name):
    """The GGUF embeds the template without TRL's markers (llama.cpp's Jinja does not know them)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    original = chat_templates.load_template(family_name)
    stripped = strip_generation_markers(original)
    assert "generation" in original and "{% generation" not in stripped and "generation -%}" not in stripped
    for gen in (True, False):
        kwargs = dict(conversations=[agent_conversation()], add_generation_prompt=gen, bos_token=BOS[family_name])
        assert (render_jinja_template(chat_template=stripped, **kwargs)[0]
                == render_jinja_template(chat_template=original, **kwargs)[0])


def test_arguments_are_written_as_go_encodes_them():
    args = {"z": 1, "command": "a && b > c <d>", "nested": {"b": [1, "é"], "a": True}, "s": "line\nbreak\u2028"}
    assert ollama_arguments_json(args) == (
        '{"command":"a \\u0026\\u0026 b \\u003e c \\u003cd\\u003e","nested":{"a":true,"b":[1,"é"]},'
        '"s":"line\\nbreak\\u2028","z":1}'
    )
    assert json.loads(ollama_arguments_json(args)) == args
    with pytest.raises(TypeError):
        ollama_arguments_json(["not", "an", "object"])  # type: ignore[arg-type]


# --- earlier tool calls in a multi-turn chat ------------------------------------------------------

# Claude Code's inputs in its own key order (not sorted), with nested objects and lists, non-ASCII
# text, <, > and &, and numbers (an integer, floats, 0.0 that Go writes as 0).
EARLIER_INPUTS = [
    ("Bash", {"command": "grep -n 'x' src/*.py | head -3 && echo <ok> & wait", "timeout": 120000,
              "description": "Find x — über"}),
    ("Edit", {"file_path": "/repo/ünï/app.py", "old_string": "if a < b and c > d:",
              "new_string": "if a <= b & c >= d:", "replace_all": False}),
    ("TodoWrite", {"todos": [{"content": "Fix <b> & ship 🚀", "status": "in_progress", "activeForm": "Fixing",
                              "meta": {"z": 1, "a": [2.5, None, True, {"y": "日本語", "x": 1e-7, "w": 0.0}]}}]}),
    ("mcp__db__query", {"sql": "SELECT * FROM t WHERE a > 1 AND b < 2", "params": {"limit": 10, "offset": 0},
                        "é": "\u2028"}),
]


def earlier_calls_trace() -> dict:
    """Three turns: a call, a call after text, two parallel calls without text."""
    def use(n: int) -> dict:
        name, tool_input = EARLIER_INPUTS[n - 1]
        return {"kind": "tool_use", "tool_use_id": f"toolu_{n}", "name": name, "input": tool_input}

    def result(n: int) -> dict:
        return {"kind": "tool_result", "tool_use_id": f"toolu_{n}", "output": f"result {n} <ok> & done"}

    steps = [{"kind": "text", "text": "Let me look around."}, use(1), result(1),
             {"kind": "text", "text": "Now the fix <here> & there."}, use(2), result(2),
             use(3), use(4), result(3), result(4)]
    steps.append({"kind": "text", "text": "Fixed: a <= b & c >= d."})
    return {"prompt": "Fix the comparison in app.py & tell me.", "cwd": "/repo", "steps": steps,
            "response": "Fixed: a <= b & c >= d."}


def as_client_sends_them(messages: list[dict]) -> list[dict]:
    """The Ollama chat request a client sends back: each earlier call's arguments as a JSON object
    in the client's own key order (Claude Code's, not sorted), not ccrl's canonical string."""
    originals = iter(tool_input for _name, tool_input in EARLIER_INPUTS)
    out = ollama_messages(messages)
    for message in out:
        for c in message.get("tool_calls") or []:
            original = next(originals)
            assert json.loads(tool_arguments(original)) == c["function"]["arguments"]
            c["function"]["arguments"] = original
    return out


@pytest.mark.parametrize("mode", ["render", "render-legacy"])
@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_earlier_tool_calls_render_identically(go_binary, family_name, mode):
    """The dataset's conversation, and the request a client sends while the conversation goes on:
    every prompt Ollama builds (earlier calls included, whatever key order the client kept) is
    the training text, in the Ollama of today (v0.14+) and in older ones (v0.2.6 to v0.13)."""
    messages = trace_to_messages(earlier_calls_trace())
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "tool",
                                             "assistant", "tool", "tool", "assistant"]
    assert len(messages[6]["tool_calls"]) == 2
    template = family(family_name).template
    for k in range(1, len(messages) + 1):
        if messages[k - 1]["role"] in ("user", "tool"):
            expected = jinja(family_name, messages[:k], add_generation_prompt=True)
            rendered = go_render(go_binary, mode, template, as_client_sends_them(messages[:k]))
            assert BOS[family_name] + rendered == expected, f"first {k} messages"
    full = jinja(family_name, messages, add_generation_prompt=False)
    rendered = go_render(go_binary, mode, template, as_client_sends_them(messages))
    assert BOS[family_name] + rendered + CLOSE[family_name] == full
    # What the model saw in training and sees again from Ollama: canonical arguments.
    assert ('<tool_call>{"name": "Bash", "arguments": {"command":"grep -n \'x\' src/*.py | head -3 \\u0026\\u0026 '
            'echo \\u003cok\\u003e \\u0026 wait","description":"Find x — über","timeout":120000}}</tool_call>') in full
    assert ('{"todos":[{"activeForm":"Fixing","content":"Fix \\u003cb\\u003e \\u0026 ship 🚀",'
            '"meta":{"a":[2.5,null,true,{"w":0,"x":1e-7,"y":"日本語"}],"z":1},"status":"in_progress"}]}') in full
    assert '{"params":{"limit":10,"offset":0},"sql":"SELECT * FROM t WHERE a \\u003e 1 AND b \\u003c 2","é":"\\u2028"}' in full


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_a_generated_call_comes_back_as_the_parser_reads_it(go_binary, family_name):
    """The model writes a call in its own layout; Ollama parses it and renders it canonically in
    the next request, and ccrl's parser (evaluation, RL) reads it into that same canonical form,
    so a conversation continued from parsed output is the text Ollama shows the model."""
    generated = ('Checking.\n<tool_call>{"name": "Grep", "arguments": {"pattern": "a < b", "path": "/répo",'
                 ' "-n": true, "head_limit": 5.0}}</tool_call>')
    parsed = parse_assistant_text(generated)
    assert parsed.errors == [] and parsed.calls[0]["function"]["arguments"] == (
        '{"-n":true,"head_limit":5,"path":"/répo","pattern":"a \\u003c b"}')
    messages = [{"role": "user", "content": "Where is a < b?"},
                {"role": "assistant", "content": parsed.content, "tool_calls": parsed.calls},
                {"role": "tool", "name": "Grep", "content": "x.py:1"}]
    client = ollama_messages(messages)
    # Ollama's own parse of the output keeps the model's key order and values (5.0 stays a float).
    client[1]["tool_calls"][0]["function"]["arguments"] = {"pattern": "a < b", "path": "/répo", "-n": True,
                                                           "head_limit": 5.0}
    for mode in ("render", "render-legacy"):
        rendered = go_render(go_binary, mode, family(family_name).template, client)
        assert BOS[family_name] + rendered == jinja(family_name, messages, add_generation_prompt=True)


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_the_gguf_template_renders_earlier_calls_as_training_does(family_name):
    """The GGUF embeds the training template without TRL's markers; llama-cpp-python's Jinja
    (``chat_format="chat_template.default"``) renders the same conversation, with the arguments
    strings an OpenAI-compatible client sends back, to the training text."""
    from llama_cpp import llama_chat_format  # the [gguf] extra is part of the test environment
    template = strip_generation_markers(chat_templates.load_template(family_name))
    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=template, eos_token=FAMILIES[family_name].end_of_turn, bos_token=BOS[family_name])
    messages = trace_to_messages(earlier_calls_trace())
    for k in range(1, len(messages) + 1):
        if messages[k - 1]["role"] in ("user", "tool"):
            assert (formatter(messages=messages[:k]).prompt
                    == jinja(family_name, messages[:k], add_generation_prompt=True)), f"first {k} messages"
