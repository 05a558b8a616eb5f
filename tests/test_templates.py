"""The training chat templates (trainers/templates/*.jinja): exact rendering, the one
conversation format of ccrl.trainers.conversation, Arrow's None-for-absent, prefix preservation,
and assistant-only masks that end on the end-of-turn token.

Real tokenizers only: SmolLM2's (from the embedded GGUF) for ChatML, and the same tokenizer
with Llama 3's header tokens added for the Llama 3 template (no Llama tokenizer is available
offline; the template only needs those special tokens to exist).
"""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccrl.trainers.conversation import parse_assistant_text, render_assistant_text, tool_arguments, trace_to_messages

from conftest import embedded_tokenizer_dir
from ccrl.trainers.chat_templates import (
    FAMILIES,
    TemplateError,
    attach_template,
    detect_family,
    load_template,
    read_template_info,
    save_template,
)

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"]
HEADERS = {"chatml": ("<|im_start|>assistant\n", "<|im_end|>"),
           "llama3": ("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>")}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return embedded_tokenizer_dir()


@pytest.fixture(scope="module")
def tokenizers(tokenizer_dir):
    """family -> tokenizer with that family's training template attached."""
    from transformers import AutoTokenizer

    chatml = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    attach_template(chatml, "chatml")
    llama = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    llama.add_special_tokens({"bos_token": "<|begin_of_text|>", "additional_special_tokens": LLAMA3_SPECIALS})
    assert detect_family(llama) == "llama3"
    attach_template(llama, "llama3")
    return {"chatml": chatml, "llama3": llama}


def call(i: int, name: str, args: dict) -> dict:
    return {"type": "function", "id": f"toolu_{i}", "function": {"name": name, "arguments": tool_arguments(args)}}


CONVO = [
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "Fix the test"},
    {"role": "assistant", "content": "Let me look.",
     "tool_calls": [call(1, "Read", {"file_path": "a.py"}), call(2, "Grep", {"pattern": "x", "path": "é"})]},
    {"role": "tool", "tool_call_id": "toolu_1", "name": "Read", "content": "print(1)"},
    {"role": "tool", "tool_call_id": "toolu_2", "name": "Grep", "content": "a.py:1"},
    {"role": "assistant", "content": "", "tool_calls": [call(3, "Edit", {"file_path": "a.py"})]},
    {"role": "tool", "tool_call_id": "toolu_3", "name": "Edit", "content": "ok"},
    {"role": "assistant", "content": "Done."},
]
TOOLS = [{"type": "function", "function": {"name": "Read", "description": "Read a file.",
                                            "parameters": {"type": "object", "properties": {"file_path": {"type": "string"}}}}}]


def render(tok, messages, **kw) -> str:
    return tok.apply_chat_template(messages, tokenize=False, **kw)


def test_chatml_renders_parallel_calls_exactly(tokenizers):
    text = render(tokenizers["chatml"], CONVO)
    assert text == (
        "<|im_start|>system\nYou are a coding agent.<|im_end|>\n"
        "<|im_start|>user\nFix the test<|im_end|>\n"
        "<|im_start|>assistant\nLet me look.\n"
        '<tool_call>{"name": "Read", "arguments": {"file_path":"a.py"}}</tool_call>\n'
        '<tool_call>{"name": "Grep", "arguments": {"path":"é","pattern":"x"}}</tool_call><|im_end|>\n'
        "<|im_start|>tool\nprint(1)<|im_end|>\n"
        "<|im_start|>tool\na.py:1<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>{"name": "Edit", "arguments": {"file_path":"a.py"}}</tool_call><|im_end|>\n'
        "<|im_start|>tool\nok<|im_end|>\n"
        "<|im_start|>assistant\nDone.<|im_end|>\n"
    )
    assert render(tokenizers["chatml"], CONVO[:2], add_generation_prompt=True).endswith(
        "<|im_start|>user\nFix the test<|im_end|>\n<|im_start|>assistant\n"
    )


def test_llama3_renders_parallel_calls_exactly(tokenizers):
    h = lambda role: f"<|start_header_id|>{role}<|end_header_id|>\n\n"  # noqa: E731
    text = render(tokenizers["llama3"], CONVO)
    assert text == (
        "<|begin_of_text|>"
        + h("system") + "You are a coding agent.<|eot_id|>"
        + h("user") + "Fix the test<|eot_id|>"
        + h("assistant") + "Let me look.\n"
        '<tool_call>{"name": "Read", "arguments": {"file_path":"a.py"}}</tool_call>\n'
        '<tool_call>{"name": "Grep", "arguments": {"path":"é","pattern":"x"}}</tool_call><|eot_id|>'
        + h("ipython") + "print(1)<|eot_id|>"
        + h("ipython") + "a.py:1<|eot_id|>"
        + h("assistant") + '<tool_call>{"name": "Edit", "arguments": {"file_path":"a.py"}}</tool_call><|eot_id|>'
        + h("ipython") + "ok<|eot_id|>"
        + h("assistant") + "Done.<|eot_id|>"
    )
    assert render(tokenizers["llama3"], CONVO[:2], add_generation_prompt=True).endswith(h("assistant"))


@pytest.mark.parametrize("family", ["chatml", "llama3"])
def test_tools_are_rendered_once_in_the_system_turn(tokenizers, family):
    tok = tokenizers[family]
    with_tools = render(tok, CONVO, tools=TOOLS)
    without = render(tok, CONVO)
    schema = json.dumps(TOOLS[0], ensure_ascii=False)
    assert with_tools.count(schema) == 1
    assert schema not in without
    # The tools block sits inside the first (system) turn, before the user's prompt.
    assert with_tools.index(schema) < with_tools.index("Fix the test")
    for empty in (None, []):
        assert render(tok, CONVO, tools=empty) == without
    # Tools and no system message: a system turn holding only the tools.
    only_tools = render(tok, CONVO[1:], tools=TOOLS)
    assert only_tools.count(schema) == 1 and "You are a coding agent." not in only_tools


@pytest.mark.parametrize("family", ["chatml", "llama3"])
def test_arrow_nulls_render_like_absent_keys(tokenizers, family):
    from datasets import Dataset

    row = Dataset.from_list([{"messages": CONVO, "tools": json.dumps(TOOLS)}])[0]
    # Arrow merged every message's keys: the system message now has tool_calls=None etc.
    assert row["messages"][0]["tool_calls"] is None and row["messages"][0]["tool_call_id"] is None
    tok = tokenizers[family]
    assert render(tok, row["messages"], tools=json.loads(row["tools"])) == render(tok, CONVO, tools=TOOLS)
    # A null content is an empty one.
    nulled = [dict(m) for m in CONVO]
    nulled[5]["content"] = None
    assert render(tok, nulled) == render(tok, CONVO)


# --- the one conversation format --------------------------------------------------------------

names = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=24)
texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="<>"), max_size=80
)
argument_values = st.one_of(texts, st.integers(), st.booleans(), st.none(), st.lists(st.integers(), max_size=3))
arguments = st.dictionaries(texts, argument_values, max_size=4).map(tool_arguments)
parts = st.one_of(texts.map(lambda t: {"type": "text", "text": t}), st.just({"type": "image", "url": "x"}), texts)
contents = st.one_of(st.none(), st.just(""), texts, st.lists(parts, max_size=3))


@st.composite
def assistant_messages(draw):
    calls = draw(st.lists(st.tuples(names, arguments), max_size=4))
    message = {"role": "assistant", "content": draw(contents)}
    if calls or draw(st.booleans()):
        message["tool_calls"] = [
            {"type": "function", "id": f"toolu_{i}", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(calls)
        ]
    return message


def assistant_block(tok, family: str, message: dict) -> str:
    """What the template writes for ``message``, between its header and its end-of-turn token."""
    text = render(tok, [{"role": "user", "content": "q"}, message])
    head, end = HEADERS[family]
    start = text.index(head) + len(head)
    assert text.endswith(end + ("\n" if family == "chatml" else ""))
    return text[start: text.rindex(end)]


@pytest.mark.parametrize("family", ["chatml", "llama3"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=assistant_messages())
def test_assistant_text_is_conversation_render_assistant_text(tokenizers, family, message):
    rendered = assistant_block(tokenizers[family], family, message)
    assert rendered == render_assistant_text(message)
    # And the reward's parser reads the calls back from what the model is trained to write.
    parsed = parse_assistant_text(rendered)
    assert [c["function"] for c in parsed.calls] == [c["function"] for c in message.get("tool_calls") or []]


@pytest.mark.parametrize("family", ["chatml", "llama3"])
def test_dataset_builder_conversation_renders_assistant_turns_verbatim(tokenizers, family):
    trace = {
        "prompt": "Why does the test fail?",
        "response": "Because f returns 1.",
        "cwd": "/repo",
        "steps": [
            {"kind": "thinking", "text": "First, read the file.", "message_id": "m1"},
            {"kind": "tool_use", "tool_use_id": "t1", "name": "Read", "input": {"file_path": "/repo/a.py"}, "message_id": "m1"},
            {"kind": "tool_use", "tool_use_id": "t2", "name": "Grep", "input": {"pattern": "def f"}, "message_id": "m1"},
            {"kind": "tool_result", "tool_use_id": "t1", "output": "def f(): return 1", "is_error": False},
            {"kind": "tool_result", "tool_use_id": "t2", "output": "a.py:1", "is_error": False},
            {"kind": "text", "text": "Because f returns 1.", "message_id": "m2"},
        ],
        "tool_calls": [],
    }
    messages = trace_to_messages(trace)
    tok = tokenizers[family]
    text = render(tok, messages)
    for message in messages:
        if message["role"] == "assistant":
            head, end = HEADERS[family]
            assert head + render_assistant_text(message) + end in text
        else:
            assert message["content"] in text


# --- prefix preservation and masks ---------------------------------------------------------------


@st.composite
def conversations(draw):
    messages = [{"role": "system", "content": draw(texts)}] if draw(st.booleans()) else []
    messages.append({"role": "user", "content": draw(texts)})
    for _ in range(draw(st.integers(1, 3))):
        message = draw(assistant_messages())
        messages.append(message)
        for i, _call in enumerate(message.get("tool_calls") or []):
            messages.append({"role": "tool", "tool_call_id": f"toolu_{i}", "content": draw(texts)})
        if draw(st.booleans()):
            messages.append({"role": "user", "content": draw(texts)})
    return messages


@pytest.mark.parametrize("family", ["chatml", "llama3"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=conversations(), with_tools=st.booleans())
def test_templates_are_prefix_preserving(tokenizers, family, messages, with_tools):
    tok = tokenizers[family]
    tools = TOOLS if with_tools else None
    for k in range(1, len(messages)):
        shorter = render(tok, messages[:k], tools=tools)
        longer = render(tok, messages[: k + 1], tools=tools)
        assert longer.startswith(shorter)
        if messages[k]["role"] == "assistant":
            prompt = render(tok, messages[:k], tools=tools, add_generation_prompt=True)
            assert longer.startswith(prompt)


@pytest.mark.parametrize("family", ["chatml", "llama3"])
def test_assistant_mask_covers_exactly_the_assistant_text_and_end_of_turn(tokenizers, family):
    from trl.chat_template_utils import (
        has_generation_markers,
        is_chat_template_prefix_preserving,
        is_chat_template_stop_token_trained,
    )

    tok = tokenizers[family]
    out = tok.apply_chat_template(CONVO, tools=TOOLS, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    end = FAMILIES[family].end_of_turn
    end_id = tok.convert_tokens_to_ids(end)
    # Contiguous masked runs, one per assistant message, each ending on the end-of-turn token.
    runs, current = [], []
    for token, bit in zip(ids, mask):
        if bit:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    expected = [render_assistant_text(m) + end for m in CONVO if m["role"] == "assistant"]
    assert [tok.decode(r) for r in runs] == expected
    assert all(r[-1] == end_id for r in runs)
    # Everything else (system, tools, user, tool results, headers) is outside the mask.
    assert tok.decode([t for t, b in zip(ids, mask) if not b]).count("print(1)") == 1
    # TRL's own checks agree: generation markers, end-of-turn trained, prefix-preserving.
    assert has_generation_markers(tok.chat_template)
    assert is_chat_template_stop_token_trained(tok)
    assert is_chat_template_prefix_preserving(tok)


# --- families and saving -----------------------------------------------------------------------------


def test_detect_family_and_clear_error_for_unknown_tokenizers(tokenizers):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    assert detect_family(tokenizers["chatml"]) == "chatml"
    raw = Tokenizer(WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]"))
    raw.pre_tokenizer = Whitespace()
    plain = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    with pytest.raises(TemplateError, match="no ccrl training template fits"):
        detect_family(plain)
    with pytest.raises(TemplateError, match="lacks"):
        attach_template(plain, "llama3")
    with pytest.raises(TemplateError, match="unknown chat template family"):
        load_template("mistral")


def test_attach_sets_end_of_turn_and_saved_template_round_trips(tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tok.chat_template = "{{ messages }}"  # the model's stock template is replaced
    family = attach_template(tok)
    assert family.name == "chatml" and tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    save_template(tok, family.name, tmp_path / "saved")
    info = read_template_info(tmp_path / "saved")
    assert info["name"] == "chatml" and "<|im_end|>" in info["stop_tokens"]
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    assert reloaded.chat_template == load_template("chatml")
    assert (tmp_path / "saved" / "chat_template.jinja").read_text() == load_template("chatml")
    with pytest.raises(TemplateError, match="not saved by ccrl"):
        read_template_info(tmp_path)
