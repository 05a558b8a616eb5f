"""SFT examples from decision windows: each conversation cut by ``trainers/windows.py`` with the
model's own tokenizer, rendered by the training template and tokenized, with the loss mask on
the window's target turns only.

Every example fits ``max_length`` in real tokens: windows are planned with per-message token
counts and each one is then tokenized whole; a conversation with a window over the budget is
planned again with a budget smaller by the overshoot (tokens are never cut). The output is a
pre-tokenized dataset (``input_ids``, ``assistant_masks``) that TRL's SFTTrainer turns into
labels as it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from ccrl.trainers.windows import DEFAULT_SHORTENED_RESULT_TOKENS, Cost, Message, Window, WindowPlan, plan_windows

REPLAN_ATTEMPTS = 6


class WindowingError(RuntimeError):
    """The template's assistant mask does not line up with the conversation's assistant turns."""


@dataclass
class WindowStats:
    """What windowing made of a split (recorded in the run's metrics)."""

    conversations: int = 0
    decisions: int = 0
    decisions_trained: int = 0
    examples: int = 0
    supervised_tokens: int = 0
    tokens: int = 0
    shortened_results: int = 0
    dropped_turns: int = 0
    cut_targets: int = 0

    @property
    def share_trained(self) -> float | None:
        """Decisions that are a loss target, over all decisions."""
        return self.decisions_trained / self.decisions if self.decisions else None

    def to_dict(self) -> dict[str, Any]:
        """JSON form, with the share."""
        return {**asdict(self), "share_trained": self.share_trained}


def clean_messages(messages: Iterable[dict[str, Any]]) -> list[Message]:
    """Messages as the templates take them: keys Arrow filled with None left out."""
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def token_cost(tokenizer: Any, tools: list[dict[str, Any]] | None = None) -> Cost:
    """Tokens of one message as the training template renders it (alone; the system turn with
    ``tools``), cached for the message objects of one conversation."""
    cache: dict[int, tuple[Message, int]] = {}

    def cost(message: Message) -> int:
        hit = cache.get(id(message))
        if hit is not None and hit[0] is message:
            return hit[1]
        text = tokenizer.apply_chat_template([message], tools=tools if message.get("role") == "system" else None,
                                             tokenize=False)
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        cache[id(message)] = (message, n)
        return n

    return cost


def mask_spans(mask: list[int]) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of ones in a 0/1 mask."""
    spans, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            spans.append((start, i))
            start = None
    return spans


def encode_window(tokenizer: Any, window: Window, tools: list[dict[str, Any]] | None = None) -> dict[str, list[int]]:
    """``input_ids`` of the rendered window and ``assistant_masks`` set on its target turns only
    (each turn's text and its end-of-turn token, as the template's generation markers say)."""
    out = tokenizer.apply_chat_template(window.messages, tools=tools, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids = list(out["input_ids"])
    spans = mask_spans(list(out["assistant_masks"]))
    assistants = [k for k, m in enumerate(window.messages) if m.get("role") == "assistant"]
    if len(spans) != len(assistants):
        raise WindowingError(f"the chat template marked {len(spans)} assistant spans for {len(assistants)} assistant "
                             "turns: it needs {% generation %} markers around each assistant turn")
    mask = [0] * len(ids)
    for target in window.targets:
        start, end = spans[assistants.index(target)]
        mask[start:end] = [1] * (end - start)
    return {"input_ids": ids, "assistant_masks": mask}


def fitted_windows(tokenizer: Any, messages: list[Message], max_length: int, *,
                   tools: list[dict[str, Any]] | None = None,
                   shortened_result_tokens: int = DEFAULT_SHORTENED_RESULT_TOKENS,
                   max_targets: int | None = None) -> tuple[WindowPlan, list[tuple[Window, dict[str, list[int]]]]]:
    """A conversation's windows with their encodings, each at most ``max_length`` tokens (a
    window still over it after the re-plans is left out, its decisions untrained)."""
    cost = token_cost(tokenizer, tools)
    budget = max_length
    for _attempt in range(REPLAN_ATTEMPTS):
        plan = plan_windows(messages, budget, cost, shortened_result_tokens=shortened_result_tokens,
                            max_targets=max_targets)
        encoded = [encode_window(tokenizer, w, tools) for w in plan.windows]
        over = max((len(e["input_ids"]) - max_length for e in encoded), default=0)
        if over <= 0:
            break
        budget -= over
    return plan, [(w, e) for w, e in zip(plan.windows, encoded) if len(e["input_ids"]) <= max_length]


def window_examples(tokenizer: Any, messages: list[Message], max_length: int, *,
                    tools: list[dict[str, Any]] | None = None,
                    shortened_result_tokens: int = DEFAULT_SHORTENED_RESULT_TOKENS,
                    max_targets: int | None = None, stats: WindowStats | None = None) -> list[dict[str, list[int]]]:
    """One conversation's examples (:func:`fitted_windows`), counted into ``stats``."""
    plan, kept = fitted_windows(tokenizer, messages, max_length, tools=tools,
                                shortened_result_tokens=shortened_result_tokens, max_targets=max_targets)
    if stats is not None:
        stats.conversations += 1
        stats.decisions += plan.decisions
        for window, example in kept:
            stats.decisions_trained += len(window.targets)
            stats.examples += 1
            stats.supervised_tokens += sum(example["assistant_masks"])
            stats.tokens += len(example["input_ids"])
            stats.shortened_results += window.shortened_results
            stats.dropped_turns += window.dropped_turns
            stats.cut_targets += window.cut_targets
    return [e for _w, e in kept]


def windowed_dataset(rows: Any, tokenizer: Any, max_length: int, *, use_tools: bool = False,
                     shortened_result_tokens: int = DEFAULT_SHORTENED_RESULT_TOKENS,
                     max_targets: int | None = None) -> tuple[Any, WindowStats]:
    """A ``datasets.Dataset`` of windowed, tokenized examples (``input_ids``, ``assistant_masks``)
    from rows with a ``messages`` column (and a ``tools`` JSON column when ``use_tools``), in row
    order, with what windowing made of them."""
    from datasets import Dataset, Features, Sequence, Value

    stats = WindowStats()
    examples: list[dict[str, list[int]]] = []
    for row in rows:
        tools = json.loads(row["tools"]) if use_tools and row.get("tools") else None
        examples += window_examples(tokenizer, clean_messages(row["messages"]), max_length, tools=tools,
                                    shortened_result_tokens=shortened_result_tokens, max_targets=max_targets,
                                    stats=stats)
    features = Features({"input_ids": Sequence(Value("int32")), "assistant_masks": Sequence(Value("int8"))})
    return Dataset.from_list(examples, features=features), stats
