"""The Ollama Go templates render a conversation to exactly the text the training templates do.

Go's ``text/template`` is the reference implementation of Ollama templates: ``tests/go_render``
renders them the way Ollama does (its message types, JSON encoder, collation), and the training
side is rendered by transformers from ``trainers/templates/<family>.jinja``.
"""

from __future__ import annotations

import json

import pytest

from ccrl.agent.conversation import ToolCatalog, trace_to_messages
from ccrl.trainers import chat_templates
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
            "function": {"name": name, "arguments": ollama_arguments_json(arguments)}}


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


def go(binary, family_name: str, messages: list[dict], tools=None) -> str:
    return go_render(binary, "render", family(family_name).template, ollama_messages(messages), tools)


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
    ids and tool names), with arguments written the way Ollama prints them."""
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
    for message in messages:
        for c in message.get("tool_calls") or []:
            c["function"]["arguments"] = ollama_arguments_json(json.loads(c["function"]["arguments"]))
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
