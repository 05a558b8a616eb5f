"""Which traces the dataset builder keeps: per-trace filters and prompt de-duplication.

Each filter has a name (the key the dataset card counts drops under) and a one-line
description. ``trace_filter`` applies the cheap per-trace ones in a fixed order and returns the
first that drops the trace; the length filter needs the rendered conversation and the
duplicate filters need the traces kept so far (``PromptDeduper``), so the builder applies them
last, in that order.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ccrl.agent.dataset_config import DatasetSettings
from ccrl.agent.signals import answer_steps, step_text, trace_steps

REDACTION_MARKER = re.compile(r"\[REDACTED[:_\]]")

# name -> (the setting(s) it reads, what it drops); the order is the order they are applied.
FILTERS: dict[str, tuple[str, str]] = {
    "subagent": ("include_subagents", "subagent runs, when subagents are excluded"),
    "incomplete": ("drop_incomplete", "interrupted traces and traces still open"),
    "empty": ("-", "no prompt, or no word or call from Claude"),
    "redacted_prompt": ("drop_redacted_prompts", "the prompt still holds a [REDACTED…] marker"),
    "too_few_tool_calls": ("min_tool_calls", "fewer tool calls than a multi-step task needs"),
    "too_little_reasoning": ("min_reasoning_chars, min_reasoning_steps", "too little stated reasoning before the answer"),
    "too_long": ("max_tokens", "the trajectory is longer than the token budget"),
    "duplicate_prompt": ("drop_duplicate_prompts", "the same prompt (whitespace and case ignored) as an earlier kept trace"),
    "near_duplicate_prompt": ("drop_near_duplicate_prompts, near_duplicate_max_distance",
                              "nearly the same prompt as an earlier kept trace (SimHash)"),
}


def reasoning_chars(trace: dict[str, Any]) -> int:
    """Characters of Claude's thinking and text before its final answer."""
    steps = trace_steps(trace)
    answer = answer_steps(steps)
    return sum(len(step_text(s).strip()) for i, s in enumerate(steps) if i not in answer)


def has_assistant_output(trace: dict[str, Any]) -> bool:
    """Whether Claude said or called anything in this trace."""
    for step in trace_steps(trace):
        if step.get("kind") == "tool_use" or step_text(step).strip():
            return True
    response = trace.get("response")
    return isinstance(response, str) and bool(response.strip())


def trace_filter(trace: dict[str, Any], signals: dict[str, Any], cfg: DatasetSettings) -> str | None:
    """The name of the first per-trace filter that drops ``trace``, or None to keep it."""
    if not cfg.include_subagents and (trace.get("parent_id") is not None or trace.get("agent_id")):
        return "subagent"
    if cfg.drop_incomplete and trace.get("status") != "complete":
        return "incomplete"
    prompt = trace.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip() or not has_assistant_output(trace):
        return "empty"
    if cfg.drop_redacted_prompts and REDACTION_MARKER.search(prompt):
        return "redacted_prompt"
    if len(signals.get("tool_sequence") or []) < cfg.min_tool_calls:
        return "too_few_tool_calls"
    if (reasoning_chars(trace) < cfg.min_reasoning_chars
            or len(signals.get("reasoning_chain") or []) < cfg.min_reasoning_steps):
        return "too_little_reasoning"
    return None


_WORD = re.compile(r"\w+")


def normalise_prompt(prompt: str) -> str:
    """Prompt text for exact comparison: case folded, whitespace collapsed."""
    return " ".join(prompt.casefold().split())


def simhash(text: str) -> int:
    """64-bit SimHash of a text's words and word pairs (near-identical texts differ in few bits)."""
    import numpy as np  # comes with `datasets`, which the builder needs anyway

    words = _WORD.findall(text.casefold())
    features = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    if not features:
        return 0
    hashes = np.fromiter(
        (int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little") for f in features),
        dtype=np.uint64, count=len(features),
    )
    bits = (hashes[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    votes = bits.sum(axis=0, dtype=np.int64) * 2 - len(features)
    return sum(1 << i for i in range(64) if votes[i] > 0)


class PromptDeduper:
    """Remembers the prompts of kept traces and tells whether a new one repeats one of them.

    Exact duplicates by a hash of the normalised prompt; near duplicates by SimHash distance,
    found through a band index (split the 64 bits into ``distance + 1`` bands: two hashes within
    ``distance`` bits agree on at least one band), so each check costs a few lookups however
    many prompts were kept. Memory: a few dozen bytes per kept prompt.
    """

    def __init__(self, cfg: DatasetSettings) -> None:
        self.cfg = cfg
        self.exact: set[bytes] = set()
        bands = cfg.near_duplicate_max_distance + 1
        width = 64 // bands
        self.bands = [(i * width, 64 if i == bands - 1 else (i + 1) * width) for i in range(bands)]
        self.index: dict[tuple[int, int], list[int]] = {}

    def _keys(self, value: int) -> list[tuple[int, int]]:
        return [(n, (value >> lo) & ((1 << (hi - lo)) - 1)) for n, (lo, hi) in enumerate(self.bands)]

    def check_and_add(self, prompt: str) -> str | None:
        """``duplicate_prompt`` / ``near_duplicate_prompt`` if ``prompt`` repeats a kept one;
        otherwise remember it and return None."""
        normalised = normalise_prompt(prompt)
        digest = hashlib.blake2b(normalised.encode(), digest_size=16).digest()
        if self.cfg.drop_duplicate_prompts and digest in self.exact:
            return "duplicate_prompt"
        near = (self.cfg.drop_near_duplicate_prompts
                and len(_WORD.findall(normalised)) >= self.cfg.near_duplicate_min_words)
        value = simhash(normalised[:4000]) if near else None
        if value is not None:
            limit = self.cfg.near_duplicate_max_distance
            for key in self._keys(value):
                for other in self.index.get(key, ()):
                    if (value ^ other).bit_count() <= limit:
                        return "near_duplicate_prompt"
        self.exact.add(digest)
        if value is not None:
            for key in self._keys(value):
                self.index.setdefault(key, []).append(value)
        return None
