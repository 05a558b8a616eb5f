"""Decision windows (trainers/windows.py, trainers/sft_windows.py) with the real SmolLM2
tokenizer and the ChatML training template: every decision of a long trace is a target exactly
once within the budget, the loss mask covers exactly the targets, a target longer than the budget
keeps its tool name in the loss, the prompt's tokens are a prefix of the example's with the
Hugging Face and the llama.cpp tokenizers, and SFT on windowed data learns.

Traces go through the dataset builder's own converter (``trace_to_messages``), seeded.
"""

from __future__ import annotations

import json
import random

import pytest

from ccrl.trainers.chat_templates import attach_template
from ccrl.trainers.conversation import render_assistant_text, trace_to_messages
from ccrl.trainers.sft_windows import WindowStats, fitted_windows, mask_spans, window_examples
from ccrl.trainers.windows import cut_target, estimate_cost, plan_windows, prompt_window

from conftest import embedded_tokenizer_dir

BUDGET = 512
END = "<|im_end|>"


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_tokenizer_dir()))
    attach_template(tokenizer, "chatml")
    return tokenizer


def long_trace(calls: int, seed: int, *, huge_write: bool = False) -> dict:
    """A trace of ``calls`` tool calls (some parallel), outputs from a line to a few kilobytes,
    reasoning of varied length, and a final answer."""
    rng = random.Random(seed)
    steps, results, n = [], [], 0
    while n < calls:
        words = " ".join(rng.choice(["check", "the", "module", "test", "fails", "because", "import", "path"])
                         for _ in range(rng.randint(0, 60)))
        steps.append({"kind": "text", "text": f"Step {n}: {words}"})
        turn_results = []
        for _ in range(min(rng.choice([1, 1, 1, 2, 3]), calls - n)):
            name = rng.choice(["Read", "Grep", "Bash", "Edit"])
            tool_input = {"file_path": f"/repo/src/m{rng.randint(0, 9)}.py", "n": n}
            if huge_write and n == calls // 2:
                name, tool_input = "Write", {"file_path": "/repo/big.py", "content": "x = 1\n" * 4000}
            steps.append({"kind": "tool_use", "tool_use_id": f"toolu_{n}", "name": name, "input": tool_input})
            output = "\n".join(f"line {i}: value = {rng.random():.6f}" for i in range(rng.choice([1, 5, 40, 200])))
            results.append({"id": f"toolu_{n}", "output": output, "is_error": rng.random() < 0.1})
            turn_results.append({"kind": "tool_result", "tool_use_id": f"toolu_{n}", "output": output})
            n += 1
        steps += turn_results
    steps.append({"kind": "text", "text": "All tests pass now: the import path was wrong."})
    return {"prompt": "Fix the failing test in src/ and explain why it failed.", "cwd": "/repo", "steps": steps,
            "tool_calls": results, "response": "All tests pass now: the import path was wrong.", "status": "complete"}


def test_every_decision_of_a_50_call_trace_is_a_target_exactly_once_within_512_tokens(tok):
    messages = trace_to_messages(long_trace(50, seed=1))
    decisions = sum(1 for m in messages if m["role"] == "assistant")
    assert decisions > 20  # parallel calls share a decision; the answer is one more
    for max_targets in (None, 1):
        plan, kept = fitted_windows(tok, messages, BUDGET, max_targets=max_targets)
        assert len(kept) == len(plan.windows) and not plan.untrainable
        targeted = sorted(d for window, _e in kept for d in window.decisions)
        assert targeted == list(range(decisions))
        assert all(len(e["input_ids"]) <= BUDGET for _w, e in kept)
        if max_targets == 1:
            assert len(kept) == decisions
        else:
            assert len(kept) < decisions  # several consecutive decisions share a window
        # Long histories were shortened, then cut, each with its marker.
        assert any(w.shortened_results for w, _e in kept) and any(w.dropped_turns for w, _e in kept)
        marked = [w for w, _e in kept if w.dropped_turns]
        assert all(f"[ccrl: {w.dropped_turns} earlier turn" in w.messages[1]["content"] for w in marked)
    stats = WindowStats()
    window_examples(tok, messages, BUDGET, stats=stats)
    assert stats.share_trained == 1.0 and stats.decisions == decisions


def test_loss_mask_covers_exactly_the_target_turns(tok):
    messages = trace_to_messages(long_trace(50, seed=2))
    _plan, kept = fitted_windows(tok, messages, BUDGET)
    with_context = 0
    for window, example in kept:
        spans = mask_spans(example["assistant_masks"])
        decoded = [tok.decode(example["input_ids"][a:b]) for a, b in spans]
        assert decoded == [render_assistant_text(window.messages[t]) + END for t in window.targets]
        # Assistant turns of the history are context: in the window, outside the loss.
        context = [k for k, m in enumerate(window.messages) if m["role"] == "assistant" and k not in window.targets]
        with_context += bool(context)
    assert with_context > 0


def test_a_target_longer_than_the_budget_keeps_its_tool_name_in_the_loss(tok):
    messages = trace_to_messages(long_trace(12, seed=3, huge_write=True))
    big = next(k for k, m in enumerate(messages) if m["role"] == "assistant"
               and any(c["function"]["name"] == "Write" for c in m.get("tool_calls") or []))
    assert len(tok(render_assistant_text(messages[big]))["input_ids"]) > 4 * BUDGET
    plan, kept = fitted_windows(tok, messages, BUDGET)
    assert sum(len(w.targets) for w, _e in kept) == plan.decisions
    (window, example), = [(w, e) for w, e in kept if w.cut_targets]
    trained = "".join(tok.decode(example["input_ids"][a:b]) for a, b in mask_spans(example["assistant_masks"]))
    assert '<tool_call>{"name": "Write", "arguments": {' in trained and "characters omitted]" in trained
    assert trained.endswith(f"}}</tool_call>{END}") and len(example["input_ids"]) <= BUDGET
    # The cut arguments are still the JSON object the model must learn to write.
    calls = window.messages[window.targets[0]]["tool_calls"]
    write = next(c["function"]["arguments"] for c in calls if c["function"]["name"] == "Write")
    assert json.loads(write)["file_path"] == "/repo/big.py"


def test_prompt_tokens_are_a_prefix_of_the_example_with_hf_and_llama_cpp_tokenizers(tok):
    from llama_cpp import Llama

    from ccrl.trainers.base_models import smollm2_gguf_path

    vocab = Llama(model_path=str(smollm2_gguf_path()), vocab_only=True, verbose=False)
    messages = trace_to_messages(long_trace(30, seed=4))
    _plan, kept = fitted_windows(tok, messages, BUDGET)
    for window, example in kept:
        first = window.targets[0]
        prompt = tok.apply_chat_template(window.messages[:first], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(window.messages, tokenize=False)
        assert full.startswith(prompt)
        hf_prompt = tok(prompt, add_special_tokens=False)["input_ids"]
        assert example["input_ids"][:len(hf_prompt)] == hf_prompt
        assert tok(full, add_special_tokens=False)["input_ids"] == example["input_ids"]
        cpp_full = vocab.tokenize(full.encode(), add_bos=False, special=True)
        cpp_prompt = vocab.tokenize(prompt.encode(), add_bos=False, special=True)
        assert cpp_full[:len(cpp_prompt)] == cpp_prompt
        assert cpp_full == example["input_ids"]  # what llama.cpp (GGUF, Ollama) sees is what was trained


def test_evaluation_prompt_window_fits_and_keeps_the_head():
    messages = trace_to_messages(long_trace(50, seed=5))
    cost = estimate_cost(lambda m: render_assistant_text(m) if m["role"] == "assistant" else m.get("content") or "")
    last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
    prompt = prompt_window(messages, last, 400, cost)
    assert prompt[:2] == messages[:2][:1] + [prompt[1]] and prompt[1]["content"].startswith(messages[1]["content"])
    assert sum(cost(m) for m in prompt) <= 400 and prompt[-1] == messages[last - 1]
    # The estimate-based plan covers every decision too (the dataset card's count).
    plan = plan_windows(messages, 400, cost)
    assert plan.targeted == plan.decisions and not plan.untrainable


def test_sft_on_windowed_data_learns(tmp_path):
    """A real SFT run on the tiny model over windowed long traces: the eval loss falls."""
    from datasets import Dataset, DatasetDict

    from ccrl.trainers.base_models import build_tiny_llama
    from ccrl.trainers.sft import SFTRunConfig, train_sft

    rows = [{"messages": trace_to_messages(long_trace(15, seed=10 + i))} for i in range(3)]
    DatasetDict(train=Dataset.from_list(rows), eval=Dataset.from_list(rows[:1])).save_to_disk(str(tmp_path / "d"))
    model = build_tiny_llama(tmp_path / "tiny", embedded_tokenizer_dir())
    config = SFTRunConfig(max_length=384, max_steps=12, learning_rate=2e-3, gradient_accumulation_steps=1,
                          per_device_train_batch_size=2, merge=False, eval_each_epoch=False, save_steps=100,
                          cpu_threads=1, warmup_ratio=0.0, gradient_checkpointing=False)
    result = train_sft(tmp_path / "d", tmp_path / "run", str(model), config, progress_bar=False, emit=lambda e: None)
    m = result.metrics
    assert m["train_decisions"] == m["train_decisions_trained"] > 20
    assert m["train_examples"] > 3 and m["eval_loss_after"] < m["eval_loss_before"]


def test_a_target_with_a_long_list_is_trimmed_to_its_first_items_and_keeps_its_name():
    todos = [{"content": f"task {i}", "status": "pending", "activeForm": f"doing {i}"} for i in range(300)]
    message = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "id": "t1", "function": {"name": "TodoWrite", "arguments": json.dumps({"todos": todos})}}]}
    cost = estimate_cost(render_assistant_text)
    assert cost(message) > 10 * 120
    cut = cut_target(message, 120, cost)
    assert cut is not None and cost(cut) <= 120
    call = cut["tool_calls"][0]["function"]
    kept = json.loads(call["arguments"])["todos"]
    assert call["name"] == "TodoWrite" and kept[-1].endswith("more items omitted]") and kept[0]["status"] == "pending"
