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

from ccrl.agent.core.dataset_config import DatasetSettings
from ccrl.trainers.signals import TraceView, step_text, view

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
    "near_duplicate_prompt": ("drop_near_duplicate_prompts, near_duplicate_similarity",
                              "nearly the same prompt as an earlier kept trace (MinHash of words and word pairs)"),
}


def reasoning_chars(trace: dict[str, Any] | TraceView) -> int:
    """Characters of Claude's thinking and text before its final answer."""
    v = view(trace)
    return sum(len(step_text(s).strip()) for i, s in enumerate(v.steps) if i not in v.answer)


def has_assistant_output(trace: dict[str, Any] | TraceView) -> bool:
    """Whether Claude said or called anything in this trace."""
    v = view(trace)
    if v.said or any(step.get("kind") == "tool_use" for step in v.steps):
        return True
    response = v.trace.get("response")
    return isinstance(response, str) and bool(response.strip())


def trace_filter(trace: dict[str, Any] | TraceView, signals: dict[str, Any], cfg: DatasetSettings) -> str | None:
    """The name of the first per-trace filter that drops ``trace``, or None to keep it."""
    v = view(trace)
    trace = v.trace
    if not cfg.include_subagents and (trace.get("parent_id") is not None or trace.get("agent_id")):
        return "subagent"
    if cfg.drop_incomplete and trace.get("status") != "complete":
        return "incomplete"
    prompt = trace.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip() or not has_assistant_output(v):
        return "empty"
    if cfg.drop_redacted_prompts and REDACTION_MARKER.search(prompt):
        return "redacted_prompt"
    if len(signals.get("tool_sequence") or []) < cfg.min_tool_calls:
        return "too_few_tool_calls"
    if (reasoning_chars(v) < cfg.min_reasoning_chars
            or len(signals.get("reasoning_chain") or []) < cfg.min_reasoning_steps):
        return "too_little_reasoning"
    return None


_WORD = re.compile(r"\w+")


def normalise_prompt(prompt: str) -> str:
    """Prompt text for exact comparison: case folded, whitespace collapsed."""
    return " ".join(prompt.casefold().split())


MINHASH_PERMUTATIONS = 64
MINHASH_BANDS = 16  # 16 bands of 4 rows: pairs above ~0.5 similarity become candidates
_PRIME = 4294967291  # the largest prime below 2^32: (a*h + b) stays below 2^64 for 32-bit h, a, b


def prompt_features(text: str) -> set[str]:
    """Words and word pairs of a prompt (case folded): what near-duplicate detection compares."""
    words = _WORD.findall(text.casefold())
    return set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0


class MinHasher:
    """MinHash signatures: the share of equal positions of two signatures estimates the Jaccard
    similarity of the two feature sets. Fixed seed, so signatures are the same in every build."""

    def __init__(self, permutations: int = MINHASH_PERMUTATIONS, seed: int = 20261125) -> None:
        import numpy as np  # comes with `datasets`, which the builder needs anyway

        self.np = np
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _PRIME, size=permutations, dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, size=permutations, dtype=np.uint64)

    def signature(self, features: set[str]) -> Any:
        """The signature of a feature set (array of ``permutations`` integers)."""
        np = self.np
        hashes = np.fromiter(
            (int.from_bytes(hashlib.blake2b(f.encode(), digest_size=4).digest(), "little") for f in features),
            dtype=np.uint64, count=len(features),
        )
        if not len(hashes):
            return np.zeros(len(self.a), dtype=np.uint64)
        return ((hashes[:, None] * self.a[None, :] + self.b[None, :]) % np.uint64(_PRIME)).min(axis=0)


class PromptDeduper:
    """Remembers the prompts of kept traces and tells whether a new one repeats one of them.

    Exact duplicates by a hash of the normalised prompt. Near duplicates by Jaccard similarity
    of words and word pairs: MinHash signatures in a band index (LSH) find the candidates in a
    few lookups however many prompts were kept, and the signature agreement decides (a band
    key collision only adds a candidate, never a verdict). Memory: about 2 KB per kept prompt
    of eight words or more, a few dozen bytes per shorter one.
    """

    def __init__(self, cfg: DatasetSettings) -> None:
        self.cfg = cfg
        self.exact: set[bytes] = set()
        self.hasher: MinHasher | None = None
        self.signatures: list[Any] = []
        self.index: dict[int, int | list[int]] = {}  # band key -> kept prompt(s)

    def _band_keys(self, signature: Any) -> list[int]:
        np = self.hasher.np
        rows = signature.reshape(MINHASH_BANDS, -1).astype(np.uint64)
        mix = np.arange(1, rows.shape[1] + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        keys = (rows * mix).sum(axis=1, dtype=np.uint64) ^ (np.arange(MINHASH_BANDS, dtype=np.uint64) << np.uint64(58))
        return keys.tolist()

    def check_and_add(self, prompt: str) -> str | None:
        """``duplicate_prompt`` / ``near_duplicate_prompt`` if ``prompt`` repeats a kept one;
        otherwise remember it and return None."""
        normalised = normalise_prompt(prompt)
        digest = hashlib.blake2b(normalised.encode(), digest_size=16).digest()
        if self.cfg.drop_duplicate_prompts and digest in self.exact:
            return "duplicate_prompt"
        signature = keys = None
        if (self.cfg.drop_near_duplicate_prompts
                and len(_WORD.findall(normalised)) >= self.cfg.near_duplicate_min_words):
            self.hasher = self.hasher or MinHasher()
            signature = self.hasher.signature(prompt_features(normalised[:4000])).astype(self.hasher.np.uint32)
            keys = self._band_keys(signature)
            candidates: set[int] = set()
            for key in keys:
                found = self.index.get(key)
                if found is not None:
                    candidates.update(found if isinstance(found, list) else (found,))
            for i in sorted(candidates):
                if float((self.signatures[i] == signature).mean()) >= self.cfg.near_duplicate_similarity:
                    return "near_duplicate_prompt"
        self.exact.add(digest)
        if signature is not None and keys is not None:
            number = len(self.signatures)
            self.signatures.append(signature)
            for key in keys:
                found = self.index.get(key)
                if found is None:
                    self.index[key] = number
                elif isinstance(found, list):
                    found.append(number)
                else:
                    self.index[key] = [found, number]
        return None
