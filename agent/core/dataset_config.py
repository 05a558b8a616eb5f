"""``[dataset]`` settings: what the dataset builder keeps, how long rows may be, how it splits.

Defaults are what a demanding user would pick: only multi-step traces with stated reasoning,
no interrupted or unanswered turns, no duplicate prompts, nothing too long to train on. Every
value can be changed in the config file's ``[dataset]`` section or with
``CCRL_DATASET__<KEY>`` (e.g. ``CCRL_DATASET__MIN_TOOL_CALLS=1``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

# The JSONL copies each dataset version keeps under ``jsonl/``: here, below the builder, because
# re-redaction (capture) and purges read them to find which versions hold a trace.
JSONL_FILES = ("train.jsonl", "eval.jsonl", "rl_prompts.train.jsonl", "rl_prompts.eval.jsonl")


class DatasetSettings(BaseModel):
    """``[dataset]``: filters, budgets and the train/eval split of ``ccrl build-dataset``."""

    format: Literal["trajectory", "workflow", "both"] = Field(
        default="both",
        description="Rows to write: trajectory conversations, workflow plans, or both (SFT mixes them; RL uses workflow).",
    )
    min_tool_calls: int = Field(default=2, ge=0, description="Multi-step traces only: at least this many tool calls.")
    min_reasoning_chars: int = Field(
        default=40, ge=0, description="At least this many characters of Claude's thinking/text before its answer.",
    )
    min_reasoning_steps: int = Field(default=1, ge=0, description="At least this many steps in the reasoning chain.")
    max_tokens: int = Field(
        default=262144, ge=256,
        description="Drop traces whose trajectory is longer than this (estimated at 4 characters a token). SFT "
                    "trains every decision of a long trace in windows, so this only guards against pathological ones.",
    )
    tool_result_tokens: int = Field(
        default=512, ge=16, description="The tool-result budget: each tool result is cut to about this many tokens, with a marker.",
    )
    window_tokens: int | None = Field(
        default=None, ge=64,
        description="The token budget of one SFT example (a decision window: system prompt, user prompt, recent history, "
                    "its target decisions), for the card's counts; empty = [train] max_length, else 4096 with a CUDA GPU "
                    "and 1024 without (SFT's own default). The trainer windows again with the model's tokenizer at its max_length.",
    )
    workflow_argument_max_chars: int = Field(
        default=400, ge=20, description="Workflow plans cut string arguments (file contents) to this length.",
    )
    drop_incomplete: bool = Field(default=True, description="Drop interrupted traces and traces still open.")
    drop_duplicate_prompts: bool = Field(default=True, description="Drop traces whose prompt repeats an earlier one exactly.")
    drop_near_duplicate_prompts: bool = Field(default=True, description="Drop traces whose prompt nearly repeats an earlier one.")
    near_duplicate_similarity: float = Field(
        default=0.8, gt=0.0, le=1.0,
        description="Near duplicate: Jaccard similarity of the prompts' words and word pairs at least this (MinHash estimate).",
    )
    near_duplicate_min_words: int = Field(
        default=8, ge=1, description="Prompts with fewer words are only compared exactly (a word or two changes a short prompt's meaning).",
    )
    drop_redacted_prompts: bool = Field(default=False, description="Drop traces whose prompt still holds a [REDACTED…] marker.")
    include_subagents: bool = Field(default=True, description="Subagent runs are traces like any other.")
    eval_fraction: float = Field(default=0.1, ge=0.0, lt=1.0, description="Share of sessions held out for evaluation (by hash of the session id).")
    min_eval_decisions: int = Field(
        default=100, ge=0, description="Grow the eval split (by whole sessions) until it holds this many next-action decisions…",
    )
    max_eval_fraction: float = Field(
        default=0.3, gt=0.0, lt=1.0, description="…but never beyond this share of all decisions.",
    )
    max_tools: int = Field(default=64, ge=1, description="The system prompt lists at most this many tools (the most used), plus the trace's own.")
    page_size: int = Field(default=200, ge=1, description="Traces read from the store per query.")

    @model_validator(mode="after")
    def _fractions(self) -> DatasetSettings:
        if self.eval_fraction > self.max_eval_fraction:
            raise ValueError("eval_fraction must not exceed max_eval_fraction")
        return self
